//! What an image model needs beside its graph: preprocessing constants, size limits, and the way
//! a batch of encoded images becomes model runs (shared by vision and the image classifier).

use std::time::Instant;

use tract_onnx::prelude::{tvec, TValue, TVec};

use super::runtime::image_batch;
use super::ModelCache;
use super::{ms, BatchPlan, LoadedModel, Timings};
use crate::error::{InputError, ModelError};
use crate::manifest::Manifest;
use crate::preprocess::image::{preprocess, ImagePreprocess};

/// An image model with its preprocessing and limits, held by the vision encoder and the image
/// classifier alike (they differ only in what a row of output means). A batch of encoded images
/// becomes model runs: each image is preprocessed alone (a bad one fails only itself), the good
/// ones run `max_batch` at a time.
pub struct ImageModel {
    pub model: LoadedModel,
    pub params: ImagePreprocess,
    pub max_pixels: u64,
    pub max_batch: usize,
}

impl ImageModel {
    /// Load `models.<key>` and its preprocessing constants, its batch axis planned as `batch`
    /// asks.
    pub fn load(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        limits: (usize, u64),
        batch: BatchPlan,
    ) -> Result<ImageModel, ModelError> {
        let model = LoadedModel::load_planned(manifest, key, cache, batch)?;
        let params: ImagePreprocess = model.spec.preprocess()?;
        let (max_batch, max_pixels) = limits;
        Ok(ImageModel {
            model,
            params,
            max_pixels,
            max_batch: max_batch.max(1),
        })
    }

    /// The model inputs of one encoded image, as `run` builds them for a batch of one.
    pub fn model_inputs(&self, image: &[u8]) -> Result<TVec<TValue>, InputError> {
        let mut buf = Vec::new();
        preprocess(image, &self.params, self.max_pixels, &mut buf)?;
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
            match preprocess(bytes, &self.params, self.max_pixels, &mut buf) {
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
