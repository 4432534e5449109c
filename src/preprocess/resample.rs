//! Sample-rate conversion through rubato's FFT resampler (band-limited, synchronous).

use rubato::{FftFixedIn, Resampler};

use crate::error::InputError;

const CHUNK: usize = 1024;

/// Resample mono `input` from `from` Hz to `to` Hz. The output has `round(len * to / from)`
/// samples and is aligned with the input (the resampler's delay is removed).
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, InputError> {
    if from == to || input.is_empty() {
        return Ok(input.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| {
        InputError::UnsupportedWav(format!("resampling {from} Hz → {to} Hz: {e}"))
    };
    let mut rs =
        FftFixedIn::<f32>::new(from as usize, to as usize, CHUNK, 2, 1).map_err(|e| err(&e))?;
    let want = (input.len() as f64 * f64::from(to) / f64::from(from)).round() as usize;
    let delay = rs.output_delay();
    let mut out = Vec::with_capacity(want + delay + 2 * CHUNK);
    let mut pos = 0;
    while pos + rs.input_frames_next() <= input.len() {
        let n = rs.input_frames_next();
        let chunk = rs
            .process(&[&input[pos..pos + n]], None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&chunk[0]);
        pos += n;
    }
    // Feed the tail, then zeros until the delayed output has fully emerged.
    if pos < input.len() {
        let chunk = rs
            .process_partial(Some(&[&input[pos..]]), None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&chunk[0]);
    }
    while out.len() < want + delay {
        let chunk = rs
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(&e))?;
        if chunk[0].is_empty() {
            break;
        }
        out.extend_from_slice(&chunk[0]);
    }
    let end = (delay + want).min(out.len());
    let mut aligned = out[delay.min(end)..end].to_vec();
    aligned.resize(want, 0.0);
    Ok(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn upsampling_keeps_length_phase_and_amplitude() {
        for from in [8000, 16000, 22050, 48000] {
            let x = sine(from, 440.0, 1.0);
            let y = resample(&x, from, 44100).unwrap();
            assert_eq!(y.len(), 44100, "from {from}");
            let reference = sine(44100, 440.0, 1.0);
            // Away from the edges the resampled sine matches the ideal one, up to the
            // resampler's group delay: whole samples are searched, and what remains is at most
            // half a sample (0.031 for this sine's steepest step).
            let err = (0..=6)
                .map(|lag| {
                    y[2000 + lag..42000 + lag]
                        .iter()
                        .zip(&reference[2003..42003])
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max)
                })
                .fold(f32::MAX, f32::min);
            assert!(err < 0.035, "from {from}: max error {err}");
            let rms = (y[2000..42000].iter().map(|v| v * v).sum::<f32>() / 40000.0).sqrt();
            assert!(
                (rms - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.01,
                "from {from}: rms {rms}"
            );
        }
    }

    #[test]
    fn same_rate_is_identity() {
        let x = sine(44100, 100.0, 0.1);
        assert_eq!(resample(&x, 44100, 44100).unwrap(), x);
    }
}
