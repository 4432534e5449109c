//! Compressed model variants written by models/optimize.py: each loads and runs in tract, keeps
//! its measured quality vs the fp32 original on evaluation inputs (never calibration inputs),
//! and pruning really shrinks the matrices.

use std::sync::OnceLock;

use crate::util::{fixture, manifest, repo};
use edgefuse::encoders::quality::{agreement, Agreement};
use edgefuse::encoders::{AudioEncoder, TextEncoder, VisionEncoder};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Quality floors on the evaluation set: (variant, min mean cosine, min Spearman). The ones at
/// 0.98/0.98 are eligible as defaults (docs/models.md); the others are held where they were
/// measured, less a margin, so a regression in models/optimize.py fails here.
const FLOORS: [(&str, f64, f64); 21] = [
    ("text-int8", 0.98, 0.98),
    ("text-w8", 0.98, 0.98),
    ("text-f16", 0.999, 0.999),
    // 3/4 of the FFN neurons, 11 of 12 heads: measured mean cosine 0.943, Spearman 0.915 (not
    // a default: MiniLM-L6 has little slack; see docs/models.md).
    ("text-pruned", 0.93, 0.90),
    ("text-pruned-w8", 0.93, 0.90),
    // 4-bit matmul weights held in memory (tract's Q4_0), word table f16: measured mean
    // cosine 0.971, Spearman 0.966 (not a default; the 512 MB board profile uses them).
    ("text-q4", 0.96, 0.955),
    ("text-w8-q4", 0.96, 0.955),
    ("vision-int8", 0.98, 0.98),
    ("vision-w8", 0.98, 0.98),
    ("vision-f16", 0.999, 0.999),
    // Measured mean cosine 0.972 / 0.976, Spearman 0.970 / 0.970.
    ("vision-q4", 0.96, 0.96),
    ("vision-w8-q4", 0.96, 0.96),
    // 168x168 input (144 patch tokens): measured mean cosine 0.982, Spearman 0.968 (not a
    // default: it misses the Spearman bar, and on the 34 other photos of tests/fixtures/photos
    // it falls to 0.85; docs/models.md).
    ("vision-168", 0.975, 0.96),
    // 200 of 256 patch tokens after block 3, last block for the class token only.
    ("vision-tokens200", 0.98, 0.98),
    ("vision-tokens200-w8", 0.98, 0.98),
    ("audio-int8", 0.98, 0.98),
    ("audio-w8", 0.98, 0.98),
    ("audio-f16", 0.999, 0.999),
    // 50 % of the inner channels: measured mean cosine 0.965, Spearman 0.987 (not a default).
    ("audio-pruned", 0.95, 0.97),
    ("audio-pruned-w8", 0.95, 0.97),
    ("audio-pruned75", 0.98, 0.98),
];

/// An evaluation list of tests/fixtures/eval/, shared with models/report (one item per line).
fn eval_list(name: &str) -> Vec<String> {
    String::from_utf8(fixture(&format!("tests/fixtures/eval/{name}")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn eval_texts() -> Vec<String> {
    eval_list("sentences.txt")
}

/// Evaluation embeddings of model `key` (audio: every block of every clip).
fn embed(key: &str) -> Vec<Vec<f32>> {
    let m = manifest();
    let modality = m.model(key).unwrap().modality.clone();
    let vectors: Vec<Vec<f32>> = match modality.as_str() {
        "text" => {
            let enc = TextEncoder::load(m, key, None, None, 16).unwrap_or_else(|e| panic!("{e}"));
            let texts = eval_texts();
            let t: Vec<&str> = texts.iter().map(String::as_str).collect();
            enc.embed(&t)
                .into_iter()
                .map(|r| r.unwrap().vector)
                .collect()
        }
        "vision" => {
            let enc =
                VisionEncoder::load(m, key, None, 4, 40_000_000).unwrap_or_else(|e| panic!("{e}"));
            let bytes: Vec<Vec<u8>> = eval_list("images.txt")
                .iter()
                .map(|f| fixture(&format!("tests/fixtures/images/{f}")))
                .collect();
            let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            enc.embed(&refs)
                .into_iter()
                .map(|r| r.unwrap().vector)
                .collect()
        }
        "audio" => {
            let enc = AudioEncoder::load(m, key, None, 16, 600.0).unwrap_or_else(|e| panic!("{e}"));
            eval_list("audio.txt")
                .iter()
                .flat_map(|f| {
                    let wav = fixture(&format!("tests/fixtures/audio/{f}"));
                    enc.embed_wavs(&[&wav]).remove(0).unwrap().blocks.unwrap()
                })
                .collect()
        }
        other => panic!("{key}: modality {other} has no variants"),
    };
    for v in &vectors {
        assert_eq!(v.len(), m.model(key).unwrap().dim, "{key}");
        assert!(v.iter().all(|x| x.is_finite()), "{key}: non-finite output");
    }
    vectors
}

fn originals(modality: &str) -> &'static Vec<Vec<f32>> {
    static T: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    static V: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    static A: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    match modality {
        "text" => T.get_or_init(|| embed("text")),
        "vision" => V.get_or_init(|| embed("vision")),
        _ => A.get_or_init(|| embed("audio")),
    }
}

fn check_floors(modality: &str) {
    let m = manifest();
    let mut checked = 0;
    for (key, min_cos, min_rho) in FLOORS.iter().filter(|(k, ..)| k.starts_with(modality)) {
        let spec = m.model(key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.root_of(key),
            modality,
            "{key} derives from the {modality} original"
        );
        let q: Agreement = agreement(originals(modality), &embed(key));
        eprintln!("{key}: {q:?}");
        assert!(
            q.mean_cosine >= *min_cos && q.spearman >= *min_rho,
            "{key} ({}): mean cosine {:.4} (floor {min_cos}), Spearman {:.4} (floor {min_rho})",
            spec.quantization,
            q.mean_cosine,
            q.spearman
        );
        checked += 1;
    }
    // Every variant of the manifest is covered by a floor.
    let variants = m
        .models
        .iter()
        .filter(|(_, s)| s.variant_of.is_some() && s.modality == modality)
        .count();
    assert_eq!(
        checked, variants,
        "a {modality} variant has no quality floor here"
    );
}

#[test]
fn text_variants_run_in_tract_and_keep_quality() {
    check_floors("text");
}

#[test]
fn vision_variants_run_in_tract_and_keep_quality() {
    check_floors("vision");
}

#[test]
fn audio_variants_run_in_tract_and_keep_quality() {
    check_floors("audio");
}

/// Shape of a weight initializer (a Const node) in the ONNX file of model `key`.
fn weight_shape(key: &str, name: &str) -> Vec<usize> {
    let m = manifest();
    let path = m.path_of(&m.model(key).unwrap().file);
    let model = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_path(&path)
        .unwrap();
    let node = model
        .node_by_name(name)
        .unwrap_or_else(|e| panic!("{key}: {name}: {e}"));
    let fact = &node.outputs[0].fact;
    let value = fact
        .value
        .concretize()
        .unwrap_or_else(|| panic!("{key}: {name} is not a constant"));
    value.shape().to_vec()
}

#[test]
fn pruning_really_shrinks_the_matrices() {
    for layer in [0, 5] {
        let ffn = format!("encoder.layer.{layer}.intermediate.dense.weight.T");
        assert_eq!(weight_shape("text", &ffn), [384, 1536]);
        assert_eq!(
            weight_shape("text-pruned", &ffn),
            [384, 1152],
            "3/4 of the neurons"
        );
        let q = format!("encoder.layer.{layer}.attention.self.query.weight.T");
        assert_eq!(weight_shape("text", &q), [384, 384]);
        assert_eq!(
            weight_shape("text-pruned", &q),
            [384, 352],
            "11 of 12 heads"
        );
        let o = format!("encoder.layer.{layer}.attention.output.dense.weight.T");
        assert_eq!(weight_shape("text-pruned", &o), [352, 384]);
    }
    for block in 1..=4 {
        let w1 = format!("conv_block{block}.conv1.weight");
        let full = weight_shape("audio", &w1);
        let pruned = weight_shape("audio-pruned", &w1);
        assert_eq!(pruned[0] * 2, full[0], "{w1}: half the channels");
        let w2 = weight_shape("audio-pruned", &format!("conv_block{block}.conv2.weight"));
        assert_eq!(w2[1], pruned[0], "conv2 reads only the kept channels");
        assert_eq!(weight_shape("audio-pruned75", &w1)[0] * 4, full[0] * 3);
    }
    // Smaller on disk too (fp32 both).
    let size = |k: &str| {
        let m = manifest();
        std::fs::metadata(m.path_of(&m.model(k).unwrap().file))
            .unwrap()
            .len()
    };
    assert!(size("audio-pruned") * 3 < size("audio") * 2);
    assert!(size("text-pruned") < size("text"));
}

/// The token sequence (rows of the residual stream) after block `layer` of the vision model
/// `key`, typed by tract for one image of the size its manifest entry takes.
fn vision_tokens_after(key: &str, layer: usize) -> usize {
    let m = manifest();
    let spec = m.model(key).unwrap();
    let size = spec
        .preprocess
        .get("crop")
        .and_then(|v| v.as_integer())
        .unwrap() as usize;
    let model = tract_onnx::onnx()
        .model_for_path(m.path_of(&spec.file))
        .unwrap()
        .with_input_fact(0, f32::fact([1, 3, size, size]).into())
        .unwrap()
        .into_typed()
        .unwrap();
    let name = format!("/backbone/encoder/layer.{layer}/Add_1");
    let node = model
        .node_by_name(&name)
        .unwrap_or_else(|e| panic!("{key}: {name}: {e}"));
    let shape = &node.outputs[0].fact.shape;
    assert_eq!(shape.rank(), 3, "{key}: {name}: {shape:?}");
    assert_eq!(shape[2].to_i64().unwrap(), 384, "{key}: {name}");
    shape[1].to_i64().unwrap() as usize
}

/// The lower-resolution and token-pruned DINOv2 variants really run fewer tokens: class token
/// plus 16x16 patches in the original, 12x12 at 168x168; 200 patches after block 3 and only the
/// class token out of the last block in `vision-tokens200`.
#[test]
fn vision_variants_really_run_fewer_tokens() {
    assert_eq!(vision_tokens_after("vision", 0), 257);
    assert_eq!(vision_tokens_after("vision", 11), 257);
    assert_eq!(vision_tokens_after("vision-168", 0), 145);
    assert_eq!(vision_tokens_after("vision-168", 11), 145);
    for key in ["vision-tokens200", "vision-tokens200-w8"] {
        assert_eq!(
            vision_tokens_after(key, 3),
            257,
            "{key}: full up to block 3"
        );
        assert_eq!(
            vision_tokens_after(key, 4),
            201,
            "{key}: 200 patches + class"
        );
        assert_eq!(vision_tokens_after(key, 10), 201, "{key}");
        assert_eq!(
            vision_tokens_after(key, 11),
            1,
            "{key}: last block, class only"
        );
    }
}

#[test]
fn calibration_and_evaluation_inputs_are_distinct() {
    let calib = std::fs::read_to_string(repo().join("models/optimize.py")).unwrap();
    for s in eval_texts() {
        assert!(
            !calib.contains(&s),
            "evaluation sentence used for calibration: {s}"
        );
    }
}

/// configs/small-board.toml (a 512 MB board, docs/performance.md): a valid config with every
/// modality on and the image classifier off (its ~40 MiB would take the peak past 150 MB; the
/// file says how to turn it on, and its model key must still be right), whose text and vision
/// models keep their matmul weights as 4-bit blocks, each model key naming a model of the
/// manifest, and batches of one item (the activations of a batch are what the board cannot
/// afford).
#[test]
fn small_board_config_is_valid_and_names_compressed_models() {
    let path = repo().join("configs/small-board.toml");
    let c = edgefuse::config::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    let e = &c.encoders;
    assert!(e.text.enabled && e.vision.enabled && e.audio.enabled && !e.classifier.enabled);
    let m = manifest();
    for (modality, key) in [
        ("text", &e.text.model),
        ("vision", &e.vision.model),
        ("audio", &e.audio.model),
        ("classifier", &e.classifier.model),
    ] {
        let spec = m.model(key).unwrap_or_else(|err| panic!("{key}: {err}"));
        assert_eq!(m.root_of(key), modality, "{key} is a {modality} model");
        if modality == "text" || modality == "vision" {
            assert_eq!(
                spec.weights_in_memory.as_deref(),
                Some("q4_0"),
                "{key}: weights held as 4-bit blocks"
            );
        }
    }
    assert_eq!(
        (
            e.vision.max_batch,
            e.audio.max_batch,
            e.classifier.max_batch
        ),
        (1, 1, 1)
    );
}

/// An unknown `weights_in_memory` is refused when the manifest is read, naming the entry and
/// the accepted values, not when (or whether) the model is first loaded.
#[test]
fn unknown_weights_in_memory_is_a_manifest_error() {
    let text = std::fs::read_to_string(repo().join("models/manifest.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.toml");
    let bad = "\n[models.text-q3]\nvariant_of = \"text\"\nweights_in_memory = \"q3\"\n";
    std::fs::write(&path, format!("{text}{bad}")).unwrap();
    let err = match edgefuse::manifest::Manifest::load(&path) {
        Ok(_) => panic!("a bad weights_in_memory must not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("models.text-q3.weights_in_memory") && err.contains("q4_0"),
        "{err}"
    );
    // The shipped manifest uses only accepted values.
    std::fs::write(&path, text).unwrap();
    edgefuse::manifest::Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
}
