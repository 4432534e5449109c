//! Vision encoder: decode/orient/resize/crop/normalise → ViT → CLS embedding → L2 norm.

use tract_onnx::prelude::{TValue, TVec};

use super::image_model::ImageModel;
use super::registry::{Encoder, Role, Schedule};
use super::ModelCache;
use super::{l2_normalize, BatchPlan, Embedding, ItemResult, LoadedModel};
use crate::config::{EncodersConfig, VisionConfig};
use crate::error::{InputError, ModelError};
use crate::manifest::Manifest;

pub struct VisionEncoder {
    pub image: ImageModel,
}

impl Encoder for VisionEncoder {
    const ROLE: Role = Role::Vision;
    const SCHEDULE: Schedule = Schedule::Parallel;
    type Settings = VisionConfig;

    fn enabled(config: &EncodersConfig) -> bool {
        config.vision.enabled
    }
    fn settings(config: &EncodersConfig) -> VisionConfig {
        config.vision.clone()
    }
    fn model_key(settings: &VisionConfig) -> &str {
        &settings.model
    }
    fn load(
        manifest: &Manifest,
        s: &VisionConfig,
        cache: Option<&ModelCache>,
    ) -> Result<Self, ModelError> {
        VisionEncoder::load(manifest, &s.model, cache, s.max_batch, s.max_pixels)
    }
    fn model(&self) -> &LoadedModel {
        &self.image.model
    }
}

impl VisionEncoder {
    /// Load `models.<key>`; `cache` is the compiled-model cache, if one is used.
    pub fn load(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        max_batch: usize,
        max_pixels: u64,
    ) -> Result<VisionEncoder, ModelError> {
        Ok(VisionEncoder {
            image: ImageModel::load(
                manifest,
                key,
                cache,
                (max_batch, max_pixels),
                BatchPlan::Symbolic,
            )?,
        })
    }

    /// Embed encoded images (JPEG, PNG, WebP, …); a bad image fails only itself.
    pub fn embed(&self, images: &[&[u8]]) -> Vec<ItemResult> {
        self.image.run(
            images,
            |flat, n| Ok(self.rows(flat, n)),
            |vector, timings| Embedding {
                vector,
                blocks: None,
                timings,
            },
        )
    }

    /// The model inputs of one encoded image, exactly as `embed` builds them (for profiling
    /// the model alone).
    pub fn model_inputs(&self, image: &[u8]) -> Result<TVec<TValue>, InputError> {
        self.image.model_inputs(image)
    }

    /// One embedding per image from the model's flat output, normalised if the model says so.
    fn rows(&self, flat: &[f32], n: usize) -> Vec<Vec<f32>> {
        let dim = flat.len() / n.max(1);
        flat.chunks_exact(dim.max(1))
            .map(|row| {
                let mut v = row.to_vec();
                if self.image.params.normalize {
                    l2_normalize(&mut v);
                }
                v
            })
            .collect()
    }
}
