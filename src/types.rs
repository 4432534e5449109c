//! Value types shared along the data flow: the modalities, an embedding and its timings, the
//! identity of the model that made it, and vector similarity. No I/O and no tract: everything
//! from sources to sinks can use them without depending on the encoders (which re-export them).

use serde::Serialize;

use crate::error::InputError;

mod ticket;
pub use ticket::{Settle, Ticket};

/// The three modalities edgefuse embeds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Vision,
    Audio,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Modality::Text, Modality::Vision, Modality::Audio];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Vision => "vision",
            Modality::Audio => "audio",
        }
    }
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of the model that produced an embedding, as published with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub sha256: String,
    pub quantization: String,
}

/// Wall time spent in each stage for one item, in milliseconds. Batched stages are shared
/// equally among the batch's items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    #[serde(serialize_with = "round3")]
    pub preprocess_ms: f64,
    #[serde(serialize_with = "round3")]
    pub inference_ms: f64,
    #[serde(serialize_with = "round3")]
    pub postprocess_ms: f64,
}

/// A duration rounded to 3 decimals: whole microseconds for milliseconds, whole milliseconds
/// for seconds. Finer digits are timer noise (`0.011`, not `0.011016999999999999`).
pub fn round_3dp(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e3).round() / 1e3
    } else {
        x
    }
}

/// Serde `serialize_with` for durations in published payloads: see [`round_3dp`].
pub fn round3<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_3dp(*x))
}

/// One embedding: a unit vector, plus per-block vectors for audio.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    pub vector: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<Vec<f32>>>,
    pub timings: Timings,
}

/// L2-normalise in place; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Result for one item of a batch: its embedding or why it failed.
pub type ItemResult = Result<Embedding, InputError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_cosine() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(cosine(&[0.0], &[1.0]), 0.0);
    }

    #[test]
    fn published_timings_carry_three_decimals() {
        let t = Timings {
            preprocess_ms: 0.011016999999999999,
            inference_ms: 12.345678,
            postprocess_ms: f64::NAN,
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"preprocess_ms":0.011,"inference_ms":12.346,"postprocess_ms":null}"#
        );
    }
}
