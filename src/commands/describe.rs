//! `edgefuse describe [--labels "w1,w2,…"] [--text "…"]… FILE…`: ImageNet classes and
//! zero-shot labels in the shared text space, one JSON object per input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use super::load_config;
use crate::cli::{Cli, DescribeArgs};
use crate::encoders::{ClassifierEncoder, Modality, TextEncoder};
use crate::semantic::{check_label, SemanticSpace, SemanticVector, ZeroShotScore};

#[derive(Serialize)]
struct Class<'a> {
    name: &'a str,
    probability: f32,
}

#[derive(Serialize)]
struct Line<'a> {
    input: &'a str,
    modality: Modality,
    #[serde(skip_serializing_if = "Option::is_none")]
    classes: Option<Vec<Class<'a>>>,
    zero_shot: &'a [ZeroShotScore],
    space: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    semantic: Option<&'a [f32]>,
}

/// Text encoder, classifier and the shared space, loaded as the config says.
pub struct Describer {
    pub text: TextEncoder,
    pub classifier: ClassifierEncoder,
    pub space: SemanticSpace,
}

impl Describer {
    /// Load with the config's models (text and classifier are enabled whatever it says) and
    /// the class-name cache under its state dir.
    pub fn load(config: &crate::config::Config, models_dir: &Path) -> anyhow::Result<Describer> {
        let manifest = crate::manifest::Manifest::load(&models_dir.join("manifest.toml"))?;
        let e = &config.encoders;
        let text = TextEncoder::load(
            &manifest,
            &e.text.model,
            None,
            e.text.max_length,
            e.text.max_batch,
        )?;
        let classifier = ClassifierEncoder::load(
            &manifest,
            &e.classifier.model,
            None,
            e.classifier.top_k,
            e.classifier.max_batch,
            e.classifier.max_pixels,
        )?;
        let space = SemanticSpace::load_or_build(
            Some(&config.state_dir),
            &text,
            &classifier,
            &config.semantic,
        )
        .context("building the shared text space")?;
        Ok(Describer {
            text,
            classifier,
            space,
        })
    }

    /// `(label, raw embedding of its prompt)` for each label.
    pub fn embed_labels(&self, labels: &[String]) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        self.space
            .embed_labels(&self.text, labels)
            .context("embedding the labels")
    }
}

pub fn run(cli: &Cli, args: &DescribeArgs) -> anyhow::Result<ExitCode> {
    if args.files.is_empty() && args.texts.is_empty() {
        anyhow::bail!("nothing to describe: name image files and/or pass --text \"...\"");
    }
    let config = load_config(cli)?;
    let labels = labels(args, &config.fusion.zero_shot.labels)?;
    let models_dir = config.models_dir(cli.models.as_deref());
    let d = Describer::load(&config, &models_dir)?;
    let label_vecs = d.embed_labels(&labels)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    let mut print = |input: &str,
                     modality: Modality,
                     classes: Option<Vec<Class>>,
                     v: &SemanticVector|
     -> anyhow::Result<()> {
        let scores = d.space.zero_shot(v, &label_vecs);
        let line = Line {
            input,
            modality,
            classes,
            zero_shot: &scores,
            space: d.space.name(),
            semantic: args.vector.then_some(v.vector.as_slice()),
        };
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
        Ok(())
    };

    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    for (t, r) in texts.iter().zip(d.text.embed(&texts)) {
        match r {
            Ok(e) => print(t, Modality::Text, None, &d.space.text_vector(&e.vector))?,
            Err(err) => {
                failed += 1;
                eprintln!("error: text input {t:?}: {err}");
            }
        }
    }

    // Read every file; audio and unreadable files fail on their own.
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        match read_image(path) {
            Ok(bytes) => images.push((name, bytes)),
            Err(msg) => {
                failed += 1;
                eprintln!("error: input {name}: {msg}");
            }
        }
    }
    let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    for ((name, _), r) in images.iter().zip(d.classifier.classify(&refs)) {
        match r {
            Ok(c) => {
                let classes = c
                    .top
                    .iter()
                    .map(|s| Class {
                        name: &s.name,
                        probability: s.probability,
                    })
                    .collect();
                let v = d.space.image_vector(&c.probabilities);
                print(name, Modality::Vision, Some(classes), &v)?;
            }
            Err(err) => {
                failed += 1;
                eprintln!("error: vision input {name}: {err}");
            }
        }
    }
    out.flush()?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--labels` (or the config's list), each checked; duplicates dropped, order kept.
fn labels(args: &DescribeArgs, from_config: &[String]) -> anyhow::Result<Vec<String>> {
    let given = if args.labels.is_empty() {
        from_config
    } else {
        &args.labels
    };
    if given.len() > crate::semantic::MAX_LABELS {
        anyhow::bail!(
            "{} labels given; at most {} are scored at once",
            given.len(),
            crate::semantic::MAX_LABELS
        );
    }
    let mut out: Vec<String> = Vec::new();
    for l in given {
        let l = check_label(l).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
        if !out.iter().any(|o| o == l) {
            out.push(l.to_owned());
        }
    }
    Ok(out)
}

/// Read an image file; WAV files are refused by name (audio has no words yet).
fn read_image(path: &PathBuf) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let wav_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if wav_name || bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE") {
        return Err(
            "audio is not described yet: words for audio come with speech transcription; \
             use `edgefuse embed audio` for its embedding"
                .into(),
        );
    }
    Ok(bytes)
}
