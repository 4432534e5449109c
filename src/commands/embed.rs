//! `edgefuse embed text|image|audio …`

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use super::load_config;
use crate::cli::{Cli, EmbedArgs, EmbedWhat};
use crate::encoders::{
    AudioEncoder, Embedding, Encoders, ItemResult, Modality, ModelInfo, TextEncoder, Timings,
    VisionEncoder,
};

#[derive(Serialize)]
struct Line<'a> {
    modality: Modality,
    input: &'a str,
    model: &'a ModelInfo,
    dim: usize,
    vector: &'a [f32],
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<&'a [Vec<f32>]>,
    timings_ms: Timings,
}

pub fn run(cli: &Cli, args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(cli)?;
    let models_dir = config.models_dir(cli.models.as_deref());
    let modality = match &args.what {
        EmbedWhat::Text { .. } => Modality::Text,
        EmbedWhat::Image { .. } => Modality::Vision,
        EmbedWhat::Audio { .. } => Modality::Audio,
    };
    // The command names its modality, so that encoder loads even if the config turned it off.
    let set = Encoders::load_roles(&config, &models_dir, &[modality.into()])?;
    let (names, results, with_blocks): (Vec<String>, Vec<ItemResult>, bool) = match &args.what {
        EmbedWhat::Text { texts } => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let enc = set.get::<TextEncoder>().expect("text encoder loaded above");
            (texts.clone(), enc.embed(&refs), false)
        }
        EmbedWhat::Image { files } => {
            let enc = set
                .get::<VisionEncoder>()
                .expect("vision encoder loaded above");
            let (names, bytes) = read_files(files);
            let results = embed_readable(&bytes, |ok| enc.embed(ok));
            (names, results, false)
        }
        EmbedWhat::Audio { files, blocks } => {
            let enc = set
                .get::<AudioEncoder>()
                .expect("audio encoder loaded above");
            let (names, bytes) = read_files(files);
            let results = embed_readable(&bytes, |ok| enc.embed_wavs(ok));
            (names, results, *blocks)
        }
    };
    let model = set
        .model(modality)
        .map(ModelInfo::of)
        .expect("model loaded above");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    for (name, result) in names.iter().zip(&results) {
        match result {
            Ok(e) => {
                print_line(&mut out, modality, name, &model, e, with_blocks)?;
            }
            Err(err) => {
                failed += 1;
                eprintln!("error: {modality} input {name}: {err}");
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

fn print_line(
    out: &mut impl Write,
    modality: Modality,
    input: &str,
    model: &ModelInfo,
    e: &Embedding,
    with_blocks: bool,
) -> anyhow::Result<()> {
    let line = Line {
        modality,
        input,
        model,
        dim: e.vector.len(),
        vector: &e.vector,
        blocks: if with_blocks {
            e.blocks.as_deref()
        } else {
            None
        },
        timings_ms: e.timings,
    };
    serde_json::to_writer(&mut *out, &line)?;
    writeln!(out)?;
    Ok(())
}

/// Read every file; unreadable ones become per-item errors.
fn read_files(files: &[std::path::PathBuf]) -> (Vec<String>, Vec<Result<Vec<u8>, String>>) {
    let names = files.iter().map(|p| p.display().to_string()).collect();
    let bytes = files.iter().map(|p| read(p)).collect();
    (names, bytes)
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Run `embed` on the readable inputs and splice read errors back in order.
fn embed_readable(
    inputs: &[Result<Vec<u8>, String>],
    embed: impl FnOnce(&[&[u8]]) -> Vec<ItemResult>,
) -> Vec<ItemResult> {
    let ok: Vec<&[u8]> = inputs
        .iter()
        .filter_map(|r| r.as_ref().ok().map(Vec::as_slice))
        .collect();
    let mut embedded = embed(&ok).into_iter();
    inputs
        .iter()
        .map(|r| match r {
            Ok(_) => embedded
                .next()
                .unwrap_or(Err(crate::error::InputError::Empty)),
            Err(msg) => Err(crate::error::InputError::Unreadable(msg.clone())),
        })
        .collect()
}
