//! The MQTT payloads, pinned: what one sentence and one photo bring on a fresh daemon with the
//! default models (`embedding/text`, `embedding/vision`, the `fused` record of both, and the
//! photo's `labels` with its ImageNet classes and zero-shot words), compared with
//! `tests/fixtures/payloads/*.json`. A refactoring must leave them as they are.
//!
//! What changes from run to run is masked: timestamps, durations (`*_ms`, `*_s`). Numbers are
//! compared to 1e-4 (another CPU's kernels round the last bits differently); everything else
//! (topics, keys, strings, integers, array lengths) exactly. After an intended change of a
//! payload or a default model, rewrite the fixtures with
//! `EDGEFUSE_BLESS=1 cargo test --features test-hooks --test integration payloads` and review the
//! diff.

use std::path::PathBuf;

use serde_json::Value;

use crate::util::{fixture_path, repo, Harness, T};

const TEXT: &str = r#"{"id":"t-1","text":"A cat sleeps on the sofa."}"#;
const PHOTO: &str = "tests/fixtures/images/chelsea.jpg";
/// Zero-shot words, so that `labels` carries word scores too; a window long enough that the
/// sentence is still in it when the photo is done on a loaded machine.
const CONFIG: &str = "[encoders.audio]\nenabled = false\n[fusion]\nwindow_ms = 120000\n\
                      [fusion.zero_shot]\nwords = [\"cat\", \"coffee\", \"guitar\"]\n";

#[test]
fn payloads_of_a_sentence_and_a_photo_are_what_they_were() {
    let mut h = Harness::new(CONFIG, "");
    let mut sub = h.sub("edgefuse/test/#");
    h.start();
    h.publish("edgefuse/test/in/text", &["-m", TEXT]);
    let text = sub.expect("embedding/text", T, |m| m.json()["id"] == "t-1");
    h.publish(
        "edgefuse/test/in/image",
        &[
            "-f",
            &fixture_path(PHOTO),
            "-D",
            "publish",
            "correlation-data",
            "img-1",
        ],
    );
    let vision = sub.expect("embedding/vision", T, |m| m.json()["id"] == "img-1");
    let fused = sub.expect("/fused", T, |m| {
        m.json()["items"]["vision"]["id"] == "img-1"
    });
    let labels = sub.expect("/labels", T, |m| {
        m.json()["items"]["vision"]["id"] == "img-1"
    });
    let got = [
        ("embedding_text", text),
        ("embedding_vision", vision),
        ("fused", fused),
        ("labels", labels),
    ];

    let dir = repo().join("tests/fixtures/payloads");
    let bless = std::env::var_os("EDGEFUSE_BLESS").is_some();
    let mut problems = Vec::new();
    for (name, msg) in got {
        let now = serde_json::json!({
            "topic": msg.topic,
            "content_type": msg.content_type,
            "payload": masked(msg.json()),
        });
        let path: PathBuf = dir.join(format!("{name}.json"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, serde_json::to_string_pretty(&now).unwrap() + "\n").unwrap();
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            problems.push(format!(
                "{} missing: run with EDGEFUSE_BLESS=1",
                path.display()
            ));
            continue;
        };
        let pinned: Value = serde_json::from_str(&text).unwrap();
        same(&pinned, &now, name, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "payloads differ from tests/fixtures/payloads ({} places):\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

/// `v` with timestamps and durations replaced by a marker.
fn masked(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| {
                    let volatile = k == "ts" || k.ends_with("_ms") || k.ends_with("_s");
                    let x = if volatile {
                        Value::String("<volatile>".into())
                    } else {
                        masked(x)
                    };
                    (k, x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(masked).collect()),
        other => other,
    }
}

/// Compare `want` and `got`, numbers to 1e-4 and the rest exactly; differences go to `out`.
fn same(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let keys_a: Vec<&String> = a.keys().collect();
            let keys_b: Vec<&String> = b.keys().collect();
            if keys_a != keys_b {
                out.push(format!("{path}: keys {keys_a:?} != {keys_b:?}"));
                return;
            }
            for (k, x) in a {
                same(x, &b[k], &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!("{path}: {} items != {}", a.len(), b.len()));
                return;
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (x, y) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            if (x - y).abs() > 1e-4 {
                out.push(format!("{path}: {a} != {b}"));
            }
        }
        _ if want != got => out.push(format!("{path}: {want} != {got}")),
        _ => {}
    }
}

#[test]
fn the_comparison_catches_a_changed_key_string_length_and_number() {
    let want = serde_json::json!({"a": 1, "s": "x", "v": [0.5, 0.25], "n": {"f": 0.1}});
    let mut out = Vec::new();
    same(&want, &want.clone(), "", &mut out);
    assert!(out.is_empty(), "{out:?}");
    for got in [
        serde_json::json!({"a": 1, "s": "y", "v": [0.5, 0.25], "n": {"f": 0.1}}),
        serde_json::json!({"a": 2, "s": "x", "v": [0.5, 0.25], "n": {"f": 0.1}}),
        serde_json::json!({"a": 1, "s": "x", "v": [0.5], "n": {"f": 0.1}}),
        serde_json::json!({"a": 1, "s": "x", "v": [0.5, 0.25], "n": {"f": 0.2}}),
        serde_json::json!({"b": 1, "s": "x", "v": [0.5, 0.25], "n": {"f": 0.1}}),
    ] {
        let mut out = Vec::new();
        same(&want, &got, "", &mut out);
        assert_eq!(out.len(), 1, "{got}: {out:?}");
    }
    // Durations and timestamps are masked, nothing else.
    let m = masked(serde_json::json!({"ts": "now", "age_ms": 3.2, "id": "t-1"}));
    assert_eq!(
        m,
        serde_json::json!({"ts": "<volatile>", "age_ms": "<volatile>", "id": "t-1"})
    );
}
