//! The aiSFX front end: WAV → mono 44.1 kHz → peak normalisation → log-mel → min-max
//! normalisation → overlapping 100-frame blocks, as in `aisfx==0.1.2` (librosa path).

use serde::Deserialize;

use super::mel::MelFrontEnd;
use super::{resample, wav};
use crate::error::InputError;

/// `[models.<audio>.preprocess]` in the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct AudioPreprocess {
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    pub n_mels: usize,
    pub f_min: f64,
    pub f_max: f64,
    pub mel_htk: bool,
    pub mel_norm: String,
    pub peak_normalize: bool,
    pub log_multiplier: f32,
    pub norm_min: f32,
    pub norm_max: f32,
    pub block_frames: usize,
    pub block_hop: f64,
    pub drop_partial_block: bool,
    pub normalize: bool,
}

/// Spectrogram blocks ready for the model: `[blocks, block_frames, n_mels]` row-major.
#[derive(Debug, Clone)]
pub struct Blocks {
    pub count: usize,
    pub data: Vec<f32>,
}

pub struct AudioFrontEnd {
    pub params: AudioPreprocess,
    mel: MelFrontEnd,
}

impl AudioFrontEnd {
    pub fn new(params: AudioPreprocess) -> Result<Self, String> {
        if params.mel_norm != "l1" {
            return Err(format!(
                "mel_norm `{}` is not supported (expected l1)",
                params.mel_norm
            ));
        }
        if params.norm_max <= params.norm_min {
            return Err("norm_max must exceed norm_min".into());
        }
        if params.block_frames == 0 || !(params.block_hop > 0.0 && params.block_hop <= 1.0) {
            return Err("block_frames must be > 0 and block_hop in (0, 1]".into());
        }
        let mel = MelFrontEnd::new(
            params.sample_rate,
            params.n_fft,
            params.hop_length,
            params.n_mels,
            params.f_min,
            params.f_max,
            params.mel_htk,
        );
        Ok(AudioFrontEnd { params, mel })
    }

    /// WAV bytes → model blocks.
    pub fn wav_to_blocks(&self, bytes: &[u8], max_seconds: f64) -> Result<Blocks, InputError> {
        let audio = wav::decode(bytes, max_seconds)?;
        self.samples_to_blocks(&audio.samples, audio.sample_rate)
    }

    /// Mono samples at any rate → model blocks.
    pub fn samples_to_blocks(&self, samples: &[f32], rate: u32) -> Result<Blocks, InputError> {
        if samples.is_empty() {
            return Err(InputError::Empty);
        }
        let mut y = resample::resample(samples, rate, self.params.sample_rate)?;
        if self.params.peak_normalize {
            let peak = y.iter().fold(0f32, |m, x| m.max(x.abs()));
            if peak > 0.0 {
                y.iter_mut().for_each(|x| *x /= peak);
            }
        }
        let p = &self.params;
        let (mult, lo, range) = (p.log_multiplier, p.norm_min, p.norm_max - p.norm_min);
        let spec = self
            .mel
            .mel_power(&y, |e| ((e * mult + 1.0).log10() - lo) / range);
        Ok(self.block(&spec))
    }

    /// `aisfx.preprocessing.blocking`: blocks of `block_frames` with hop `round(block_frames *
    /// block_hop)`, the partial last block dropped when configured, short input zero-padded.
    fn block(&self, spec: &[f32]) -> Blocks {
        let n_mels = self.mel.n_mels();
        let frames = spec.len() / n_mels;
        let block = self.params.block_frames;
        let hop = ((block as f64) * self.params.block_hop).round().max(1.0) as usize;
        let count = block_count(frames, block, hop, self.params.drop_partial_block);
        let mut data = vec![0f32; count * block * n_mels];
        for b in 0..count {
            let start = b * hop;
            let end = (start + block).min(frames);
            if start < end {
                data[b * block * n_mels..][..(end - start) * n_mels]
                    .copy_from_slice(&spec[start * n_mels..end * n_mels]);
            }
        }
        Blocks { count, data }
    }
}

/// Number of blocks aiSFX extracts from `frames` frames.
pub fn block_count(frames: usize, block: usize, hop: usize, drop_partial: bool) -> usize {
    let diff = frames as i64 - block as i64;
    let mut n = ((diff as f64) / hop as f64 + 1.0).ceil() as i64;
    if drop_partial && diff.rem_euclid(hop as i64) != 0 {
        n -= 1;
    }
    n.max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_count_follows_the_reference_rules() {
        // Exactly one block, a short clip padded to one block, partial blocks dropped.
        assert_eq!(block_count(100, 100, 50, true), 1);
        assert_eq!(block_count(30, 100, 50, true), 1);
        assert_eq!(block_count(150, 100, 50, true), 2);
        assert_eq!(block_count(170, 100, 50, true), 2);
        assert_eq!(block_count(170, 100, 50, false), 3);
        assert_eq!(block_count(431, 100, 50, true), 7);
    }
}
