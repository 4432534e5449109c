//! Audio encoder: WAV → aiSFX front end → CNN per 2.3 s block → block embeddings and a clip
//! embedding (mean of the blocks, L2-normalised).

use std::time::Instant;

use tract_onnx::prelude::*;

use super::registry::{Encoder, Role, Schedule};
use super::ModelCache;
use super::{inference_error, l2_normalize, ms, Embedding, ItemResult, LoadedModel, Timings};
use crate::config::{AudioConfig, EncodersConfig};
use crate::error::{InputError, ModelError};
use crate::manifest::Manifest;
use crate::preprocess::audio::{AudioFrontEnd, AudioPreprocess, Blocks};

pub struct AudioEncoder {
    pub model: LoadedModel,
    pub front_end: AudioFrontEnd,
    max_batch: usize,
    max_seconds: f64,
}

impl Encoder for AudioEncoder {
    const ROLE: Role = Role::Audio;
    const SCHEDULE: Schedule = Schedule::Parallel;
    type Settings = AudioConfig;

    fn enabled(config: &EncodersConfig) -> bool {
        config.audio.enabled
    }
    fn settings(config: &EncodersConfig) -> AudioConfig {
        config.audio.clone()
    }
    fn model_key(settings: &AudioConfig) -> &str {
        &settings.model
    }
    fn load(
        manifest: &Manifest,
        s: &AudioConfig,
        cache: Option<&ModelCache>,
    ) -> Result<Self, ModelError> {
        AudioEncoder::load(manifest, &s.model, cache, s.max_batch, s.max_seconds)
    }
    fn model(&self) -> &LoadedModel {
        &self.model
    }
}

impl AudioEncoder {
    /// Load `models.<key>`; `cache` is the compiled-model cache, if one is used.
    pub fn load(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        max_batch: usize,
        max_seconds: f64,
    ) -> Result<AudioEncoder, ModelError> {
        let model = LoadedModel::load_with(manifest, key, cache)?;
        let params: AudioPreprocess = model.spec.preprocess()?;
        let front_end = AudioFrontEnd::new(params).map_err(|message| ModelError::Manifest {
            path: manifest.path_of("manifest.toml"),
            message: format!("models.{key}.preprocess: {message}"),
        })?;
        Ok(AudioEncoder {
            model,
            front_end,
            max_batch: max_batch.max(1),
            max_seconds,
        })
    }

    /// Embed WAV files; a bad file fails only itself.
    pub fn embed_wavs(&self, wavs: &[&[u8]]) -> Vec<ItemResult> {
        wavs.iter()
            .map(|bytes| {
                let t0 = Instant::now();
                let blocks = self.front_end.wav_to_blocks(bytes, self.max_seconds)?;
                self.embed_blocks(&blocks, ms(t0))
            })
            .collect()
    }

    /// Embed mono samples at any rate (the microphone path).
    pub fn embed_samples(&self, samples: &[f32], rate: u32) -> ItemResult {
        let t0 = Instant::now();
        let blocks = self.front_end.samples_to_blocks(samples, rate)?;
        self.embed_blocks(&blocks, ms(t0))
    }

    /// The inputs of the model's first run on a WAV file (its first `max_batch` blocks),
    /// exactly as `embed_wavs` builds them (for profiling the model alone).
    pub fn model_inputs(&self, wav: &[u8]) -> Result<TVec<TValue>, InputError> {
        let blocks = self.front_end.wav_to_blocks(wav, self.max_seconds)?;
        let first = blocks.data.chunks(self.chunk_len()).next().unwrap_or(&[]);
        Ok(tvec![self.block_batch(first)?.into()])
    }

    /// Values per model run: `max_batch` blocks of frames × mel bands.
    fn chunk_len(&self) -> usize {
        let p = &self.front_end.params;
        self.max_batch * p.block_frames * p.n_mels
    }

    /// Whole blocks of frames × mel bands as one input tensor.
    fn block_batch(&self, chunk: &[f32]) -> Result<Tensor, InputError> {
        let p = &self.front_end.params;
        let n = chunk.len() / (p.block_frames * p.n_mels).max(1);
        Tensor::from_shape(&[n, p.block_frames, p.n_mels], chunk).map_err(inference_error)
    }

    fn embed_blocks(&self, blocks: &Blocks, preprocess_ms: f64) -> ItemResult {
        let p = &self.front_end.params;
        let per_block = p.block_frames * p.n_mels;
        let t1 = Instant::now();
        let mut raw: Vec<Vec<f32>> = Vec::with_capacity(blocks.count);
        for chunk in blocks.data.chunks(self.chunk_len()) {
            let n = chunk.len() / per_block;
            let outputs = self
                .model
                .run(tvec![self.block_batch(chunk)?.into()])
                .map_err(inference_error)?;
            let out = outputs[0]
                .to_plain_array_view::<f32>()
                .map_err(inference_error)?;
            let flat: Vec<f32> = out.iter().copied().collect();
            let dim = flat.len() / n.max(1);
            if dim == 0 {
                return Err(InputError::Inference(
                    "model returned an empty embedding".into(),
                ));
            }
            raw.extend(flat.chunks_exact(dim).map(<[f32]>::to_vec));
        }
        let inference_ms = ms(t1);
        let t2 = Instant::now();
        let dim = raw.first().map_or(0, Vec::len);
        let mut clip = vec![0f32; dim];
        for row in &raw {
            clip.iter_mut().zip(row).for_each(|(c, x)| *c += x);
        }
        let inv = 1.0 / raw.len().max(1) as f32;
        clip.iter_mut().for_each(|c| *c *= inv);
        let mut blocks_out = raw;
        if p.normalize {
            l2_normalize(&mut clip);
            blocks_out.iter_mut().for_each(|b| l2_normalize(b));
        }
        Ok(Embedding {
            vector: clip,
            blocks: Some(blocks_out),
            timings: Timings {
                preprocess_ms,
                inference_ms,
                postprocess_ms: ms(t2),
            },
        })
    }
}
