//! WAV decoding through `hound`: PCM 8/16/24/32-bit integer and 32-bit float, any rate and
//! channel count, mixed down to mono f32 in [-1, 1].

use std::io::Cursor;

use hound::{SampleFormat, WavReader};

use crate::error::InputError;

/// Mono samples and their rate.
#[derive(Debug, Clone)]
pub struct MonoAudio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl MonoAudio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate.max(1))
    }
}

/// Sample rates accepted. Outside this range the resampler's FFT sizes grow with the rate
/// ratio (a header claiming 4 GHz would ask for hundreds of MB), and no real recording is there.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;

/// Float samples past this (60 dB over full scale) are refused.
pub const MAX_FLOAT_SAMPLE: f32 = 1000.0;

/// Decode WAV bytes. `max_seconds` bounds memory before any sample is read.
pub fn decode(bytes: &[u8], max_seconds: f64) -> Result<MonoAudio, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(InputError::NotWav("missing RIFF/WAVE header".into()));
    }
    let reader = WavReader::new(Cursor::new(bytes)).map_err(|e| match e {
        e if is_short_read(&e) => InputError::TruncatedWav("header ends early".into()),
        hound::Error::Unsupported => InputError::UnsupportedWav("format not supported".into()),
        other => InputError::NotWav(other.to_string()),
    })?;
    let spec = reader.spec();
    if spec.channels == 0 || !SAMPLE_RATES.contains(&spec.sample_rate) {
        return Err(InputError::UnsupportedWav(format!(
            "{} channels at {} Hz (expected 1 or more channels at {}–{} Hz)",
            spec.channels,
            spec.sample_rate,
            SAMPLE_RATES.start(),
            SAMPLE_RATES.end()
        )));
    }
    let frames = reader.duration() as usize;
    let seconds = frames as f64 / f64::from(spec.sample_rate);
    if seconds > max_seconds {
        return Err(InputError::AudioTooLong {
            seconds,
            limit: max_seconds,
        });
    }
    let channels = usize::from(spec.channels);
    // The header's length is only a claim: never reserve more samples than the bytes can hold.
    let room = bytes.len() / usize::from(spec.bits_per_sample.div_ceil(8).max(1));
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Float, 32) => {
            let v = collect(reader.into_samples::<f32>(), room, |x| x)?;
            // Full scale is ±1. Far beyond it is garbage, and huge values overflow to NaN in
            // the resampler's FFT (found by the malformed-input test).
            if v.iter()
                .any(|x| !x.is_finite() || x.abs() > MAX_FLOAT_SAMPLE)
            {
                return Err(InputError::UnsupportedWav(format!(
                    "float samples that are NaN, infinite or beyond ±{MAX_FLOAT_SAMPLE}"
                )));
            }
            v
        }
        (SampleFormat::Int, bits @ 1..=32) => {
            // Full-scale integer → [-1, 1); 8-bit WAV is unsigned, hound re-centres it.
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            collect(reader.into_samples::<i32>(), room, move |x| {
                x as f32 * scale
            })?
        }
        (format, bits) => {
            return Err(InputError::UnsupportedWav(format!(
                "{bits}-bit {format:?} samples"
            )))
        }
    };
    if !interleaved.len().is_multiple_of(channels) {
        return Err(InputError::TruncatedWav("last frame is incomplete".into()));
    }
    let samples = if channels == 1 {
        interleaved
    } else {
        let inv = 1.0 / channels as f32;
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * inv)
            .collect()
    };
    Ok(MonoAudio {
        sample_rate: spec.sample_rate,
        samples,
    })
}

/// hound reports input that ends early as an EOF, or as an `Other` I/O error with this text.
fn is_short_read(e: &hound::Error) -> bool {
    match e {
        hound::Error::IoError(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
                || io.to_string().contains("enough bytes")
        }
        _ => false,
    }
}

fn truncated(read: usize, declared: usize) -> InputError {
    InputError::TruncatedWav(format!("data ends after {read} of {declared} samples"))
}

fn collect<S, I: Iterator<Item = hound::Result<S>>>(
    samples: I,
    room: usize,
    convert: impl Fn(S) -> f32,
) -> Result<Vec<f32>, InputError> {
    let (lower, _) = samples.size_hint();
    let mut out = Vec::with_capacity(lower.min(room));
    for s in samples {
        match s {
            Ok(v) => out.push(convert(v)),
            Err(e) if is_short_read(&e) => return Err(truncated(out.len(), lower)),
            Err(e) => return Err(InputError::NotWav(e.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A WAV in memory, for tests across the crate.
    pub(crate) fn wav_bytes(spec: hound::WavSpec, frames: &[Vec<f64>]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
            for frame in frames {
                for &x in frame {
                    match spec.sample_format {
                        SampleFormat::Float => w.write_sample(x as f32).unwrap(),
                        SampleFormat::Int => {
                            let full = (1i64 << (spec.bits_per_sample - 1)) as f64;
                            let v = (x * full).round().clamp(-full, full - 1.0) as i32;
                            w.write_sample(v).unwrap()
                        }
                    }
                }
            }
            w.finalize().unwrap();
        }
        buf.into_inner()
    }

    fn spec(channels: u16, rate: u32, bits: u16, fmt: SampleFormat) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: fmt,
        }
    }

    #[test]
    fn every_pcm_width_and_float_decodes_to_the_same_values() {
        let frames: Vec<Vec<f64>> = (0..100).map(|i| vec![(i as f64 / 100.0) - 0.5]).collect();
        for (bits, fmt) in [
            (16, SampleFormat::Int),
            (24, SampleFormat::Int),
            (32, SampleFormat::Int),
            (32, SampleFormat::Float),
        ] {
            let audio = decode(&wav_bytes(spec(1, 8000, bits, fmt), &frames), 10.0).unwrap();
            assert_eq!(audio.sample_rate, 8000);
            for (got, want) in audio.samples.iter().zip(&frames) {
                assert!((f64::from(*got) - want[0]).abs() < 1e-4, "{bits} {fmt:?}");
            }
        }
    }

    #[test]
    fn stereo_is_mixed_to_mono_by_averaging() {
        let frames = vec![vec![0.5, -0.5], vec![0.25, 0.75]];
        let audio = decode(
            &wav_bytes(spec(2, 44100, 16, SampleFormat::Int), &frames),
            1.0,
        )
        .unwrap();
        assert_eq!(audio.samples.len(), 2);
        assert!(audio.samples[0].abs() < 1e-4 && (audio.samples[1] - 0.5).abs() < 1e-4);
    }

    #[test]
    fn non_wav_truncated_and_too_long_inputs_are_errors() {
        assert!(matches!(
            decode(b"hello, not audio", 10.0),
            Err(InputError::NotWav(_))
        ));
        let frames: Vec<Vec<f64>> = (0..1000).map(|_| vec![0.1]).collect();
        let mut bytes = wav_bytes(spec(1, 8000, 16, SampleFormat::Int), &frames);
        bytes.truncate(bytes.len() - 501);
        let r = decode(&bytes, 10.0);
        assert!(matches!(r, Err(InputError::TruncatedWav(_))), "{r:?}");
        let full = wav_bytes(spec(1, 1000, 16, SampleFormat::Int), &frames);
        assert!(matches!(
            decode(&full, 0.5),
            Err(InputError::AudioTooLong { .. })
        ));
        assert!(matches!(
            decode(&full[..20], 5.0),
            Err(InputError::TruncatedWav(_) | InputError::NotWav(_))
        ));
    }

    #[test]
    fn absurd_rates_and_non_finite_samples_are_refused() {
        let frames: Vec<Vec<f64>> = (0..10).map(|_| vec![0.1]).collect();
        for rate in [1, 999, 384_001, 2_000_000_000] {
            let mut bytes = wav_bytes(spec(1, 8000, 16, SampleFormat::Int), &frames);
            // nSamplesPerSec, written by hand: hound's writer cannot compute byte rates this big.
            bytes[24..28].copy_from_slice(&u32::to_le_bytes(rate));
            bytes[28..32].copy_from_slice(&u32::to_le_bytes(rate.saturating_mul(2)));
            let r = decode(&bytes, 1e9);
            assert!(
                matches!(&r, Err(InputError::UnsupportedWav(m)) if m.contains("Hz")),
                "{rate}: {r:?}"
            );
        }
        for bad in [f32::NAN, f32::INFINITY, 1e30] {
            let mut bytes = wav_bytes(spec(1, 8000, 32, SampleFormat::Float), &frames);
            let n = bytes.len();
            bytes[n - 4..].copy_from_slice(&bad.to_le_bytes());
            let r = decode(&bytes, 10.0);
            assert!(
                matches!(&r, Err(InputError::UnsupportedWav(m)) if m.contains("NaN")),
                "{bad}: {r:?}"
            );
        }
    }

    #[test]
    fn a_header_claiming_4_gb_of_data_reserves_only_what_the_bytes_hold() {
        let frames: Vec<Vec<f64>> = (0..10).map(|_| vec![0.1]).collect();
        let mut bytes = wav_bytes(spec(1, 8000, 16, SampleFormat::Int), &frames);
        // The data chunk's length field sits just before the samples.
        let n = bytes.len();
        bytes[n - 24..n - 20].copy_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
        let r = decode(&bytes, 1e9);
        assert!(matches!(r, Err(InputError::TruncatedWav(_))), "{r:?}");
    }
}
