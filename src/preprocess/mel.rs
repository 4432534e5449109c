//! Log-mel spectrogram matching librosa 0.9.2's `melspectrogram` as aiSFX calls it:
//! centred frames with zero padding, periodic Hann window, power spectrum, HTK mel filters with
//! L1-normalised rows.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Precomputed window, filterbank and FFT plan for one set of constants.
pub struct MelFrontEnd {
    n_fft: usize,
    hop: usize,
    n_mels: usize,
    window: Vec<f32>,
    /// Row-major `[n_mels, n_fft/2 + 1]`, stored sparsely as (first bin, weights) per filter.
    filters: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl MelFrontEnd {
    pub fn new(
        sample_rate: u32,
        n_fft: usize,
        hop: usize,
        n_mels: usize,
        f_min: f64,
        f_max: f64,
        htk: bool,
    ) -> Self {
        let window = (0..n_fft)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos()) as f32
            })
            .collect();
        let dense = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, htk);
        let filters = dense
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n_fft);
        MelFrontEnd {
            n_fft,
            hop,
            n_mels,
            window,
            filters,
            fft,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Number of frames librosa produces for `len` samples with `center=True`.
    pub fn frames(&self, len: usize) -> usize {
        1 + len / self.hop
    }

    /// Mel power spectrogram, time-major `[frames, n_mels]`, each value passed through `map`.
    pub fn mel_power(&self, y: &[f32], map: impl Fn(f32) -> f32) -> Vec<f32> {
        let pad = self.n_fft / 2;
        let frames = self.frames(y.len());
        let mut out = Vec::with_capacity(frames * self.n_mels);
        let mut buf = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; spec.len()];
        for t in 0..frames {
            // Frame t covers padded[t*hop .. t*hop + n_fft], i.e. y[t*hop - pad ..].
            let start = (t * self.hop) as isize - pad as isize;
            for (i, (b, w)) in buf.iter_mut().zip(&self.window).enumerate() {
                let idx = start + i as isize;
                *b = if idx >= 0 && (idx as usize) < y.len() {
                    y[idx as usize] * w
                } else {
                    0.0
                };
            }
            // Lengths are fixed by the plan, so this cannot fail.
            if self
                .fft
                .process_with_scratch(&mut buf, &mut spec, &mut scratch)
                .is_err()
            {
                out.resize(out.len() + self.n_mels, map(0.0));
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spec) {
                *p = c.norm_sqr();
            }
            for (first, weights) in &self.filters {
                let e: f32 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(map(e));
            }
        }
        out
    }
}

fn hz_to_mel(f: f64, htk: bool) -> f64 {
    if htk {
        return 2595.0 * (1.0 + f / 700.0).log10();
    }
    // Slaney: linear below 1 kHz, logarithmic above.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64, htk: bool) -> f64 {
    if htk {
        return 700.0 * (10f64.powf(m / 2595.0) - 1.0);
    }
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// `librosa.filters.mel(..., norm=1)`: triangular filters on the mel scale, each row scaled to
/// unit L1 norm. Computed in f64 and stored as f32, as librosa does.
pub fn mel_filterbank(
    sample_rate: u32,
    n_fft: usize,
    n_mels: usize,
    f_min: f64,
    f_max: f64,
    htk: bool,
) -> Vec<Vec<f32>> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| i as f64 * f64::from(sample_rate) / n_fft as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(f_min, htk), hz_to_mel(f_max, htk));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64, htk))
        .collect();
    (0..n_mels)
        .map(|m| {
            let (f0, f1, f2) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
            let row: Vec<f32> = fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - f0) / (f1 - f0);
                    let upper = (f2 - f) / (f2 - f1);
                    lower.min(upper).max(0.0) as f32
                })
                .collect();
            let l1: f32 = row.iter().map(|w| w.abs()).sum();
            if l1 > f32::MIN_POSITIVE {
                row.iter().map(|w| w / l1).collect()
            } else {
                row
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rows_are_l1_normalised_and_cover_the_spectrum() {
        let fb = mel_filterbank(44100, 2048, 96, 0.0, 22050.0, true);
        assert_eq!(fb.len(), 96);
        for row in &fb {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row sum {s}");
        }
    }

    #[test]
    fn htk_mel_scale_round_trips() {
        for f in [0.0, 440.0, 1000.0, 8000.0, 22050.0] {
            assert!((mel_to_hz(hz_to_mel(f, true), true) - f).abs() < 1e-6);
            assert!((mel_to_hz(hz_to_mel(f, false), false) - f).abs() < 1e-6);
        }
    }

    #[test]
    fn a_tone_peaks_in_the_band_that_holds_its_frequency() {
        let fe = MelFrontEnd::new(44100, 2048, 1024, 96, 0.0, 22050.0, true);
        let y: Vec<f32> = (0..44100)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 44100.0).sin())
            .collect();
        let mel = fe.mel_power(&y, |x| x);
        assert_eq!(mel.len(), fe.frames(y.len()) * 96);
        let frame = &mel[20 * 96..21 * 96];
        let peak = frame
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        let fb = mel_filterbank(44100, 2048, 96, 0.0, 22050.0, true);
        let bin_1k = (1000.0 * 2048.0 / 44100.0_f64).round() as usize;
        assert!(
            fb[peak][bin_1k] > 0.0,
            "peak band {peak} does not cover 1 kHz"
        );
    }
}
