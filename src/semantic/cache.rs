//! Class-name embeddings, computed once with the text encoder and kept on disk under
//! `<state_dir>/semantic/classes-<key>.bin`.
//!
//! The key is a sha256 over the text model's sha256 (one file per text model: switching
//! `encoders.text.model` between `text` and `text-multilingual` keeps both), the prefix that
//! model puts before class names (e5's `passage: `; models without one keep their key), the
//! class-name and description files' sha256, the label-text choice and the prompt template:
//! change any of them and a new file is
//! computed (older files are left for the operator; each is ~1.5 MB). The file is written
//! atomically (`crate::atomic_file`) and ends with a CRC-32; a torn, truncated or bit-rotted file
//! is logged, ignored and rebuilt, never used.
//!
//! Layout (little-endian): `EFSEM001`, u32 classes, u32 dim, classes × dim f32, u32 CRC-32 of
//! everything before it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{class_texts, SemanticConfig, SemanticError, SemanticSpace};
use crate::encoders::classifier::ClassifierEncoder;
use crate::encoders::{l2_normalize, TextEncoder, TextRole};

const MAGIC: &[u8; 8] = b"EFSEM001";

/// What the cached embeddings depend on.
pub struct CacheKey<'a> {
    pub text_model_sha256: &'a str,
    /// The text encoder's passage prefix (class names are embedded as passages); empty for
    /// models trained without prefixes.
    pub text_prefix: &'a str,
    pub labels_sha256: &'a str,
    pub descriptions_sha256: &'a str,
    pub config: &'a SemanticConfig,
}

impl CacheKey<'_> {
    pub fn file_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.text_model_sha256,
            self.labels_sha256,
            self.descriptions_sha256,
            self.config.label_text.as_str(),
            &self.config.template,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        // Only hashed when set, so keys of models without prefixes stay what they were.
        if !self.text_prefix.is_empty() {
            h.update(b"prefix");
            h.update((self.text_prefix.len() as u64).to_le_bytes());
            h.update(self.text_prefix.as_bytes());
        }
        format!("classes-{}.bin", &hex::encode(h.finalize())[..16])
    }
}

/// Serialise class embeddings (all of one dimension) to the cache layout.
pub fn encode(embeddings: &[Vec<f32>]) -> Vec<u8> {
    let dim = embeddings.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(16 + 4 * embeddings.len() * dim + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(embeddings.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    for e in embeddings {
        for x in e {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Parse the cache layout; `None` (with the reason) for anything that is not a whole, intact
/// file of `classes` rows.
pub fn decode(bytes: &[u8], classes: usize) -> Result<Vec<Vec<f32>>, String> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err("not a class-embedding cache file".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().map_err(|_| "short trailer")?);
    if crc32fast::hash(body) != stored {
        return Err("checksum mismatch (torn or corrupted file)".into());
    }
    let n = u32::from_le_bytes(body[8..12].try_into().map_err(|_| "short header")?) as usize;
    let dim = u32::from_le_bytes(body[12..16].try_into().map_err(|_| "short header")?) as usize;
    if n != classes || dim == 0 || body.len() != 16 + 4 * n * dim {
        return Err(format!(
            "holds {n} x {dim} values in {} bytes, expected {classes} classes",
            body.len()
        ));
    }
    Ok(body[16..]
        .chunks_exact(4 * dim)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

/// Embed every class's texts (each wrapped in the template) and average them per class.
pub fn compute(
    text: &TextEncoder,
    classifier: &ClassifierEncoder,
    config: &SemanticConfig,
) -> Result<Vec<Vec<f32>>, SemanticError> {
    let per_class = class_texts(
        classifier.labels(),
        classifier.descriptions(),
        config.label_text,
    );
    let flat: Vec<String> = per_class
        .iter()
        .flatten()
        .map(|t| config.prompt(t))
        .collect();
    let refs: Vec<&str> = flat.iter().map(String::as_str).collect();
    let mut embedded = Vec::with_capacity(refs.len());
    for r in text.embed(&refs) {
        embedded.push(
            r.map_err(|e| SemanticError::Embedding(e.to_string()))?
                .vector,
        );
    }
    let mut it = embedded.into_iter();
    let mut out = Vec::with_capacity(per_class.len());
    for texts in &per_class {
        let mut sum: Vec<f32> = Vec::new();
        for _ in texts {
            let e = it
                .next()
                .ok_or_else(|| SemanticError::Embedding("fewer embeddings than texts".into()))?;
            if sum.is_empty() {
                sum = vec![0.0; e.len()];
            }
            sum.iter_mut().zip(&e).for_each(|(s, x)| *s += x);
        }
        l2_normalize(&mut sum);
        out.push(sum);
    }
    Ok(out)
}

/// The cache file for this text model, classifier and config under `state_dir`.
pub fn path_for(
    state_dir: &Path,
    text: &TextEncoder,
    classifier: &ClassifierEncoder,
    config: &SemanticConfig,
) -> PathBuf {
    let key = CacheKey {
        text_model_sha256: &text.model.spec.sha256,
        text_prefix: text.prefix(TextRole::Passage),
        labels_sha256: &classifier.labels_sha256,
        descriptions_sha256: classifier.descriptions_sha256.as_deref().unwrap_or(""),
        config,
    };
    state_dir.join("semantic").join(key.file_name())
}

impl SemanticSpace {
    /// The space for this text encoder and classifier: class-name embeddings from the cache
    /// under `state_dir` when it holds an intact file for them, else computed (a few seconds,
    /// once) and saved. `state_dir = None` computes without caching. A cache that cannot be
    /// written costs time at the next start, never correctness: it is logged.
    pub fn load_or_build(
        state_dir: Option<&Path>,
        text: &TextEncoder,
        classifier: &ClassifierEncoder,
        config: &SemanticConfig,
    ) -> Result<SemanticSpace, SemanticError> {
        let classes = classifier.labels().len();
        let path = state_dir.map(|d| path_for(d, text, classifier, config));
        let cached = path.as_ref().and_then(|p| match std::fs::read(p) {
            Ok(bytes) => match decode(&bytes, classes) {
                Ok(e) => Some(e),
                Err(why) => {
                    tracing::warn!("{}: {why}; recomputing it", p.display());
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("{}: {e}; recomputing it", p.display());
                None
            }
        });
        let embeddings = match cached {
            Some(e) => e,
            None => {
                let started = std::time::Instant::now();
                let e = compute(text, classifier, config)?;
                tracing::info!(
                    "embedded {classes} class names with {} in {:.1} s",
                    text.model.spec.name,
                    started.elapsed().as_secs_f64()
                );
                if let Some(p) = &path {
                    if let Err(err) = save(p, &e) {
                        tracing::warn!("{err}");
                    }
                }
                e
            }
        };
        SemanticSpace::new(
            format!("conse/{}", text.model.spec.name),
            classifier.labels().to_vec(),
            embeddings,
            config,
        )
    }
}

fn save(path: &Path, embeddings: &[Vec<f32>]) -> Result<(), SemanticError> {
    let err = |source| SemanticError::CacheWrite {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::atomic_file::write_atomic(path, &encode(embeddings)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_file_round_trips_and_any_damage_is_detected() {
        let rows = vec![vec![1.0, -2.5, 0.0], vec![0.25, 3.0, -1.0]];
        let bytes = encode(&rows);
        assert_eq!(decode(&bytes, 2).unwrap(), rows);
        assert!(decode(&bytes, 3).is_err(), "wrong class count");
        for cut in [0, 10, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], 2).is_err(), "truncated at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 0x10;
        assert!(decode(&flipped, 2).unwrap_err().contains("checksum"));
    }

    #[test]
    fn the_key_changes_with_every_input_it_depends_on() {
        let cfg = SemanticConfig::default();
        let key = |t: &'static str, l: &'static str, c: &SemanticConfig| {
            CacheKey {
                text_model_sha256: t,
                text_prefix: "",
                labels_sha256: l,
                descriptions_sha256: "d",
                config: c,
            }
            .file_name()
        };
        let base = key("t", "l", &cfg);
        assert_ne!(base, key("t2", "l", &cfg));
        assert_ne!(base, key("t", "l2", &cfg));
        let prompt = SemanticConfig {
            template: "a photo of {}".into(),
            ..cfg.clone()
        };
        assert_ne!(base, key("t", "l", &prompt));
        // What is applied after embedding (T, temperature, centring) shares the file.
        let t5 = SemanticConfig {
            top_t: 5,
            centre: 0.0,
            ..cfg.clone()
        };
        assert_eq!(base, key("t", "l", &t5));
        assert!(base.starts_with("classes-") && base.ends_with(".bin"));
        // The text encoder's passage prefix (e5) is part of the key; no prefix adds nothing.
        let with_prefix = |p: &'static str| {
            CacheKey {
                text_model_sha256: "t",
                text_prefix: p,
                labels_sha256: "l",
                descriptions_sha256: "d",
                config: &cfg,
            }
            .file_name()
        };
        assert_eq!(with_prefix(""), base);
        assert_ne!(with_prefix("passage: "), base);
        assert_ne!(with_prefix("passage: "), with_prefix("query: "));
    }
}
