//! Microphone: capture (cpal, feature `mic`) → mono f32 → overlapping windows → energy gate →
//! optional Silero VAD gate → the audio queue (drop-oldest). The conversion, windowing and
//! gating here are pure and unit-tested; capture itself needs a sound device.

#[cfg(feature = "mic")]
mod enabled;
#[cfg(feature = "mic")]
pub use enabled::spawn;

#[cfg(not(feature = "mic"))]
mod disabled;
#[cfg(not(feature = "mic"))]
pub use disabled::spawn;

pub mod vad;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::SourceContext;
use crate::config::MicConfig;
use crate::pipeline::queue::DropOldest;
use crate::pipeline::Request;
use crate::types::Modality;

/// What the microphone thread needs.
pub struct Mic {
    pub config: MicConfig,
    pub queue: Arc<DropOldest<Request>>,
    pub vad: Option<Arc<vad::Vad>>,
    pub cancel: CancellationToken,
}

/// Start capturing into the context's live audio queue (there is none unless
/// `sources.mic.enabled`); returns once the stream runs.
pub fn start(
    config: MicConfig,
    vad: Option<Arc<vad::Vad>>,
    ctx: &SourceContext,
) -> anyhow::Result<()> {
    match ctx.queues.live.get(&Modality::Audio).cloned() {
        Some(queue) => spawn(Mic {
            config,
            queue,
            vad,
            cancel: ctx.cancel.clone(),
        }),
        None => Ok(()),
    }
}

/// Interleaved frames of any channel count → mono by averaging.
pub fn mix_to_mono(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let inv = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() * inv)
        .collect()
}

/// Sample formats a capture device may deliver, converted to f32 in [-1, 1].
pub trait ToF32: Copy {
    fn to_f32(self) -> f32;
}
impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}
impl ToF32 for i16 {
    fn to_f32(self) -> f32 {
        f32::from(self) / 32768.0
    }
}
impl ToF32 for u16 {
    fn to_f32(self) -> f32 {
        (f32::from(self) - 32768.0) / 32768.0
    }
}
impl ToF32 for i32 {
    fn to_f32(self) -> f32 {
        self as f32 / 2_147_483_648.0
    }
}
impl ToF32 for u8 {
    fn to_f32(self) -> f32 {
        (f32::from(self) - 128.0) / 128.0
    }
}

/// Cuts a continuous stream into windows of `len` samples every `hop` samples.
pub struct Windower {
    len: usize,
    hop: usize,
    buf: Vec<f32>,
}

impl Windower {
    pub fn new(len: usize, hop: usize) -> Windower {
        Windower {
            len: len.max(1),
            hop: hop.clamp(1, len.max(1)),
            buf: Vec::new(),
        }
    }

    /// Append samples; return every complete window.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Vec<f32>> {
        self.buf.extend_from_slice(samples);
        let mut out = Vec::new();
        while self.buf.len() >= self.len {
            out.push(self.buf[..self.len].to_vec());
            self.buf.drain(..self.hop);
        }
        out
    }
}

/// RMS level in dBFS (−inf for silence).
pub fn rms_dbfs(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return f32::NEG_INFINITY;
    }
    let ms = samples.iter().map(|x| x * x).sum::<f32>() / samples.len() as f32;
    10.0 * ms.log10()
}

/// The cheap first gate: is the window loud enough to be worth a model run?
pub fn passes_energy_gate(samples: &[f32], threshold_dbfs: f32) -> bool {
    rms_dbfs(samples) >= threshold_dbfs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_formats_convert_to_full_scale_f32() {
        assert_eq!(i16::MIN.to_f32(), -1.0);
        assert!((i16::MAX.to_f32() - 1.0).abs() < 1e-4);
        assert_eq!(32768u16.to_f32(), 0.0);
        assert_eq!(0u16.to_f32(), -1.0);
        assert_eq!(i32::MIN.to_f32(), -1.0);
        assert_eq!(128u8.to_f32(), 0.0);
        assert_eq!(0.25f32.to_f32(), 0.25);
    }

    #[test]
    fn stereo_mixes_to_mono() {
        assert_eq!(mix_to_mono(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
        assert_eq!(mix_to_mono(&[0.1, 0.2], 1), vec![0.1, 0.2]);
    }

    #[test]
    fn windows_overlap_by_len_minus_hop() {
        let mut w = Windower::new(4, 2);
        assert!(w.push(&[0.0, 1.0, 2.0]).is_empty());
        let out = w.push(&[3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            out,
            vec![vec![0.0, 1.0, 2.0, 3.0], vec![2.0, 3.0, 4.0, 5.0]]
        );
        assert_eq!(w.push(&[7.0]), vec![vec![4.0, 5.0, 6.0, 7.0]]);
    }

    #[test]
    fn energy_gate_skips_silence_and_passes_sound() {
        let silence = vec![0.0; 1000];
        let hiss = vec![0.001; 1000]; // −60 dBFS
        let speech: Vec<f32> = (0..1000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        assert!(!passes_energy_gate(&silence, -50.0));
        assert!(!passes_energy_gate(&hiss, -50.0));
        assert!(passes_energy_gate(&speech, -50.0));
        assert!((rms_dbfs(&hiss) + 60.0).abs() < 0.01);
    }
}
