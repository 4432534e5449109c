//! Image classifier: decode/orient/resize/crop/normalise → EfficientNet-Lite0 → ImageNet-1k
//! logits → softmax (here, not in the graph, so a temperature can be applied) → top-k classes.
//!
//! Preprocessing is `crate::preprocess::image` with the manifest's constants: the classifier's
//! `(x - 127) / 128` is mean = 127/255, std = 128/255 over `x / 255`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{TValue, TVec};

use super::image_model::ImageModel;
use super::registry::{Encoder, Role, Schedule};
use super::ModelCache;
use super::{BatchPlan, LoadedModel, Timings};
use crate::config::{ClassifierConfig, EncodersConfig};
use crate::error::{InputError, ModelError};
use crate::manifest::{read_verified, Manifest};

/// The class-name files of `[models.<classifier>.preprocess]` (beside the image constants).
#[derive(Debug, Clone, Deserialize)]
pub struct ClassFiles {
    /// JSON list of one display name per class, in output order.
    pub labels: String,
    pub labels_sha256: String,
    /// Optional JSON object `{"<index>": {"name": [synonyms...], "description": "..."}}`.
    #[serde(default)]
    pub descriptions: Option<String>,
    #[serde(default)]
    pub descriptions_sha256: Option<String>,
}

/// Synonyms and a description of one class (from `imagenet1k_gpt_names_descriptions.json`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ClassDescription {
    #[serde(default)]
    pub name: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// One class of a classification result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub index: usize,
    pub name: String,
    pub probability: f32,
}

/// The classifier's answer for one image: every class probability (softmax over the logits)
/// and the `top_k` most probable classes, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub probabilities: Vec<f32>,
    pub top: Vec<ClassScore>,
    pub timings: Timings,
}

pub struct ClassifierEncoder {
    pub image: ImageModel,
    labels: Vec<String>,
    descriptions: Vec<ClassDescription>,
    /// sha256 of the class-name file: part of the key of cached class-name embeddings.
    pub labels_sha256: String,
    /// sha256 of the descriptions file, when the manifest names one.
    pub descriptions_sha256: Option<String>,
    top_k: usize,
}

/// The classifier serves images: it loads after the vision encoder, on its thread, and only
/// with vision on.
impl Encoder for ClassifierEncoder {
    const ROLE: Role = Role::Classifier;
    const SCHEDULE: Schedule = Schedule::After(Role::Vision);
    type Settings = ClassifierConfig;

    fn enabled(config: &EncodersConfig) -> bool {
        config.vision.enabled && config.classifier.enabled
    }
    fn settings(config: &EncodersConfig) -> ClassifierConfig {
        config.classifier.clone()
    }
    fn model_key(settings: &ClassifierConfig) -> &str {
        &settings.model
    }
    fn load(
        manifest: &Manifest,
        s: &ClassifierConfig,
        cache: Option<&ModelCache>,
    ) -> Result<Self, ModelError> {
        ClassifierEncoder::load(
            manifest,
            &s.model,
            cache,
            s.top_k,
            s.max_batch,
            s.max_pixels,
        )
    }
    fn model(&self) -> &LoadedModel {
        &self.image.model
    }
}

impl ClassifierEncoder {
    /// Load `models.<key>` and its class names; `cache` is the compiled-model cache, if any.
    pub fn load(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        top_k: usize,
        max_batch: usize,
        max_pixels: u64,
    ) -> Result<ClassifierEncoder, ModelError> {
        // One image at a time with the batch axis bound to 1: tract's depthwise kernel and fused
        // ReLU6, ~4x faster per image than the symbolic-batch plan (docs/performance.md).
        let image = ImageModel::load(
            manifest,
            key,
            cache,
            (max_batch, max_pixels),
            BatchPlan::PerItem,
        )?;
        let model = &image.model;
        let files: ClassFiles = model.spec.preprocess()?;
        let bad = |path: &PathBuf, message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        let labels_path = manifest.path_of(&files.labels);
        let bytes = read_verified(&labels_path, &files.labels_sha256)?;
        let labels: Vec<String> = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&labels_path, format!("not a JSON list of names: {e}")))?;
        let classes = model.spec.dim;
        if labels.len() != classes {
            return Err(bad(
                &labels_path,
                format!("{} names for a model with {classes} classes", labels.len()),
            ));
        }
        let mut descriptions = vec![ClassDescription::default(); classes];
        if let (Some(file), Some(sha)) = (&files.descriptions, &files.descriptions_sha256) {
            let path = manifest.path_of(file);
            let bytes = read_verified(&path, sha)?;
            let map: std::collections::BTreeMap<String, ClassDescription> =
                serde_json::from_slice(&bytes)
                    .map_err(|e| bad(&path, format!("not a JSON object of classes: {e}")))?;
            for (k, d) in map {
                match k.parse::<usize>() {
                    Ok(i) if i < classes => descriptions[i] = d,
                    _ => return Err(bad(&path, format!("class key {k:?} is not 0..{classes}"))),
                }
            }
        }
        Ok(ClassifierEncoder {
            image,
            labels,
            descriptions,
            labels_sha256: files.labels_sha256,
            descriptions_sha256: files.descriptions_sha256,
            top_k: top_k.clamp(1, classes.max(1)),
        })
    }

    /// Display names, one per class, in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Synonyms and descriptions per class (empty where the descriptions file has none).
    pub fn descriptions(&self) -> &[ClassDescription] {
        &self.descriptions
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Classify encoded images (JPEG, PNG, WebP); a bad image fails only itself.
    pub fn classify(&self, images: &[&[u8]]) -> Vec<Result<Classification, InputError>> {
        self.image.run(
            images,
            |flat, n| self.rows(flat, n),
            |probabilities, timings| Classification {
                top: self.top_classes(&probabilities, self.top_k),
                probabilities,
                timings,
            },
        )
    }

    /// The model inputs for one image, as `classify` builds them (for `edgefuse bench
    /// --profile`).
    pub fn model_inputs(&self, image: &[u8]) -> Result<TVec<TValue>, InputError> {
        self.image.model_inputs(image)
    }

    /// The `k` most probable classes, best first (ties by class index).
    pub fn top_classes(&self, probabilities: &[f32], k: usize) -> Vec<ClassScore> {
        top_indices(probabilities, k)
            .into_iter()
            .map(|index| ClassScore {
                index,
                name: self.labels.get(index).cloned().unwrap_or_default(),
                probability: probabilities[index],
            })
            .collect()
    }

    /// Class probabilities per image from the model's flat logits.
    fn rows(&self, flat: &[f32], n: usize) -> Result<Vec<Vec<f32>>, InputError> {
        let classes = self.labels.len();
        if flat.len() != n * classes {
            return Err(InputError::Inference(format!(
                "classifier returned {} values for {n} images of {classes} classes",
                flat.len()
            )));
        }
        Ok(flat
            .chunks_exact(classes)
            .map(|l| softmax(l, 1.0))
            .collect())
    }
}

/// Softmax of `logits / temperature`, computed stably in f64. A non-positive or non-finite
/// temperature is treated as 1.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature.is_finite() && temperature > 0.0 {
        f64::from(temperature)
    } else {
        1.0
    };
    let max = logits
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![0.0; logits.len()];
    }
    let exps: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_finite() {
                ((f64::from(x) - f64::from(max)) / t).exp()
            } else {
                0.0
            }
        })
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Indices of the `k` largest values, largest first; NaN sorts last, ties by index.
pub fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (values[a], values[b]);
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_temperature_flattens() {
        let p = softmax(&[1.0, 2.0, 3.0], 1.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        let flat = softmax(&[1.0, 2.0, 3.0], 10.0);
        assert!(flat[2] < p[2] && flat[0] > p[0]);
        // Huge logits do not overflow; a NaN logit gets no mass.
        let q = softmax(&[1000.0, 999.0, f32::NAN], 1.0);
        assert!((q[0] - 0.7310586).abs() < 1e-5 && q[2] == 0.0, "{q:?}");
        assert_eq!(softmax(&[f32::NAN], 1.0), vec![0.0]);
    }

    #[test]
    fn top_indices_orders_by_value_then_index() {
        assert_eq!(
            top_indices(&[0.1, 0.5, 0.5, f32::NAN, 0.2], 4),
            [1, 2, 4, 0]
        );
        assert_eq!(top_indices(&[0.3], 5), [0]);
    }
}
