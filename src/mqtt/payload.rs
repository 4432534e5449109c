//! Payload encodings, schema version 1 (docs/mqtt.md): JSON records, and the compact f16
//! form with metadata in MQTT 5 user properties.

use serde::Serialize;

use crate::types::{Modality, ModelInfo};

pub const SCHEMA: u32 = 1;
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_F16: &str = "application/x-edgefuse-f16";

/// Per-stage wall times of one item, in milliseconds. JSON carries them rounded to the
/// microsecond (3 decimals): `0.011`, not `0.011016999999999999`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct StageTimings {
    #[serde(serialize_with = "micros")]
    pub queue: f64,
    #[serde(serialize_with = "micros")]
    pub preprocess: f64,
    #[serde(serialize_with = "micros")]
    pub inference: f64,
    #[serde(serialize_with = "micros")]
    pub postprocess: f64,
    #[serde(serialize_with = "micros")]
    pub total: f64,
}

use crate::types::round3 as micros;
/// Milliseconds rounded to 3 decimals (whole microseconds); finer digits are timer noise.
pub use crate::types::round_3dp as round_ms;

/// `embedding/<modality>`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingRecord<'a> {
    pub schema: u32,
    pub id: &'a str,
    pub source: &'a str,
    pub group: &'a str,
    pub modality: Modality,
    /// RFC 3339 UTC with milliseconds.
    pub ts: &'a str,
    pub dim: usize,
    pub model: &'a ModelInfo,
    pub timings_ms: StageTimings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    pub vector: &'a [f32],
}

/// `error`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRecord<'a> {
    pub schema: u32,
    pub id: &'a str,
    pub topic: &'a str,
    pub ts: &'a str,
    pub reason: &'a str,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Little-endian IEEE 754 half floats.
pub fn f16_le(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Inverse of [`f16_le`] (used by tests and clients written in Rust).
pub fn from_f16_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// The metadata of an [`EmbeddingRecord`] as MQTT 5 user properties (for `payload = "f16"`).
pub fn user_properties(r: &EmbeddingRecord<'_>) -> Vec<(String, String)> {
    let t = r.timings_ms;
    vec![
        ("schema".into(), SCHEMA.to_string()),
        ("id".into(), r.id.to_owned()),
        ("source".into(), r.source.to_owned()),
        ("group".into(), r.group.to_owned()),
        ("modality".into(), r.modality.to_string()),
        ("ts".into(), r.ts.to_owned()),
        ("dim".into(), r.dim.to_string()),
        ("dtype".into(), "f16le".into()),
        ("model".into(), r.model.name.clone()),
        ("model_sha256".into(), r.model.sha256.clone()),
        ("quantization".into(), r.model.quantization.clone()),
        ("queue_ms".into(), format!("{:.3}", t.queue)),
        ("preprocess_ms".into(), format!("{:.3}", t.preprocess)),
        ("inference_ms".into(), format!("{:.3}", t.inference)),
        ("postprocess_ms".into(), format!("{:.3}", t.postprocess)),
        ("total_ms".into(), format!("{:.3}", t.total)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_unit_vectors_closely() {
        let v = vec![0.5, -0.25, 0.123_456, 1.0, 0.0];
        let bytes = f16_le(&v);
        assert_eq!(bytes.len(), 10);
        assert_eq!(&bytes[0..2], &half::f16::from_f32(0.5).to_le_bytes());
        for (a, b) in v.iter().zip(from_f16_le(&bytes)) {
            assert!((a - b).abs() < 1e-3);
        }
    }

    #[test]
    fn json_record_has_the_documented_fields() {
        let model = ModelInfo {
            name: "m".into(),
            sha256: "abc".into(),
            quantization: "fp32".into(),
        };
        let r = EmbeddingRecord {
            schema: SCHEMA,
            id: "1",
            source: "mqtt",
            group: "default",
            modality: Modality::Text,
            ts: "2026-01-01T00:00:00.000Z",
            dim: 2,
            model: &model,
            timings_ms: StageTimings::default(),
            blocks: None,
            vector: &[0.6, 0.8],
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "schema",
            "id",
            "source",
            "ts",
            "dim",
            "vector",
            "model",
            "timings_ms",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["model"]["sha256"], "abc");
        assert_eq!(v["timings_ms"]["total"], 0.0);
        assert_eq!(
            user_properties(&r)
                .iter()
                .find(|(k, _)| k == "dim")
                .unwrap()
                .1,
            "2"
        );
    }

    #[test]
    fn timings_are_rounded_to_the_microsecond_in_json() {
        let t = StageTimings {
            queue: 0.011016999999999999,
            preprocess: 11.3004999,
            inference: 170.1234567,
            postprocess: 0.0004,
            total: 182.0,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"queue":0.011,"preprocess":11.3,"inference":170.123,"postprocess":0.0,"total":182.0}"#
        );
        assert_eq!(round_ms(f64::INFINITY), f64::INFINITY);
    }
}
