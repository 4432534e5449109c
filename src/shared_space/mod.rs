//! The shared semantic space: every item that can be placed in the text encoder's space gets a
//! `semantic` vector there. Text lives there already (its text embedding *is* its semantic
//! vector); images join through a [`SemanticHook`] (ConSE: a probability-weighted mean of the
//! text embeddings of the image's top ImageNet classes).
//!
//! On top of that space, this module keeps:
//! - [`words`]: zero-shot labels in plain words (config or MQTT `zero_shot/set`), scored on
//!   every item that has a semantic vector;
//! - [`index`]: a bounded, persistent index of recent items, searched over MQTT `query`
//!   ([`query`] parses the requests);
//! - [`fuse`]: the mean semantic vector of a fused record's items, and an optional novelty
//!   score in the shared space.
//!
//! [`SemanticState`] bundles them for the publisher. [`TextSpace`] says how a raw text
//! embedding maps into the space ([`RawTextSpace`]: unchanged; a ConSE space with hubness
//! correction centres it), so texts, words, queries and images all meet in one space.

pub mod conse;
pub mod fuse;
pub mod index;
pub mod query;
pub mod speech;
pub mod words;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::encoders::{ItemResult, Modality, ModelInfo, TextEncoder};
use crate::pipeline::{Purpose, Request};

/// `[shared_space]` is config, defined with the other component configs.
pub use crate::config::components::{IndexConfig, SpaceConfig, MAX_INDEX_ITEMS};

/// The name of the shared space: the text model and the prefix of its sha256. Vectors from
/// different spaces are never compared (the index starts afresh when it changes).
pub fn space_name(text_model: &ModelInfo) -> String {
    format!("{}@{}", text_model.name, text_model.sha256)
}

/// The shared space: its name, and a text embedding's vector in it. Texts, zero-shot words and
/// query sentences all go through [`TextSpace::text_vector`]; images come from a
/// [`SemanticHook`] of the same space.
pub trait TextSpace: Send + Sync {
    fn name(&self) -> &str;
    /// The space's vector (unit length) for a raw text-encoder embedding.
    fn text_vector(&self, embedding: &[f32]) -> Vec<f32>;

    /// The text embedded for a zero-shot word (the ConSE space wraps it in
    /// `semantic.template`, as it did its class names); the word itself by default.
    fn word_text(&self, word: &str) -> String {
        word.to_owned()
    }

    /// Components named in a zero-shot score's reason (`semantic.reasons` in the ConSE space).
    fn reasons(&self) -> usize {
        words::DEFAULT_REASONS
    }
}

/// The text encoder's own space: a text's vector is its embedding.
pub struct RawTextSpace {
    name: String,
}

impl RawTextSpace {
    pub fn new(text_model: &ModelInfo) -> RawTextSpace {
        RawTextSpace {
            name: space_name(text_model),
        }
    }
}

impl TextSpace for RawTextSpace {
    fn name(&self) -> &str {
        &self.name
    }

    fn text_vector(&self, embedding: &[f32]) -> Vec<f32> {
        embedding.to_vec()
    }
}

/// The value types the pipeline carries and the hook trait its workers call are defined in
/// [`crate::pipeline::semantic`], below this module; the hooks here implement it from above.
pub use crate::pipeline::semantic::{Component, SemanticFromInputs, SemanticHook, SemanticItem};

/// Text already lives in the text space: an embedded text's semantic vector is its embedding,
/// mapped by the space ([`TextSpace::text_vector`]).
pub struct TextIsSemantic(pub Arc<dyn TextSpace>);

impl SemanticHook for TextIsSemantic {
    fn semantic(&self, batch: &[Request], results: &[ItemResult]) -> Vec<Option<SemanticItem>> {
        batch
            .iter()
            .zip(results)
            .map(|(r, res)| match (&r.purpose, res) {
                (Purpose::Embed, Ok(e)) if r.modality == Modality::Text => Some(SemanticItem {
                    vector: self.0.text_vector(&e.vector),
                    parts: Vec::new(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// `semantic` as published in embedding and fused records.
#[derive(Debug, Clone, Serialize)]
pub struct SemanticField<'a> {
    pub space: &'a str,
    pub vector: &'a [f32],
}

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("semantic search index: {0}")]
    Index(#[from] index::IndexError),
    #[error("zero-shot words: {0}")]
    Words(#[from] words::WordsError),
}

/// What the publisher holds: the space's name, the text encoder (for words and queries, run
/// on the blocking pool), the zero-shot words, the index and the fused-record state.
pub struct SemanticState {
    /// The space's name, as published with every `semantic` vector.
    pub space: String,
    pub map: Arc<dyn TextSpace>,
    pub publish: bool,
    pub store_text: bool,
    pub text: Arc<TextEncoder>,
    pub words: words::WordStore,
    pub index: Option<index::Index>,
    pub fuse: fuse::SemanticFusion,
}

impl SemanticState {
    /// Open the index and the word list under `state_dir` and embed the words. Blocking
    /// (file I/O, one text-encoder run): call it on the blocking pool.
    pub fn open(
        cfg: &SpaceConfig,
        config_words: &[String],
        fusion: &crate::config::FusionConfig,
        state_dir: &Path,
        text: Arc<TextEncoder>,
        map: Arc<dyn TextSpace>,
    ) -> Result<SemanticState, SpaceError> {
        let space = map.name().to_owned();
        let index = cfg
            .index
            .enabled
            .then(|| {
                index::Index::open(
                    Some(&state_dir.join("semantic-index.bin")),
                    &space,
                    cfg.index.max_items,
                )
            })
            .transpose()?;
        let words = words::WordStore::open(
            Some(&state_dir.join("zero_shot_words.json")),
            config_words,
            &text,
            map.as_ref(),
        )?;
        Ok(SemanticState {
            space,
            map,
            publish: cfg.publish,
            store_text: cfg.index.store_text,
            text,
            words,
            index,
            fuse: fuse::SemanticFusion::new(
                std::time::Duration::from_millis(fusion.window_ms),
                cfg.novelty.then_some(fusion.novelty_history.max(1)),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_validated_with_their_toml_paths() {
        let c = crate::config::Config::from_toml(
            "[shared_space]\npublish = false\n[shared_space.index]\nmax_items = 10\n\
             store_text = true\n[fusion.zero_shot]\nwords = [\"cat\", \"dog\"]\n",
            "t",
        )
        .unwrap();
        assert!(!c.shared_space.publish && c.shared_space.index.store_text);
        assert_eq!(c.shared_space.index.max_items, 10);
        assert_eq!(c.fusion.zero_shot.words, ["cat", "dog"]);
        let long = "x".repeat(words::MAX_WORD_BYTES + 1);
        let toml = format!(
            "[shared_space.index]\nmax_items = 0\n[fusion.zero_shot]\nwords = [\"ok\", \" \", \"{long}\"]\n"
        );
        let err = crate::config::Config::from_toml(&toml, "t").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "fusion.zero_shot.words[1]",
                "fusion.zero_shot.words[2]",
                "shared_space.index.max_items"
            ]
        );
        let err = crate::config::Config::from_toml("[shared_space]\nindex = 5\n", "t");
        assert!(err.is_err());
    }

    #[test]
    fn the_space_is_named_by_the_text_model() {
        let m = ModelInfo {
            name: "all-MiniLM-L6-v2".into(),
            sha256: "53aa5117abcd".into(),
            quantization: "fp32".into(),
        };
        assert_eq!(space_name(&m), "all-MiniLM-L6-v2@53aa5117abcd");
    }
}
