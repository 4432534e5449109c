//! The shared text space: images placed in the text encoder's space by ConSE (Norouzi et al.,
//! "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR 2014), so that
//! words, sentences and photos can be compared with one cosine.
//!
//! An image's vector is the probability-weighted mean of the text embeddings of its top-T
//! ImageNet classes, L2-normalised. On top of the plain recipe (see docs/models.md for the
//! measurements that chose the defaults):
//!
//! * **label texts**: a class is embedded as the mean of its clean name and its synonyms
//!   (`imagenet1k_gpt_names_descriptions.json`), optionally with its description;
//! * **temperature**: the top-T probabilities are sharpened or flattened (`p^(1/τ)`);
//! * **hubness correction**: every vector, image or text, has `centre × mean class-name
//!   embedding` subtracted before normalisation, so that what all class names share (and what
//!   pulls every image toward generic words like "photographer" or "object") cancels out.
//!
//! Class-name embeddings are computed once with the configured text encoder and cached under
//! `<state_dir>/semantic/` (see [`cache`]), never per image.
//!
//! Everything here is pure (no I/O) except [`cache`] and [`SemanticSpace::load_or_build`].

pub mod cache;

use serde::Serialize;

use crate::encoders::classifier::{top_indices, ClassDescription};
use crate::encoders::l2_normalize;

/// `[semantic]` and its label texts are config, defined with the other component configs.
pub use crate::config::components::{LabelText, SemanticConfig, MAX_LABEL_BYTES};

/// Most labels scored at once.
pub const MAX_LABELS: usize = 1000;

/// Why the semantic space could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SemanticError {
    #[error("class-name embeddings: {0}")]
    Embedding(String),
    #[error("{0} class names but {1} class-name embeddings")]
    Mismatch(usize, usize),
    #[error("class-name embeddings have inconsistent dimensions")]
    Ragged,
    #[error("no class names to build a semantic space from")]
    Empty,
    #[error("cannot write the class-name cache {path}: {source}")]
    CacheWrite {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The texts that stand for each class, before the template: what gets embedded.
pub fn class_texts(
    labels: &[String],
    descriptions: &[ClassDescription],
    how: LabelText,
) -> Vec<Vec<String>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut texts = vec![name.trim().to_owned()];
            let d = descriptions.get(i);
            if how != LabelText::Name {
                for syn in d.map(|d| d.name.as_slice()).unwrap_or_default() {
                    let s = syn.trim();
                    if !s.is_empty() && !texts.iter().any(|t| t.eq_ignore_ascii_case(s)) {
                        texts.push(s.to_owned());
                    }
                }
            }
            if how == LabelText::Descriptions {
                if let Some(d) = d.filter(|d| !d.description.trim().is_empty()) {
                    texts.push(format!("{}: {}", name.trim(), d.description.trim()));
                }
            }
            texts
        })
        .collect()
}

/// A class that carried part of an image's vector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Carrier {
    pub index: usize,
    pub name: String,
    /// Its share of the image vector (the top-T weights sum to 1).
    pub weight: f32,
}

/// A vector in the shared space, with the classes it was made of (empty for text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SemanticVector {
    pub vector: Vec<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub carriers: Vec<Carrier>,
}

/// Why a label scored what it did: the classes that contributed most.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub class: String,
    /// The class's weight in the image vector.
    pub weight: f32,
    /// weight × cosine(class, label): the class's part of the score before normalisation.
    pub contribution: f32,
}

/// One zero-shot label's score (cosine in the shared space) and reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZeroShotScore {
    pub label: String,
    pub score: f32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<Reason>,
}

/// Class-name embeddings plus the rules that turn probabilities and texts into vectors.
#[derive(Debug, Clone)]
pub struct SemanticSpace {
    name: String,
    labels: Vec<String>,
    /// Class-name embeddings, centred by `centre × mean` and L2-normalised.
    classes: Vec<Vec<f32>>,
    /// `centre × mean class-name embedding`, subtracted from every text vector.
    offset: Vec<f32>,
    config: SemanticConfig,
}

impl SemanticSpace {
    /// Build from one raw (unit) text embedding per class. `name` names the space, e.g.
    /// `conse/all-MiniLM-L6-v2`.
    pub fn new(
        name: impl Into<String>,
        labels: Vec<String>,
        embeddings: Vec<Vec<f32>>,
        config: &SemanticConfig,
    ) -> Result<SemanticSpace, SemanticError> {
        if labels.is_empty() {
            return Err(SemanticError::Empty);
        }
        if labels.len() != embeddings.len() {
            return Err(SemanticError::Mismatch(labels.len(), embeddings.len()));
        }
        let dim = embeddings[0].len();
        if dim == 0 || embeddings.iter().any(|e| e.len() != dim) {
            return Err(SemanticError::Ragged);
        }
        let mut mean = vec![0.0f32; dim];
        for e in &embeddings {
            mean.iter_mut().zip(e).for_each(|(m, x)| *m += x);
        }
        let n = embeddings.len() as f32;
        let offset: Vec<f32> = mean.iter().map(|m| config.centre * m / n).collect();
        let classes = embeddings
            .into_iter()
            .map(|mut e| {
                e.iter_mut().zip(&offset).for_each(|(x, o)| *x -= o);
                l2_normalize(&mut e);
                e
            })
            .collect();
        Ok(SemanticSpace {
            name: name.into(),
            labels,
            classes,
            offset,
            config: config.clone(),
        })
    }

    /// Names the space, e.g. `conse/all-MiniLM-L6-v2`: vectors of one space are comparable.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dim(&self) -> usize {
        self.offset.len()
    }

    pub fn config(&self) -> &SemanticConfig {
        &self.config
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Class `index`'s vector in this space (its name embedding, corrected and unit length).
    pub fn class_vector(&self, index: usize) -> Option<&[f32]> {
        self.classes.get(index).map(Vec::as_slice)
    }

    /// An image's vector from its class probabilities (softmax output, one per class).
    pub fn image_vector(&self, probabilities: &[f32]) -> SemanticVector {
        let t = self.config.top_t.clamp(1, self.classes.len());
        let top = top_indices(probabilities, t);
        let inv_temp = 1.0 / f64::from(self.config.temperature.max(1e-3));
        let raw: Vec<f64> = top
            .iter()
            .map(|&i| {
                let p = f64::from(probabilities.get(i).copied().unwrap_or(0.0));
                if p.is_finite() && p > 0.0 {
                    p.powf(inv_temp)
                } else {
                    0.0
                }
            })
            .collect();
        let sum: f64 = raw.iter().sum();
        let mut vector = vec![0.0f32; self.dim()];
        let mut carriers = Vec::with_capacity(top.len());
        for (&i, &r) in top.iter().zip(&raw) {
            let w = if sum > 0.0 { (r / sum) as f32 } else { 0.0 };
            if w == 0.0 || i >= self.classes.len() {
                continue;
            }
            vector
                .iter_mut()
                .zip(&self.classes[i])
                .for_each(|(v, c)| *v += w * c);
            carriers.push(Carrier {
                index: i,
                name: self.labels[i].clone(),
                weight: w,
            });
        }
        l2_normalize(&mut vector);
        SemanticVector { vector, carriers }
    }

    /// A text's vector from its raw text-encoder embedding (the same correction as classes).
    pub fn text_vector(&self, embedding: &[f32]) -> SemanticVector {
        let mut vector: Vec<f32> = embedding
            .iter()
            .zip(&self.offset)
            .map(|(x, o)| x - o)
            .collect();
        l2_normalize(&mut vector);
        SemanticVector {
            vector,
            carriers: Vec::new(),
        }
    }

    /// Score `labels` — each `(label, raw text-encoder embedding of its prompt)` — against a
    /// vector of this space, best first (ties keep the given order). Each score is the cosine
    /// of the two vectors; for an image the reason names the classes that contributed most.
    pub fn zero_shot(
        &self,
        item: &SemanticVector,
        labels: &[(String, Vec<f32>)],
    ) -> Vec<ZeroShotScore> {
        let mut out: Vec<ZeroShotScore> = labels
            .iter()
            .map(|(label, emb)| {
                let word = self.text_vector(emb).vector;
                let score = dot(&item.vector, &word);
                let mut reason: Vec<Reason> = item
                    .carriers
                    .iter()
                    .map(|c| Reason {
                        class: c.name.clone(),
                        weight: c.weight,
                        contribution: c.weight * dot(&self.classes[c.index], &word),
                    })
                    .collect();
                reason.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
                reason.truncate(self.config.reasons);
                ZeroShotScore {
                    label: label.clone(),
                    score: if score.is_finite() { score } else { 0.0 },
                    reason,
                }
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }
}

impl SemanticSpace {
    /// `(label, raw embedding of its prompt)` for each label, ready for [`Self::zero_shot`].
    /// `text` must be the encoder the space was built with. Labels are used as given: check
    /// user input with [`check_label`] first.
    pub fn embed_labels(
        &self,
        text: &crate::encoders::TextEncoder,
        labels: &[String],
    ) -> Result<Vec<(String, Vec<f32>)>, crate::error::InputError> {
        let prompts: Vec<String> = labels.iter().map(|l| self.config.prompt(l)).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        labels
            .iter()
            .zip(text.embed(&refs))
            .map(|(l, r)| r.map(|e| (l.clone(), e.vector)))
            .collect()
    }

    /// A text's vector in this space, embedded with `text` (the encoder the space was built
    /// with). For a text already embedded, use [`Self::text_vector`].
    pub fn text_vector_of(
        &self,
        text: &crate::encoders::TextEncoder,
        s: &str,
    ) -> Result<SemanticVector, crate::error::InputError> {
        let e = text
            .embed(&[s])
            .pop()
            .unwrap_or(Err(crate::error::InputError::Empty))?;
        Ok(self.text_vector(&e.vector))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Check one zero-shot label as a user wrote it: trimmed, non-empty, bounded.
pub fn check_label(label: &str) -> Result<&str, String> {
    let l = label.trim();
    if l.is_empty() {
        Err("a label is empty".into())
    } else if l.len() > MAX_LABEL_BYTES {
        Err(format!(
            "label {:?}… is longer than {MAX_LABEL_BYTES} bytes",
            l.chars().take(24).collect::<String>()
        ))
    } else {
        Ok(l)
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

    fn space(centre: f32, top_t: usize) -> SemanticSpace {
        let cfg = SemanticConfig {
            centre,
            top_t,
            ..SemanticConfig::default()
        };
        let labels = ["cat", "dog", "car"].map(String::from).to_vec();
        // Every class shares a large common component (axis 3): the hub.
        let emb = vec![
            unit(&[1.0, 0.0, 0.0, 2.0]),
            unit(&[0.0, 1.0, 0.0, 2.0]),
            unit(&[0.0, 0.0, 1.0, 2.0]),
        ];
        SemanticSpace::new("test", labels, emb, &cfg).unwrap()
    }

    #[test]
    fn an_image_vector_is_the_weighted_mean_of_its_top_classes() {
        let s = space(0.0, 2);
        let v = s.image_vector(&[0.7, 0.2, 0.1]);
        assert_eq!(v.carriers.len(), 2, "top_t = 2 keeps two classes");
        assert_eq!(v.carriers[0].name, "cat");
        assert!((v.carriers[0].weight - 0.7 / 0.9).abs() < 1e-6);
        assert!((v.carriers[1].weight - 0.2 / 0.9).abs() < 1e-6);
        let norm: f32 = v.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        // No weight on "car": the vector has no component on its own axis.
        assert_eq!(v.vector[2], 0.0);
    }

    #[test]
    fn temperature_below_one_sharpens_the_weights() {
        let cfg = SemanticConfig {
            temperature: 0.5,
            top_t: 2,
            ..SemanticConfig::default()
        };
        let s = SemanticSpace::new(
            "t",
            vec!["a".into(), "b".into()],
            vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            &cfg,
        )
        .unwrap();
        let v = s.image_vector(&[0.6, 0.4]);
        // 0.36 / (0.36 + 0.16)
        assert!((v.carriers[0].weight - 0.36 / 0.52).abs() < 1e-6);
    }

    #[test]
    fn zero_shot_ranks_the_right_word_first_and_names_the_classes() {
        let s = space(1.0, 3);
        let img = s.image_vector(&[0.05, 0.9, 0.05]);
        let words = vec![
            ("kitten".to_string(), unit(&[0.9, 0.1, 0.0, 2.0])),
            ("puppy".to_string(), unit(&[0.1, 0.9, 0.0, 2.0])),
            ("truck".to_string(), unit(&[0.0, 0.1, 0.9, 2.0])),
        ];
        let scores = s.zero_shot(&img, &words);
        let order: Vec<&str> = scores.iter().map(|z| z.label.as_str()).collect();
        assert_eq!(order, ["puppy", "kitten", "truck"]);
        assert_eq!(scores[0].reason[0].class, "dog");
        assert!(scores[0].score > scores[1].score);
        // A text vector carries no classes, so no reason.
        let t = s.text_vector(&unit(&[0.0, 1.0, 0.0, 2.0]));
        let ts = s.zero_shot(&t, &words);
        assert_eq!(ts[0].label, "puppy");
        assert!(ts[0].reason.is_empty());
    }

    #[test]
    fn centring_removes_the_component_every_class_shares() {
        // Without centring every word that shares the hub axis scores high against any image;
        // with centring the hub cancels and an unrelated word falls far below.
        let plain = space(0.0, 3);
        let centred = space(1.0, 3);
        let hub_word = vec![("thing".to_string(), unit(&[0.0, 0.0, 0.0, 1.0]))];
        let probs = [0.9, 0.05, 0.05];
        let a = plain.zero_shot(&plain.image_vector(&probs), &hub_word)[0].score;
        let b = centred.zero_shot(&centred.image_vector(&probs), &hub_word)[0].score;
        assert!(a > 0.8, "plain ConSE: the hub word scores {a}");
        assert!(b.abs() < 0.1, "centred: the hub word scores {b}");
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let cfg = SemanticConfig::default();
        assert!(matches!(
            SemanticSpace::new("t", vec![], vec![], &cfg),
            Err(SemanticError::Empty)
        ));
        assert!(matches!(
            SemanticSpace::new("t", vec!["a".into()], vec![], &cfg),
            Err(SemanticError::Mismatch(1, 0))
        ));
        assert!(matches!(
            SemanticSpace::new(
                "t",
                vec!["a".into(), "b".into()],
                vec![vec![1.0], vec![1.0, 0.0]],
                &cfg
            ),
            Err(SemanticError::Ragged)
        ));
        // Probabilities shorter than the class list, or all zero, give a zero vector.
        let s = space(1.0, 3);
        let v = s.image_vector(&[]);
        assert!(v.vector.iter().all(|x| *x == 0.0) && v.carriers.is_empty());
        assert!(check_label("  ").is_err());
        assert!(check_label(&"x".repeat(MAX_LABEL_BYTES + 1)).is_err());
        assert_eq!(check_label(" cat ").unwrap(), "cat");
    }

    #[test]
    fn class_texts_add_synonyms_and_descriptions_without_duplicates() {
        let labels = vec!["tiger cat".to_string(), "tench".to_string()];
        let desc = vec![
            ClassDescription {
                name: vec!["Tiger Cat".into(), "striped cat".into()],
                description: "A cat with stripes.".into(),
            },
            ClassDescription::default(),
        ];
        assert_eq!(
            class_texts(&labels, &desc, LabelText::Name),
            vec![vec!["tiger cat"], vec!["tench"]]
        );
        assert_eq!(
            class_texts(&labels, &desc, LabelText::Synonyms)[0],
            ["tiger cat", "striped cat"]
        );
        assert_eq!(
            class_texts(&labels, &desc, LabelText::Descriptions)[0],
            ["tiger cat", "striped cat", "tiger cat: A cat with stripes."]
        );
    }
}
