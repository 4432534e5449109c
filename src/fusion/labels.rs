//! Few-shot labels: examples taught over MQTT (`enroll/<label>`), kept per modality, persisted
//! in the state directory, scored by cosine to each label's prototype (mean of its examples).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::{cosine, l2_normalize, Modality};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub vector: Vec<f32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    schema: u32,
    labels: BTreeMap<String, BTreeMap<Modality, Vec<Example>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelStoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid label store: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A label's score in one modality and the enrolled examples nearest to the input.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModalityScore {
    pub score: f32,
    pub nearest: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelScore {
    pub label: String,
    /// Weighted mean of the modality scores.
    pub score: f32,
    pub modalities: BTreeMap<Modality, ModalityScore>,
}

pub struct LabelStore {
    path: Option<PathBuf>,
    labels: BTreeMap<String, BTreeMap<Modality, Vec<Example>>>,
    prototypes: BTreeMap<(String, Modality), Vec<f32>>,
}

/// Most examples kept per label and modality; the oldest go first.
const MAX_EXAMPLES: usize = 256;

impl LabelStore {
    /// Load from `path` (a missing file is an empty store).
    pub fn open(path: Option<&Path>) -> Result<LabelStore, LabelStoreError> {
        let mut store = LabelStore {
            path: path.map(Path::to_owned),
            labels: BTreeMap::new(),
            prototypes: BTreeMap::new(),
        };
        if let Some(p) = path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    let stored: Stored =
                        serde_json::from_slice(&bytes).map_err(|e| LabelStoreError::Parse {
                            path: p.to_owned(),
                            message: e.to_string(),
                        })?;
                    store.labels = stored.labels;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LabelStoreError::Read {
                        path: p.to_owned(),
                        source,
                    })
                }
            }
        }
        let keys: Vec<(String, Modality)> = store
            .labels
            .iter()
            .flat_map(|(l, m)| m.keys().map(move |m| (l.clone(), *m)))
            .collect();
        for (l, m) in keys {
            store.refresh(&l, m);
        }
        Ok(store)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn label_count(&self) -> usize {
        self.labels.len()
    }

    pub fn examples(&self, label: &str, m: Modality) -> usize {
        self.labels
            .get(label)
            .and_then(|x| x.get(&m))
            .map_or(0, Vec::len)
    }

    fn refresh(&mut self, label: &str, m: Modality) {
        let Some(examples) = self.labels.get(label).and_then(|x| x.get(&m)) else {
            self.prototypes.remove(&(label.to_owned(), m));
            return;
        };
        let dim = examples.first().map_or(0, |e| e.vector.len());
        let mut proto = vec![0f32; dim];
        for e in examples.iter().filter(|e| e.vector.len() == dim) {
            proto.iter_mut().zip(&e.vector).for_each(|(p, x)| *p += x);
        }
        l2_normalize(&mut proto);
        self.prototypes.insert((label.to_owned(), m), proto);
    }

    /// Add an example and persist. Returns the number of examples of that label and modality.
    pub fn enroll(
        &mut self,
        label: &str,
        m: Modality,
        id: &str,
        vector: Vec<f32>,
    ) -> Result<usize, LabelStoreError> {
        let list = self
            .labels
            .entry(label.to_owned())
            .or_default()
            .entry(m)
            .or_default();
        list.push(Example {
            id: id.to_owned(),
            vector,
        });
        if list.len() > MAX_EXAMPLES {
            list.remove(0);
        }
        let n = list.len();
        self.refresh(label, m);
        self.save()?;
        Ok(n)
    }

    /// Remove a label in every modality and persist. Returns whether it existed.
    pub fn forget(&mut self, label: &str) -> Result<bool, LabelStoreError> {
        let existed = self.labels.remove(label).is_some();
        self.prototypes.retain(|(l, _), _| l != label);
        if existed {
            self.save()?;
        }
        Ok(existed)
    }

    fn save(&self) -> Result<(), LabelStoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let stored = Stored {
            schema: 1,
            labels: self.labels.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| LabelStoreError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let write_err = |source| LabelStoreError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        // A power cut leaves the old or the new file, never half of one.
        crate::atomic_file::write_atomic(path, &bytes).map_err(write_err)
    }

    /// Score every label against the record's modality vectors, best first.
    pub fn score(
        &self,
        vectors: &BTreeMap<Modality, &[f32]>,
        weights: &BTreeMap<Modality, f32>,
        nearest: usize,
        top_k: usize,
    ) -> Vec<LabelScore> {
        let mut out = Vec::new();
        for (label, per_modality) in &self.labels {
            let mut modalities = BTreeMap::new();
            let (mut sum, mut wsum) = (0f32, 0f32);
            for (m, v) in vectors {
                let (Some(proto), Some(examples)) = (
                    self.prototypes.get(&(label.clone(), *m)),
                    per_modality.get(m),
                ) else {
                    continue;
                };
                if proto.len() != v.len() {
                    continue;
                }
                let score = cosine(v, proto);
                let mut ranked: Vec<(f32, &str)> = examples
                    .iter()
                    .map(|e| (cosine(v, &e.vector), e.id.as_str()))
                    .collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
                let w = weights.get(m).copied().unwrap_or(1.0);
                sum += w * score;
                wsum += w;
                modalities.insert(
                    *m,
                    ModalityScore {
                        score,
                        nearest: ranked
                            .iter()
                            .take(nearest)
                            .map(|(_, id)| id.to_string())
                            .collect(),
                    },
                );
            }
            if !modalities.is_empty() {
                out.push(LabelScore {
                    label: label.clone(),
                    score: if wsum > 0.0 { sum / wsum } else { 0.0 },
                    modalities,
                });
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out.truncate(top_k);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn enrolled_labels_persist_score_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        {
            let mut s = LabelStore::open(Some(&path)).unwrap();
            s.enroll("cat", Modality::Vision, "c1", unit(&[1.0, 0.1]))
                .unwrap();
            s.enroll("cat", Modality::Vision, "c2", unit(&[1.0, -0.1]))
                .unwrap();
            s.enroll("car", Modality::Vision, "r1", unit(&[0.0, 1.0]))
                .unwrap();
            s.enroll("cat", Modality::Text, "t1", unit(&[0.0, 1.0]))
                .unwrap();
        }
        let mut s = LabelStore::open(Some(&path)).unwrap();
        assert_eq!(s.label_count(), 2);
        let q = unit(&[0.9, 0.2]);
        let vectors = BTreeMap::from([(Modality::Vision, q.as_slice())]);
        let scores = s.score(&vectors, &BTreeMap::new(), 1, 5);
        assert_eq!(scores[0].label, "cat");
        assert_eq!(scores[0].modalities[&Modality::Vision].nearest, ["c1"]);
        assert!(scores[0].score > scores[1].score);
        assert!(s.forget("cat").unwrap());
        assert!(!s.forget("cat").unwrap());
        let s = LabelStore::open(Some(&path)).unwrap();
        assert_eq!(s.label_count(), 1);
    }

    #[test]
    fn fused_label_score_is_the_weighted_mean_of_modalities() {
        let mut s = LabelStore::open(None).unwrap();
        s.enroll("x", Modality::Text, "t", vec![1.0, 0.0]).unwrap();
        s.enroll("x", Modality::Audio, "a", vec![1.0, 0.0]).unwrap();
        let t = [1.0, 0.0];
        let a = [0.0, 1.0];
        let vectors = BTreeMap::from([(Modality::Text, &t[..]), (Modality::Audio, &a[..])]);
        let weights = BTreeMap::from([(Modality::Text, 3.0), (Modality::Audio, 1.0)]);
        let score = s.score(&vectors, &weights, 1, 5)[0].score;
        assert!((score - 0.75).abs() < 1e-6, "{score}");
    }

    #[test]
    fn a_corrupt_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = LabelStore::open(Some(&path)).err().unwrap().to_string();
        assert!(err.contains("not a valid label store"), "{err}");
    }
}
