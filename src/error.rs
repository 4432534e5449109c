//! Error types shared by the library. `anyhow` is used only at the edges (CLI, app).

use std::path::PathBuf;

/// Why a model could not be loaded. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("model file {path} is missing: run `models/fetch` (or pass --models DIR)")]
    Missing { path: PathBuf },
    #[error(
        "model file {path} has sha256 {actual}, the manifest expects {expected}: \
         the file is corrupt or was tampered with; rerun `models/fetch`"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("model {model}: tract could not {stage}: {message}")]
    Tract {
        model: String,
        stage: &'static str,
        message: String,
    },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
}

/// Why one input could not be embedded. The daemon reports these on the `error` topic and
/// keeps running; the CLI prints them and exits non-zero.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("empty text")]
    EmptyText,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("empty input")]
    Empty,
    #[error("{0}")]
    Unreadable(String),
    #[error("unrecognised image format (JPEG, PNG and WebP are supported)")]
    UnknownImageFormat,
    #[error("{0} images are not supported (JPEG, PNG and WebP are)")]
    UnsupportedImageFormat(String),
    #[error("corrupt image: {0}")]
    CorruptImage(String),
    #[error("image too large: {width}x{height} exceeds the limit of {limit} pixels")]
    ImageTooLarge { width: u32, height: u32, limit: u64 },
    #[error("not a WAV file: {0}")]
    NotWav(String),
    #[error("truncated WAV: {0}")]
    TruncatedWav(String),
    #[error("unsupported WAV: {0}")]
    UnsupportedWav(String),
    #[error("audio too long: {seconds:.1} s exceeds the limit of {limit:.1} s")]
    AudioTooLong { seconds: f64, limit: f64 },
    #[error("inference failed: {0}")]
    Inference(String),
}
