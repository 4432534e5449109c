//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fetched models: `EDGEFUSE_MODELS` or the repository's `models/`. Tests that need them
/// fail (not skip) without them, naming the fix.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("EDGEFUSE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let probe = dir.join("text/all-minilm-l6-v2.onnx");
    assert!(
        probe.exists(),
        "{} is missing: run `models/fetch` first (or set EDGEFUSE_MODELS)",
        probe.display()
    );
    dir
}

pub fn fixture(rel: &str) -> Vec<u8> {
    let p = repo().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    edgefuse::encoders::cosine(a, b)
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}
