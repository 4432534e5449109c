//! Zero-shot labels in plain words: a list from the config (`fusion.zero_shot.words`) or set
//! over MQTT (`zero_shot/set`, persisted in the state directory, where it then wins over the
//! config), each word embedded once with the text encoder, scored by cosine on every item
//! that has a semantic vector. The reason names the item's components (for ConSE: its
//! classes) that carried the score.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{SemanticItem, TextSpace};
use crate::encoders::{cosine, TextEncoder};

/// The word list is checked with the config (`fusion.zero_shot.words`), below this module.
pub use crate::config::components::{check_words as check, MAX_WORDS, MAX_WORD_BYTES};
/// Components named in a score's reason when the space does not say (`semantic.reasons`).
pub const DEFAULT_REASONS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum WordsError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot embed {word:?}: {reason}")]
    Embed { word: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Trim, drop repeats (keeping the first), and refuse a list [`check`] does not pass.
pub fn normalise(words: &[String]) -> Result<Vec<String>, WordsError> {
    if let Some((i, m)) = check(words).into_iter().next() {
        return Err(WordsError::Invalid(match i {
            Some(i) => format!("word {i}: {m}"),
            None => m,
        }));
    }
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    for w in words {
        let w = w.trim().to_owned();
        if !out.contains(&w) {
            out.push(w);
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WordsObject {
    words: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WordsPayload {
    List(Vec<String>),
    Object(WordsObject),
}

/// A `zero_shot/set` payload: a JSON list of strings, or `{"words": [...]}`. An empty list
/// clears the words.
pub fn parse_payload(payload: &[u8]) -> Result<Vec<String>, WordsError> {
    let max = MAX_WORDS * (MAX_WORD_BYTES + 8) + 64;
    if payload.len() > max {
        return Err(WordsError::Invalid(format!(
            "payload of {} bytes exceeds {max} (at most {MAX_WORDS} words of {MAX_WORD_BYTES} bytes)",
            payload.len()
        )));
    }
    let parsed: WordsPayload = serde_json::from_slice(payload).map_err(|_| {
        WordsError::Invalid(
            "expected a JSON list of strings, e.g. [\"cat\", \"dog\"], or {\"words\": [...]}"
                .into(),
        )
    })?;
    let words = match parsed {
        WordsPayload::List(w) | WordsPayload::Object(WordsObject { words: w }) => w,
    };
    normalise(&words)
}

/// Why a word scored: one component of the item and what it contributed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reason {
    /// The component's name (for ConSE: an ImageNet class).
    pub class: String,
    /// Its weight in the item (for ConSE: the class probability).
    pub weight: f32,
    /// Cosine between the component and the word.
    pub similarity: f32,
}

/// One word's score on one item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WordScore {
    pub label: String,
    pub score: f32,
    /// Components that carried the score, largest contribution first; absent for text (a
    /// text is compared with the word directly).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<Reason>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    schema: u32,
    words: Vec<String>,
}

/// The word list in force and its embeddings.
pub struct WordStore {
    path: Option<PathBuf>,
    words: Vec<(String, Vec<f32>)>,
    /// Set over MQTT (persisted), rather than taken from the config.
    from_mqtt: bool,
    /// Components named per reason ([`TextSpace::reasons`]).
    reasons: usize,
}

fn embed_all(
    text: &TextEncoder,
    space: &dyn TextSpace,
    words: &[String],
) -> Result<Vec<(String, Vec<f32>)>, WordsError> {
    if words.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = words.iter().map(|w| space.word_text(w)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    words
        .iter()
        .zip(text.embed(&refs))
        .map(|(w, r)| match r {
            Ok(e) => Ok((w.clone(), space.text_vector(&e.vector))),
            Err(e) => Err(WordsError::Embed {
                word: w.clone(),
                reason: e.to_string(),
            }),
        })
        .collect()
}

impl WordStore {
    /// The persisted list at `path` if there is one (a corrupt file is reported and ignored),
    /// else `config_words`; embedded with `text`. Blocking.
    pub fn open(
        path: Option<&Path>,
        config_words: &[String],
        text: &TextEncoder,
        space: &dyn TextSpace,
    ) -> Result<WordStore, WordsError> {
        let stored = path.and_then(|p| match std::fs::read(p) {
            Ok(bytes) => match serde_json::from_slice::<Stored>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|s| normalise(&s.words).map_err(|e| e.to_string()))
            {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(path = %p.display(), "ignoring the saved zero-shot words: {e}");
                    None
                }
            },
            Err(_) => None,
        });
        let from_mqtt = stored.is_some();
        let words = match stored {
            Some(w) => w,
            None => normalise(config_words)?,
        };
        Ok(WordStore {
            path: path.map(Path::to_owned),
            words: embed_all(text, space, &words)?,
            from_mqtt,
            reasons: space.reasons(),
        })
    }

    /// A store with given embeddings (tests, and callers that embed elsewhere).
    pub fn with_vectors(words: Vec<(String, Vec<f32>)>) -> WordStore {
        WordStore {
            path: None,
            words,
            from_mqtt: false,
            reasons: DEFAULT_REASONS,
        }
    }

    pub fn words(&self) -> Vec<&str> {
        self.words.iter().map(|(w, _)| w.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether the list in force was set over MQTT (and persisted).
    pub fn from_mqtt(&self) -> bool {
        self.from_mqtt
    }

    /// Replace the list with already embedded words, and persist it (atomically).
    pub fn replace(&mut self, words: Vec<(String, Vec<f32>)>) -> Result<(), WordsError> {
        if let Some(path) = &self.path {
            let stored = Stored {
                schema: 1,
                words: words.iter().map(|(w, _)| w.clone()).collect(),
            };
            let bytes =
                serde_json::to_vec(&stored).map_err(|e| WordsError::Invalid(e.to_string()))?;
            crate::atomic_file::write_atomic(path, &bytes).map_err(|source| WordsError::Write {
                path: path.clone(),
                source,
            })?;
        }
        self.words = words;
        self.from_mqtt = true;
        Ok(())
    }

    /// Score every word on an item, best first, at most `top_k` ([`score`]).
    pub fn score(&self, item: &SemanticItem, top_k: usize) -> Vec<WordScore> {
        score(&self.words, item, top_k, self.reasons)
    }

    /// The words in force with their vectors in the space.
    pub fn vectors(&self) -> &[(String, Vec<f32>)] {
        &self.words
    }
}

/// Score `words` (from [`embed_words`]) on an item, best first, at most `top_k`: each word's
/// score is the cosine to the item's vector; its reason names the item's components with the
/// largest `weight × similarity`, at most `reasons`. The daemon (`labels`) and `edgefuse
/// describe` both score here.
pub fn score(
    words: &[(String, Vec<f32>)],
    item: &SemanticItem,
    top_k: usize,
    reasons: usize,
) -> Vec<WordScore> {
    let mut out: Vec<WordScore> = words
        .iter()
        .filter(|(_, v)| v.len() == item.vector.len())
        .map(|(w, v)| {
            let mut reason: Vec<(f32, Reason)> = item
                .parts
                .iter()
                .filter(|c| c.vector.len() == v.len())
                .map(|c| {
                    let similarity = cosine(&c.vector, v);
                    (
                        c.weight * similarity,
                        Reason {
                            class: c.name.clone(),
                            weight: c.weight,
                            similarity,
                        },
                    )
                })
                .collect();
            reason.sort_by(|a, b| b.0.total_cmp(&a.0));
            WordScore {
                label: w.clone(),
                score: cosine(&item.vector, v),
                reason: reason.into_iter().take(reasons).map(|(_, r)| r).collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(top_k);
    out
}

/// Embed a new list with `text`, into `space` (each word as [`TextSpace::word_text`] says;
/// blocking: run it on the blocking pool).
pub fn embed_words(
    text: &TextEncoder,
    space: &dyn TextSpace,
    words: &[String],
) -> Result<Vec<(String, Vec<f32>)>, WordsError> {
    embed_all(text, space, words)
}

#[cfg(test)]
mod tests {
    use super::super::Component;
    use super::*;

    #[test]
    fn payloads_parse_and_are_bounded() {
        assert_eq!(
            parse_payload(br#"["cat", " dog ", "cat"]"#).unwrap(),
            ["cat", "dog"]
        );
        assert_eq!(
            parse_payload(br#"{"words": ["kettle"]}"#).unwrap(),
            ["kettle"]
        );
        assert!(parse_payload(b"[]").unwrap().is_empty());
        for bad in [
            &b"cat, dog"[..],
            b"{\"words\": 5}",
            b"[1, 2]",
            b"{\"word\": [\"x\"]}",
            b"[\"\"]",
            b"[\"a\\u0000b\"]",
            b"",
        ] {
            assert!(
                parse_payload(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("[\"{}\"]", "x".repeat(MAX_WORD_BYTES + 1));
        let e = parse_payload(long.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("at most 128"), "{e}");
        let many: Vec<String> = (0..=MAX_WORDS).map(|i| format!("w{i}")).collect();
        let e = parse_payload(&serde_json::to_vec(&many).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 256"), "{e}");
        let huge = vec![b'['; 1 << 20];
        assert!(parse_payload(&huge)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
    }

    #[test]
    fn scores_rank_words_and_name_the_classes_that_carried_them() {
        let store = WordStore::with_vectors(vec![
            ("cat".into(), vec![1.0, 0.0]),
            ("car".into(), vec![0.0, 1.0]),
            ("wrong dim".into(), vec![1.0, 0.0, 0.0]),
        ]);
        let item = SemanticItem {
            vector: vec![0.8, 0.6],
            parts: vec![
                Component {
                    name: "tabby".into(),
                    weight: 0.7,
                    vector: vec![1.0, 0.0],
                },
                Component {
                    name: "sports car".into(),
                    weight: 0.3,
                    vector: vec![0.0, 1.0],
                },
            ],
        };
        let scores = store.score(&item, 5);
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0].label, "cat");
        assert!((scores[0].score - 0.8).abs() < 1e-6);
        assert_eq!(scores[0].reason[0].class, "tabby");
        assert_eq!(scores[1].reason[0].class, "sports car");
        assert_eq!(store.score(&item, 1).len(), 1);
        // Text: no components, no reason field.
        let text = SemanticItem {
            vector: vec![0.0, 1.0],
            parts: vec![],
        };
        let t = store.score(&text, 5);
        assert_eq!(t[0].label, "car");
        let json = serde_json::to_value(&t[0]).unwrap();
        assert!(json.get("reason").is_none(), "{json}");
    }

    #[test]
    fn a_set_list_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        let mut store = WordStore {
            path: Some(path.clone()),
            words: vec![],
            from_mqtt: false,
            reasons: DEFAULT_REASONS,
        };
        store
            .replace(vec![
                ("kettle".into(), vec![1.0]),
                ("door".into(), vec![0.0]),
            ])
            .unwrap();
        let saved: Stored = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved.words, ["kettle", "door"]);
        assert!(store.from_mqtt());
        assert_eq!(store.words(), ["kettle", "door"]);
    }
}
