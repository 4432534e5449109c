//! Entry points shared by the cargo-fuzz targets (`fuzz/`), the corpus replay test
//! (`tests/integration/fuzz_corpus.rs`) and the malformed-input daemon test: arbitrary bytes in, an
//! `Ok` or a refusal out, never a panic, with memory bounded by the limits below.

use bytes::Bytes;

use crate::config::Config;
use crate::mqtt::{Incoming, Topics};
use crate::pipeline::Body;
use crate::preprocess::image::ImagePreprocess;
use crate::preprocess::{image, resample, wav};
use crate::sources::mqtt::{parse_incoming, Parsed};

/// Limits used by the fuzz entry points (smaller than the defaults, so a fuzzer explores
/// formats rather than allocations; the refusal logic is the same).
pub const MAX_PIXELS: u64 = 4_000_000;
pub const MAX_SECONDS: f64 = 30.0;
pub const MAX_PAYLOAD: usize = 1 << 20;
pub const MAX_TEXT: usize = 64 * 1024;

/// The suffixes the first byte of a [`payload`] input selects (under `edgefuse/fuzz/`).
pub const TOPICS: [&str; 8] = [
    "in/text",
    "in/image",
    "in/audio",
    "enroll/x",
    "forget/x",
    "in/video",
    "in/text/extra",
    "enroll/a/b",
];

/// The MQTT message a [`payload`] input stands for: byte 0 picks the topic, byte 1 holds
/// flags (bit 0 content type JSON, bit 1 correlation data of length byte 2 follows), the rest
/// is the payload.
pub fn message(data: &[u8]) -> Incoming {
    let topics = Topics::new("edgefuse", "fuzz");
    let pick = data.first().copied().unwrap_or(0) as usize;
    let flags = data.get(1).copied().unwrap_or(0);
    let mut rest = data.get(2..).unwrap_or(&[]);
    let mut correlation = None;
    if flags & 2 != 0 {
        if let Some((&n, tail)) = rest.split_first() {
            let (c, tail) = tail.split_at(usize::from(n).min(tail.len()));
            correlation = Some(Bytes::copy_from_slice(c));
            rest = tail;
        }
    }
    let topic = if pick >= TOPICS.len() * 31 {
        "elsewhere/in/text".to_owned()
    } else {
        topics.at(TOPICS[pick % TOPICS.len()])
    };
    Incoming {
        topic,
        payload: Bytes::copy_from_slice(rest),
        response_topic: None,
        correlation,
        content_type: (flags & 1 != 0).then(|| "application/json".to_owned()),
    }
}

/// MQTT payload decoding as the daemon does it: parse, then decode images and WAV bodies.
pub fn payload(data: &[u8]) -> Result<(), String> {
    let msg = message(data);
    let topics = Topics::new("edgefuse", "fuzz");
    match parse_incoming(&msg, &topics, MAX_PAYLOAD, MAX_TEXT) {
        Err((id, reason)) => {
            if id.is_empty() || reason.is_empty() {
                return Err("a refusal without an id or reason".into());
            }
            Err(reason)
        }
        Ok(Parsed::Forget { .. }) => Ok(()),
        Ok(Parsed::Request(r)) => match &r.body {
            Body::Encoded(b) => match r.modality {
                crate::types::Modality::Audio => wav_bytes(b),
                _ => image_bytes(b),
            },
            Body::Text(_) | Body::Samples { .. } => Ok(()),
        },
    }
}

/// WAV parsing, then resampling to the audio model's 44.1 kHz.
pub fn wav_bytes(data: &[u8]) -> Result<(), String> {
    let audio = wav::decode(data, MAX_SECONDS).map_err(|e| e.to_string())?;
    resample::resample(&audio.samples, audio.sample_rate, 44_100).map_err(|e| e.to_string())?;
    Ok(())
}

/// Image decoding through the vision preprocessing entry point.
pub fn image_bytes(data: &[u8]) -> Result<(), String> {
    let mut out = Vec::new();
    image::preprocess(data, &ImagePreprocess::dinov2(), MAX_PIXELS, &mut out)
        .map_err(|e| e.to_string())
}

/// Config parsing and validation.
pub fn config(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    Config::from_toml(text, "fuzz.toml")
        .map(|_| ())
        .map_err(|e| e.to_string())
}
