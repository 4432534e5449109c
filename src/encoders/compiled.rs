//! The compiled-model cache: a model's typed, decluttered tract graph saved as NNEF (tract-OPL),
//! so a daemon restart skips ONNX parsing, typing, weight decoding and decluttering (about half
//! of the load time; see docs/performance.md). Only tract's final, CPU-specific `optimize` pass
//! runs at every start.
//!
//! A cache file is derived from a model that was verified against the manifest's sha256, and its
//! name carries a key over that sha256, the input/output spec and the tract version, so a changed
//! manifest or a tract upgrade never reads a stale entry. Files are written atomically (temporary
//! file, fsync, rename) and end with a CRC-32 trailer: a torn or bit-rotted file is detected,
//! deleted and rebuilt from the ONNX model, never loaded.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tract_nnef::internal::Registry;
use tract_nnef::prelude::*;
use tract_onnx::tract_core::ops::nn::GeluExact;
use tract_onnx::WithOnnx;
use tract_transformers::WithTractTransformers;

use crate::manifest::ModelSpec;

/// The tract release the cache format belongs to; `tests::tract_version_matches_the_lock_file`
/// keeps it in step with Cargo.lock.
pub const TRACT_VERSION: &str = "0.23.9";

const TRAILER_MAGIC: &[u8; 8] = b"EFNNEF01";
/// magic, CRC-32 of the tar bytes, tar length.
const TRAILER_LEN: usize = 8 + 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: tract could not {stage}: {message}")]
    Tract {
        path: PathBuf,
        stage: &'static str,
        message: String,
    },
}

/// A directory of compiled models (by default `<state_dir>/compiled`).
#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
}

impl ModelCache {
    pub fn new(dir: impl Into<PathBuf>) -> ModelCache {
        ModelCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the compiled form of `spec` lives, whether or not it exists yet.
    pub fn path_for(&self, spec: &ModelSpec) -> PathBuf {
        self.dir
            .join(format!("{}-{}.nnef.tar", file_stem(&spec.file), key(spec)))
    }

    /// The compiled model, `Ok(None)` when there is none yet. A damaged file is an error; the
    /// caller removes it and compiles again.
    pub fn read(&self, spec: &ModelSpec) -> Result<Option<TypedModel>, CacheError> {
        let path = self.path_for(spec);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let tar = strip_trailer(&bytes).map_err(|message| CacheError::Corrupt {
            path: path.clone(),
            message,
        })?;
        let model = nnef()
            .model_for_read(&mut std::io::Cursor::new(tar))
            .map_err(|e| CacheError::Tract {
                path: path.clone(),
                stage: "read the NNEF model",
                message: format!("{e:#}"),
            })?;
        Ok(Some(model))
    }

    /// Save `model` for `spec`, replacing older compiled forms of the same file.
    pub fn write(&self, spec: &ModelSpec, model: &TypedModel) -> Result<PathBuf, CacheError> {
        let path = self.path_for(spec);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // Deterministic tar timestamps: the same model compiles to the same bytes.
        let mut tar = nnef()
            .write_to_tar_with_config(model, Vec::new(), false, true)
            .map_err(|e| CacheError::Tract {
                path: path.clone(),
                stage: "write the NNEF model",
                message: format!("{e:#}"),
            })?;
        let crc = crc32fast::hash(&tar);
        let len = tar.len() as u64;
        tar.extend_from_slice(TRAILER_MAGIC);
        tar.extend_from_slice(&crc.to_le_bytes());
        tar.extend_from_slice(&len.to_le_bytes());

        crate::atomic_file::write_atomic(&path, &tar).map_err(io(&path))?;
        self.remove_stale(spec, &path);
        Ok(path)
    }

    /// Remove the compiled form of `spec` (after it was found damaged).
    pub fn remove(&self, spec: &ModelSpec) {
        let _ = std::fs::remove_file(self.path_for(spec));
    }

    /// Older compiled forms of the same model file (other keys) are dead weight on a small disk.
    fn remove_stale(&self, spec: &ModelSpec, keep: &Path) {
        let prefix = format!("{}-", file_stem(&spec.file));
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let same_model = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".nnef.tar"))
                .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()));
            if same_model && p != keep {
                tracing::debug!("removing stale compiled model {}", p.display());
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// The NNEF dialect edgefuse writes and reads: tract-core, the ONNX and transformer extensions,
/// and the operators tract 0.23 cannot serialise yet (see [`edgefuse_registry`]).
pub fn nnef() -> tract_nnef::framework::Nnef {
    tract_nnef::nnef()
        .with_onnx()
        .with_tract_transformers()
        .with_registry(edgefuse_registry())
}

/// tract 0.23.9 folds ONNX `Erf`-based GELU into `GeluExact` while decluttering but registers no
/// NNEF name for it, so a decluttered MiniLM or DINOv2 could not be saved. It is a unit
/// element-wise op, which the registry serialises by name.
fn edgefuse_registry() -> Registry {
    let mut registry = Registry::new("edgefuse")
        .with_doc("edgefuse: operators tract decluttering produces that tract-nnef cannot name.");
    registry.register_unit_element_wise("edgefuse_gelu_exact", &GeluExact {});
    registry
}

/// 16 hex digits of sha256 over everything the compiled graph depends on.
fn key(spec: &ModelSpec) -> String {
    let mut h = Sha256::new();
    // v2: large lookup tables held as f16 by default (runtime.rs, `weights_in_memory`).
    h.update(b"edgefuse compiled model v2\n");
    h.update(TRACT_VERSION.as_bytes());
    h.update(b"\n");
    h.update(spec.sha256.to_ascii_lowercase().as_bytes());
    h.update(b"\n");
    // Input facts (dtype, fixed and symbolic dims) and selected outputs shape the typed graph.
    h.update(format!("{:?}\n{:?}", spec.inputs, spec.outputs).as_bytes());
    // A variant that requantizes at load shares its original's file but not its graph.
    if let Some(w) = &spec.weights_in_memory {
        h.update(format!("\nweights_in_memory {w}").as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

fn file_stem(file: &str) -> String {
    let name = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".onnx").unwrap_or(&name).to_owned()
}

fn strip_trailer(bytes: &[u8]) -> Result<&[u8], String> {
    let Some(split) = bytes.len().checked_sub(TRAILER_LEN) else {
        return Err(format!(
            "{} bytes is too short to be a compiled model",
            bytes.len()
        ));
    };
    let (tar, trailer) = bytes.split_at(split);
    if &trailer[..8] != TRAILER_MAGIC {
        return Err("no edgefuse trailer (truncated or not written by edgefuse)".into());
    }
    let crc = u32::from_le_bytes(trailer[8..12].try_into().map_err(|_| "bad trailer")?);
    let len = u64::from_le_bytes(trailer[12..20].try_into().map_err(|_| "bad trailer")?);
    if len != tar.len() as u64 {
        return Err(format!("length {} recorded, {} found", len, tar.len()));
    }
    let actual = crc32fast::hash(tar);
    if actual != crc {
        return Err(format!(
            "CRC-32 {actual:08x} does not match the recorded {crc:08x}"
        ));
    }
    Ok(tar)
}

impl crate::config::Config {
    /// The compiled-model cache the daemon uses, if `models.compiled_cache` is on.
    pub fn model_cache(&self) -> Option<ModelCache> {
        self.models.compiled_cache.then(|| {
            ModelCache::new(
                self.models
                    .compiled_dir
                    .clone()
                    .unwrap_or_else(|| self.state_dir.join("compiled")),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tract_version_matches_the_lock_file() {
        let lock = include_str!("../../Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"tract-core\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .and_then(|v| v.strip_suffix('"'));
        assert_eq!(version, Some(TRACT_VERSION));
    }

    #[test]
    fn trailer_detects_truncation_and_bit_flips() {
        let tar = b"pretend this is a tar archive".to_vec();
        let mut file = tar.clone();
        file.extend_from_slice(TRAILER_MAGIC);
        file.extend_from_slice(&crc32fast::hash(&tar).to_le_bytes());
        file.extend_from_slice(&(tar.len() as u64).to_le_bytes());
        assert_eq!(strip_trailer(&file).unwrap(), &tar[..]);

        let mut flipped = file.clone();
        flipped[3] ^= 1;
        assert!(strip_trailer(&flipped).unwrap_err().contains("CRC-32"));
        assert!(strip_trailer(&file[..file.len() - 1]).is_err());
        assert!(strip_trailer(&file[5..]).unwrap_err().contains("length"));
        assert!(strip_trailer(b"short").unwrap_err().contains("too short"));
    }

    #[test]
    fn stem_drops_directories_and_the_onnx_suffix() {
        assert_eq!(
            file_stem("text/all-minilm-l6-v2.int8-weights.onnx"),
            "all-minilm-l6-v2.int8-weights"
        );
        assert_eq!(file_stem("x"), "x");
    }
}
