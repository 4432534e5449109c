//! `query` requests: plain text, or JSON
//! `{"text": "...", "k": 5, "modality": "image" | [..], "source": "...", "since": .., "until": .., "id": ..}`
//! with times as RFC 3339 strings or Unix seconds. Everything is bounded; a bad request is a
//! clear error, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::index::{Filter, IndexEntry};
use crate::encoders::Modality;

/// Largest `query` payload, in bytes.
pub const MAX_QUERY_PAYLOAD: usize = 16 * 1024;
/// Longest query text, in UTF-8 bytes.
pub const MAX_QUERY_TEXT: usize = 2048;
/// Most results one query may ask for.
pub const MAX_K: usize = 100;
pub const DEFAULT_K: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("empty query")]
    Empty,
    #[error("query payload of {0} bytes exceeds {MAX_QUERY_PAYLOAD}")]
    TooLarge(usize),
    #[error("query text of {0} bytes exceeds {MAX_QUERY_TEXT}")]
    TextTooLong(usize),
    #[error("query is not valid UTF-8")]
    NotUtf8,
    #[error("malformed query JSON: {0}")]
    Json(String),
    #[error("query field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

/// A parsed query: a value the pipeline carries (`Purpose::Query`), defined there.
pub use crate::pipeline::semantic::Query;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    id: Option<Value>,
    text: String,
    #[serde(default)]
    k: Option<Value>,
    #[serde(default)]
    modality: Option<Value>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    until: Option<Value>,
}

fn field(field: &'static str, message: impl Into<String>) -> QueryError {
    QueryError::Field {
        field,
        message: message.into(),
    }
}

fn modality(name: &str) -> Result<Modality, QueryError> {
    match name {
        "text" => Ok(Modality::Text),
        "image" | "vision" => Ok(Modality::Vision),
        "audio" => Ok(Modality::Audio),
        other => Err(field(
            "modality",
            format!("{other:?} is not text, image (vision) or audio"),
        )),
    }
}

/// A time as Unix milliseconds: an RFC 3339 string or a number of Unix seconds.
fn time(name: &'static str, v: &Value) -> Result<u64, QueryError> {
    match v {
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s)
                .map_err(|e| field(name, format!("{s:?} is not an RFC 3339 time: {e}")))?;
            let d = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| field(name, "before 1970"))?;
            Ok(d.as_millis().min(u64::MAX as u128) as u64)
        }
        Value::Number(n) => match n.as_f64() {
            Some(s) if s.is_finite() && (0.0..=1e13).contains(&s) => Ok((s * 1e3) as u64),
            _ => Err(field(name, format!("{n} is not a Unix time in seconds"))),
        },
        _ => Err(field(name, "expected an RFC 3339 string or Unix seconds")),
    }
}

/// Parse a `query` payload.
pub fn parse(payload: &[u8], content_type: Option<&str>) -> Result<Query, QueryError> {
    if payload.len() > MAX_QUERY_PAYLOAD {
        return Err(QueryError::TooLarge(payload.len()));
    }
    let s = std::str::from_utf8(payload).map_err(|_| QueryError::NotUtf8)?;
    let is_json = content_type == Some("application/json")
        || s.trim_start().starts_with('{')
        || s.trim_start().starts_with('[');
    let q = if is_json {
        let raw: Raw = serde_json::from_str(s).map_err(|e| QueryError::Json(e.to_string()))?;
        let k = match raw.k {
            None => DEFAULT_K,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(k) if (1..=MAX_K as u64).contains(&k) => k as usize,
                _ => {
                    return Err(field(
                        "k",
                        format!("{n} is not a whole number from 1 to {MAX_K}"),
                    ))
                }
            },
            Some(_) => return Err(field("k", format!("expected a number from 1 to {MAX_K}"))),
        };
        let modalities = match &raw.modality {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(m)) => vec![modality(m)?],
            Some(Value::Array(ms)) if ms.len() <= 3 => ms
                .iter()
                .map(|m| match m {
                    Value::String(m) => modality(m),
                    _ => Err(field("modality", "expected names of modalities")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(field(
                    "modality",
                    "expected \"text\", \"image\", \"audio\" or a list of them",
                ))
            }
        };
        let since_ms = raw.since.as_ref().map(|v| time("since", v)).transpose()?;
        let until_ms = raw.until.as_ref().map(|v| time("until", v)).transpose()?;
        if let (Some(a), Some(b)) = (since_ms, until_ms) {
            if a > b {
                return Err(field("until", "is before since"));
            }
        }
        if raw.source.as_ref().is_some_and(|s| s.len() > 256) {
            return Err(field("source", "longer than 256 bytes"));
        }
        let id = match raw.id {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        if id.as_ref().is_some_and(|i| i.len() > 256) {
            return Err(field("id", "longer than 256 bytes"));
        }
        Query {
            id,
            text: raw.text,
            k,
            filter: Filter {
                modalities,
                source: raw.source,
                since_ms,
                until_ms,
            },
        }
    } else {
        Query {
            id: None,
            text: s.to_owned(),
            k: DEFAULT_K,
            filter: Filter::default(),
        }
    };
    if q.text.trim().is_empty() {
        return Err(QueryError::Empty);
    }
    if q.text.len() > MAX_QUERY_TEXT {
        return Err(QueryError::TextTooLong(q.text.len()));
    }
    Ok(q)
}

/// One result of a query.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub modality: Modality,
    pub source: String,
    pub group: String,
    /// RFC 3339, when the item was indexed.
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Hit {
    pub fn of(score: f32, e: &IndexEntry) -> Hit {
        let ts = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.ts_ms);
        Hit {
            id: e.id.clone(),
            score,
            modality: e.modality,
            source: e.source.clone(),
            group: e.group.clone(),
            ts: humantime::format_rfc3339_millis(ts).to_string(),
            text: e.text.clone(),
        }
    }
}

/// `query/result` (or the response topic).
#[derive(Debug, Serialize)]
pub struct QueryResult<'a> {
    pub schema: u32,
    pub id: &'a str,
    pub ts: &'a str,
    pub query: &'a str,
    pub space: &'a str,
    pub k: usize,
    /// Items in the index when the query ran.
    pub searched: usize,
    pub results: Vec<Hit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_a_query_with_defaults() {
        let q = parse(b"a cat on a mat", None).unwrap();
        assert_eq!(q.text, "a cat on a mat");
        assert_eq!(q.k, DEFAULT_K);
        assert_eq!(q.filter, Filter::default());
    }

    #[test]
    fn json_queries_carry_filters() {
        let q = parse(
            br#"{"text":"kettle","k":3,"modality":["image","text"],"source":"mqtt",
                 "since":"2026-01-01T00:00:00Z","until":1893456000,"id":7}"#,
            None,
        )
        .unwrap();
        assert_eq!(q.k, 3);
        assert_eq!(q.id.as_deref(), Some("7"));
        assert_eq!(q.filter.modalities, [Modality::Vision, Modality::Text]);
        assert_eq!(q.filter.source.as_deref(), Some("mqtt"));
        assert_eq!(q.filter.since_ms, Some(1_767_225_600_000));
        assert_eq!(q.filter.until_ms, Some(1_893_456_000_000));
        let q = parse(br#"{"text":"x","modality":"audio"}"#, None).unwrap();
        assert_eq!(q.filter.modalities, [Modality::Audio]);
    }

    #[test]
    fn bad_queries_are_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty query"),
            (b"   ", "empty query"),
            (br#"{"text":""}"#, "empty query"),
            (br#"{"text":5}"#, "malformed query JSON"),
            (br#"{"txt":"a"}"#, "malformed query JSON"),
            (b"{not json", "malformed query JSON"),
            (br#"["a"]"#, "malformed query JSON"),
            (br#"{"text":"a","k":0}"#, "query field k"),
            (br#"{"text":"a","k":101}"#, "query field k"),
            (br#"{"text":"a","k":2.5}"#, "query field k"),
            (br#"{"text":"a","k":"5"}"#, "query field k"),
            (
                br#"{"text":"a","modality":"video"}"#,
                "query field modality",
            ),
            (br#"{"text":"a","modality":7}"#, "query field modality"),
            (br#"{"text":"a","since":"yesterday"}"#, "query field since"),
            (br#"{"text":"a","since":-1}"#, "query field since"),
            (
                br#"{"text":"a","since":20,"until":10}"#,
                "query field until",
            ),
            (&[0xff, 0xfe], "not valid UTF-8"),
        ];
        for (payload, want) in cases {
            let e = parse(payload, None).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(payload)
            );
        }
        let long = "x".repeat(MAX_QUERY_TEXT + 1);
        assert_eq!(
            parse(long.as_bytes(), None).unwrap_err(),
            QueryError::TextTooLong(MAX_QUERY_TEXT + 1)
        );
        let huge = vec![b'a'; MAX_QUERY_PAYLOAD + 1];
        assert!(matches!(parse(&huge, None), Err(QueryError::TooLarge(_))));
    }

    #[test]
    fn hits_carry_rfc3339_times() {
        let e = IndexEntry {
            id: "i".into(),
            ts_ms: 1_767_225_600_123,
            source: "mqtt".into(),
            group: "g".into(),
            modality: Modality::Vision,
            text: None,
            vector: vec![1.0],
        };
        let h = Hit::of(0.5, &e);
        assert_eq!(h.ts, "2026-01-01T00:00:00.123Z");
        assert!(serde_json::to_value(&h).unwrap().get("text").is_none());
    }
}
