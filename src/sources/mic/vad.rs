//! Silero VAD (the `16k_sequence` export) as an optional second gate: speech probability of a
//! window, from 512-sample chunks at 16 kHz with 64 samples of context each.

use tract_onnx::prelude::*;

use crate::encoders::LoadedModel;
use crate::error::ModelError;
use crate::manifest::Manifest;
use crate::preprocess::resample::resample;

pub struct Vad {
    model: LoadedModel,
    rate: u32,
    chunk: usize,
    context: usize,
}

#[derive(serde::Deserialize)]
struct VadPreprocess {
    sample_rate: u32,
    chunk: usize,
    context: usize,
}

impl Vad {
    pub fn load(manifest: &Manifest, key: &str) -> Result<Vad, ModelError> {
        let model = LoadedModel::load(manifest, key)?;
        let p: VadPreprocess = model.spec.preprocess()?;
        Ok(Vad {
            model,
            rate: p.sample_rate,
            chunk: p.chunk,
            context: p.context,
        })
    }

    /// Highest speech probability over the window's chunks.
    pub fn speech_probability(&self, samples: &[f32], rate: u32) -> Result<f32, String> {
        let y = resample(samples, rate, self.rate).map_err(|e| e.to_string())?;
        let n = y.len() / self.chunk;
        if n == 0 {
            return Ok(0.0);
        }
        let width = self.chunk + self.context;
        let mut input = vec![0f32; n * width];
        for i in 0..n {
            let start = i * self.chunk;
            let ctx_start = start.saturating_sub(self.context);
            let row = &mut input[i * width..(i + 1) * width];
            let ctx = &y[ctx_start..start];
            row[self.context - ctx.len()..self.context].copy_from_slice(ctx);
            row[self.context..].copy_from_slice(&y[start..start + self.chunk]);
        }
        let state = || -> TractResult<TValue> { Ok(Tensor::zero::<f32>(&[1, 1, 128])?.into()) };
        let run = || -> TractResult<f32> {
            let x = Tensor::from_shape(&[n, width], &input)?;
            let out = self.model.run(tvec![x.into(), state()?, state()?])?;
            let probs = out[0].to_plain_array_view::<f32>()?;
            Ok(probs.iter().copied().fold(0f32, f32::max))
        };
        run().map_err(|e| format!("{e:#}"))
    }
}
