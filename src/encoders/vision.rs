//! Vision encoder: decode/orient/resize/crop/normalise → ViT → CLS embedding → L2 norm.

use std::time::Instant;

use tract_onnx::prelude::{tvec, TValue, TVec};

use super::registry::{Encoder, Role, Schedule};
use super::runtime::image_batch;
use super::ModelCache;
use super::{l2_normalize, ms, Embedding, ItemResult, LoadedModel, Timings};
use crate::config::{EncodersConfig, VisionConfig};
use crate::error::{InputError, ModelError};
use crate::manifest::Manifest;
use crate::preprocess::image::{preprocess, ImagePreprocess};

pub struct VisionEncoder {
    pub model: LoadedModel,
    pub params: ImagePreprocess,
    max_batch: usize,
    max_pixels: u64,
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
        &self.model
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
        let model = LoadedModel::load_with(manifest, key, cache)?;
        let params: ImagePreprocess = model.spec.preprocess()?;
        Ok(VisionEncoder {
            model,
            params,
            max_batch: max_batch.max(1),
            max_pixels,
        })
    }

    /// Embed encoded images (JPEG, PNG, WebP, …); a bad image fails only itself.
    pub fn embed(&self, images: &[&[u8]]) -> Vec<ItemResult> {
        self.batches().run(
            images,
            |flat, n| Ok(self.rows(flat, n)),
            |vector, timings| Embedding {
                vector,
                blocks: None,
                timings,
            },
        )
    }

    fn batches(&self) -> ImageBatches<'_> {
        ImageBatches {
            model: &self.model,
            params: &self.params,
            max_pixels: self.max_pixels,
            max_batch: self.max_batch,
        }
    }

    /// The model inputs of one encoded image, exactly as `embed` builds them (for profiling
    /// the model alone).
    pub fn model_inputs(&self, image: &[u8]) -> Result<TVec<TValue>, InputError> {
        self.batches().model_inputs(image)
    }

    /// One embedding per image from the model's flat output, normalised if the model says so.
    fn rows(&self, flat: &[f32], n: usize) -> Vec<Vec<f32>> {
        let dim = flat.len() / n.max(1);
        flat.chunks_exact(dim.max(1))
            .map(|row| {
                let mut v = row.to_vec();
                if self.params.normalize {
                    l2_normalize(&mut v);
                }
                v
            })
            .collect()
    }
}

/// How a batch of encoded images becomes model runs: each image is preprocessed alone (a bad one
/// fails only itself), the good ones run `max_batch` at a time. Shared by the vision encoder and
/// the image classifier, which differ only in what a row of output means.
pub(super) struct ImageBatches<'a> {
    pub model: &'a LoadedModel,
    pub params: &'a ImagePreprocess,
    pub max_pixels: u64,
    pub max_batch: usize,
}

impl ImageBatches<'_> {
    /// The model inputs of one encoded image, as `run` builds them for a batch of one.
    pub fn model_inputs(&self, image: &[u8]) -> Result<TVec<TValue>, InputError> {
        let mut buf = Vec::new();
        preprocess(image, self.params, self.max_pixels, &mut buf)?;
        Ok(tvec![
            image_batch(&buf, 1, self.params.crop as usize)?.into()
        ])
    }

    /// `rows(flat, n)` splits the model's output for `n` images into one row each;
    /// `item(row, timings)` makes one result.
    pub fn run<T>(
        &self,
        images: &[&[u8]],
        rows: impl Fn(&[f32], usize) -> Result<Vec<Vec<f32>>, InputError>,
        mut item: impl FnMut(Vec<f32>, Timings) -> T,
    ) -> Vec<Result<T, InputError>> {
        let crop = self.params.crop as usize;
        let per_image = 3 * crop * crop;
        let mut results: Vec<Option<Result<T, InputError>>> =
            (0..images.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Vec<f32>, f64)> = Vec::new();
        for (i, bytes) in images.iter().enumerate() {
            let t0 = Instant::now();
            let mut buf = Vec::with_capacity(per_image);
            match preprocess(bytes, self.params, self.max_pixels, &mut buf) {
                Ok(()) => pending.push((i, buf, ms(t0))),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for chunk in pending.chunks(self.max_batch.max(1)) {
            let n = chunk.len();
            let mut data = Vec::with_capacity(n * per_image);
            chunk
                .iter()
                .for_each(|(_, buf, _)| data.extend_from_slice(buf));
            let output = self
                .model
                .run_images(&data, n, crop)
                .and_then(|(flat, infer_ms)| {
                    let t2 = Instant::now();
                    rows(&flat, n).map(|r| (r, infer_ms, ms(t2)))
                });
            match output {
                Ok((rows, infer_ms, post_ms)) => {
                    for ((i, _, pre_ms), row) in chunk.iter().zip(rows) {
                        let timings = Timings {
                            preprocess_ms: *pre_ms,
                            inference_ms: infer_ms / n as f64,
                            postprocess_ms: post_ms / n as f64,
                        };
                        results[*i] = Some(Ok(item(row, timings)));
                    }
                }
                Err(e) => chunk.iter().for_each(|(i, _, _)| {
                    results[*i] = Some(Err(InputError::Inference(e.to_string())))
                }),
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(InputError::Empty)))
            .collect()
    }
}
