//! `edgefuse describe [--labels "w1,w2,…"] [--text "…"]… FILE…`: ImageNet classes (images),
//! the transcript (WAV files, with Moonshine) and zero-shot labels in the shared text space, one
//! JSON object per input. A WAV's labels are scored on its transcript's text vector; audio
//! without speech gets an empty transcript and no labels.
//!
//! The labels are embedded and scored by the daemon's own code (`shared_space::words` over
//! the ConSE space, `shared_space::conse::image_item` for images): `describe` and the `labels`
//! record of the daemon give the same scores and reasons for the same input and words.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::load_config;
use crate::cli::{Cli, DescribeArgs};
use crate::encoders::speech::Transcript;
use crate::encoders::{ClassifierEncoder, Encoders, Modality, Role, TextEncoder, Transcriber};
use crate::semantic::{check_label, SemanticSpace};
use crate::shared_space::conse::{image_item, ConseSpace};
use crate::shared_space::words::{self, WordScore};
use crate::shared_space::{SemanticItem, TextSpace};

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
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript: Option<&'a Transcript>,
    zero_shot: &'a [WordScore],
    space: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    semantic: Option<&'a [f32]>,
}

/// Text encoder, classifier and the shared space, loaded as the config says.
pub struct Describer {
    pub text: Arc<TextEncoder>,
    pub classifier: Arc<ClassifierEncoder>,
    pub space: ConseSpace,
}

impl Describer {
    /// Load with the config's models (text and classifier are enabled whatever it says) and
    /// the class-name cache under its state dir.
    pub fn load(config: &crate::config::Config, models_dir: &Path) -> anyhow::Result<Describer> {
        let roles = [Role::Text, Role::Classifier];
        let loaded = Encoders::load_roles(config, models_dir, &roles)?;
        let text = loaded.shared::<TextEncoder>().context("text encoder")?;
        let classifier = loaded.shared::<ClassifierEncoder>().context("classifier")?;
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
            space: ConseSpace(std::sync::Arc::new(space)),
        })
    }

    /// `(label, its vector in the space)` for each label, embedded as the daemon embeds its
    /// zero-shot words (inside `semantic.template`).
    pub fn embed_labels(&self, labels: &[String]) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        words::embed_words(&self.text, &self.space, labels).context("embedding the labels")
    }

    /// The semantic item of an embedded text (raw text-encoder embedding).
    pub fn text_item(&self, embedding: &[f32]) -> SemanticItem {
        SemanticItem {
            vector: self.space.text_vector(embedding),
            parts: Vec::new(),
        }
    }

    /// Every label's score on an item, best first, with its reason.
    pub fn score(&self, item: &SemanticItem, labels: &[(String, Vec<f32>)]) -> Vec<WordScore> {
        words::score(labels, item, usize::MAX, self.space.reasons())
    }
}

pub fn run(cli: &Cli, args: &DescribeArgs) -> anyhow::Result<ExitCode> {
    if args.files.is_empty() && args.texts.is_empty() {
        anyhow::bail!("nothing to describe: name image files and/or pass --text \"...\"");
    }
    let config = load_config(cli)?;
    let models_dir = config.models_dir(cli.models.as_deref());
    let d = Describer::load(&config, &models_dir)?;
    let label_vecs = if args.labels.is_empty() {
        daemon_words(&config, &d)?
    } else {
        d.embed_labels(&labels(&args.labels)?)?
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    let mut print = |input: &str,
                     modality: Modality,
                     classes: Option<Vec<Class>>,
                     transcript: Option<&Transcript>,
                     v: Option<&SemanticItem>|
     -> anyhow::Result<()> {
        let scores = v.map_or_else(Vec::new, |v| d.score(v, &label_vecs));
        let line = Line {
            input,
            modality,
            classes,
            transcript,
            zero_shot: &scores,
            space: d.space.name(),
            semantic: v.filter(|_| args.vector).map(|v| v.vector.as_slice()),
        };
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
        Ok(())
    };

    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    for (t, r) in texts.iter().zip(d.text.embed(&texts)) {
        match r {
            Ok(e) => print(t, Modality::Text, None, None, Some(&d.text_item(&e.vector)))?,
            Err(err) => {
                failed += 1;
                eprintln!("error: text input {t:?}: {err}");
            }
        }
    }

    // Read every file; unreadable files fail on their own, WAV files go to the transcriber.
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    let mut wavs: Vec<(String, Vec<u8>)> = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        match read_input(path) {
            Ok((true, bytes)) => wavs.push((name, bytes)),
            Ok((false, bytes)) => images.push((name, bytes)),
            Err(msg) => {
                failed += 1;
                eprintln!("error: input {name}: {msg}");
            }
        }
    }
    if !wavs.is_empty() {
        let loaded = Encoders::load_roles(&config, &models_dir, &[Role::Speech])
            .context("loading the speech model (encoders.speech) for the WAV files")?;
        let transcriber = loaded.get::<Transcriber>().context("speech model")?;
        for (name, bytes) in &wavs {
            let t = match transcriber.transcribe_wav(bytes) {
                Ok(t) => t,
                Err(err) => {
                    failed += 1;
                    eprintln!("error: audio input {name}: {err}");
                    continue;
                }
            };
            // No speech: no text vector, no labels.
            let v = if t.text.trim().is_empty() {
                None
            } else {
                match d.text.embed(&[t.text.as_str()]).pop() {
                    Some(Ok(e)) => Some(d.text_item(&e.vector)),
                    Some(Err(err)) => {
                        failed += 1;
                        eprintln!("error: audio input {name}: embedding its transcript: {err}");
                        continue;
                    }
                    None => None,
                }
            };
            print(name, Modality::Audio, None, Some(&t), v.as_ref())?;
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
                let v = image_item(&d.space.0, &c.probabilities);
                print(name, Modality::Vision, Some(classes), None, Some(&v))?;
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

/// Without `--labels`: the daemon's zero-shot words (the list saved by `zero_shot/set` in the
/// state dir, else `fusion.zero_shot.words`), read and embedded as the daemon does; when there
/// are none, `fusion.zero_shot.labels`.
fn daemon_words(
    config: &crate::config::Config,
    d: &Describer,
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let store = words::WordStore::open(
        Some(&config.state_dir.join("zero_shot_words.json")),
        &config.fusion.zero_shot.words,
        &d.text,
        &d.space,
    )
    .context("the zero-shot words")?;
    if store.is_empty() {
        d.embed_labels(&labels(&config.fusion.zero_shot.labels)?)
    } else {
        Ok(store.vectors().to_vec())
    }
}

/// Labels as given, each checked; duplicates dropped, order kept.
fn labels(given: &[String]) -> anyhow::Result<Vec<String>> {
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

/// Read an input file: `(is_wav, bytes)`. A file named `.wav` or holding a RIFF/WAVE header
/// is audio (a `.wav` that is not WAV then fails in the WAV reader with a clear error).
fn read_input(path: &PathBuf) -> Result<(bool, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let wav_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    let wav = wav_name || bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE");
    Ok((wav, bytes))
}
