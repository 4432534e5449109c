//! The shared semantic space over MQTT, against a real mosquitto on loopback with the
//! mosquitto_pub/mosquitto_sub clients: `semantic` in records, zero-shot words (config and
//! `zero_shot/set`), the search index answering `query`, bad queries, and a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{self, publish, Broker, Daemon, Sub, TEXT_ONLY};

const T: Duration = Duration::from_secs(60);

/// Text only (faster starts), `device_id = "test"`, with `extra` appended.
fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    util::write_config(
        dir,
        "test",
        &format!(
            "{TEXT_ONLY}[stats]\ninterval_s = 0\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n{extra}\n"
        ),
    )
}

fn text(port: u16, id: &str, text: &str) {
    let body = serde_json::json!({ "id": id, "text": text }).to_string();
    publish(port, "edgefuse/test/in/text", &["-m", &body]);
}

fn ids(result: &serde_json::Value) -> Vec<String> {
    result["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {result}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Four texts about different things, each awaited on `embedding/text`.
const ITEMS: [(&str, &str); 4] = [
    ("t-kettle", "The kettle is boiling in the kitchen."),
    (
        "t-rain",
        "Heavy rain and strong wind are forecast for tomorrow.",
    ),
    ("t-cat", "A cat is sleeping on the sofa."),
    ("t-car", "The car needs new tyres before the trip."),
];

#[test]
fn a_sentence_finds_the_matching_item_first_and_the_index_survives_a_restart() {
    let broker = Broker::any();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        broker.port,
        "[fusion.zero_shot]\nwords = [\"weather\", \"cooking\", \"animal\"]\n",
    );
    let mut sub = Sub::start(broker.port, "#");
    let daemon = Daemon::start(&config);
    sub.expect("edgefuse/test/available", T, |m| m.payload == "online");

    for (id, t) in ITEMS {
        text(broker.port, id, t);
        let e = sub
            .expect("/embedding/text", T, |m| m.json()["id"] == id)
            .json();
        // Text's semantic vector is its embedding, in the named space.
        let space = e["semantic"]["space"].as_str().unwrap();
        assert!(space.starts_with("all-MiniLM-L6-v2@"), "{space}");
        assert_eq!(e["semantic"]["vector"], e["vector"]);
        let f = sub
            .expect("/fused", T, |m| m.json()["items"]["text"]["id"] == id)
            .json();
        assert_eq!(f["semantic"]["vector"].as_array().unwrap().len(), 384);
        // The configured words, scored on the item, best first.
        let l = sub
            .expect("/labels", T, |m| m.json()["words"]["item"] == id)
            .json();
        let scores = l["words"]["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 3, "{l}");
        let best = scores[0]["label"].as_str().unwrap();
        let want = match id {
            "t-rain" => Some("weather"),
            "t-kettle" => Some("cooking"),
            "t-cat" => Some("animal"),
            _ => None,
        };
        if let Some(w) = want {
            assert_eq!(best, w, "{l}");
        }
        assert!(scores[0]["score"].as_f64() >= scores[1]["score"].as_f64());
    }

    // JSON query with a response topic and correlation data (MQTT 5).
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"text": "will it rain tomorrow?", "k": 2}"#,
            "-D",
            "publish",
            "response-topic",
            "replies/q",
            "-D",
            "publish",
            "correlation-data",
            "q-1",
        ],
    );
    let reply = sub.expect("replies/q", T, |_| true);
    assert_eq!(reply.correlation, "q-1");
    let r = reply.json();
    assert_eq!(ids(&r)[0], "t-rain", "{r}");
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    assert_eq!(r["searched"], 4);
    assert_eq!(r["results"][0]["modality"], "text");
    assert_eq!(r["results"][0]["source"], "mqtt");
    assert!(
        r["results"][0].get("text").is_none(),
        "the text is not stored by default: {r}"
    );
    let s0 = r["results"][0]["score"].as_f64().unwrap();
    let s1 = r["results"][1]["score"].as_f64().unwrap();
    assert!(s0 > s1, "{r}");

    // Plain text, no response topic: the fixed result topic.
    publish(
        broker.port,
        "edgefuse/test/query",
        &["-m", "a pet taking a nap"],
    );
    let r = sub.expect("/query/result", T, |_| true).json();
    assert_eq!(ids(&r)[0], "t-cat", "{r}");
    assert_eq!(r["k"], 5);
    assert_eq!(r["query"], "a pet taking a nap");

    // Filters: nothing but text is indexed, and nothing is from the future.
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"id": "q-img", "text": "a cat", "modality": "image"}"#,
        ],
    );
    let r = sub
        .expect("/query/result", T, |m| m.json()["id"] == "q-img")
        .json();
    assert!(ids(&r).is_empty(), "{r}");
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"id": "q-late", "text": "a cat", "since": "2100-01-01T00:00:00Z"}"#,
        ],
    );
    let r = sub
        .expect("/query/result", T, |m| m.json()["id"] == "q-late")
        .json();
    assert!(ids(&r).is_empty(), "{r}");

    // Bad queries: each answered on `error`, and the daemon keeps answering.
    let huge = dir.path().join("huge.txt");
    std::fs::write(&huge, "a".repeat(20_000)).unwrap();
    let huge = huge.display().to_string();
    let bad: [(&str, &[&str], &str); 5] = [
        ("bad-empty", &["-n"], "empty query"),
        ("bad-huge", &["-f", &huge], "exceeds"),
        (
            "bad-type",
            &["-m", r#"{"text": 5}"#],
            "malformed query JSON",
        ),
        (
            "bad-json",
            &["-m", "{\"text\": \"x\""],
            "malformed query JSON",
        ),
        (
            "bad-k",
            &["-m", r#"{"text": "x", "k": "five"}"#],
            "query field k",
        ),
    ];
    for (id, args, reason) in bad {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-D", "publish", "correlation-data", id]);
        publish(broker.port, "edgefuse/test/query", &a);
        let e = sub.expect("/error", T, |m| m.json()["id"] == id).json();
        assert_eq!(e["topic"], "edgefuse/test/query");
        assert!(e["reason"].as_str().unwrap().contains(reason), "{id}: {e}");
    }
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"id": "q-after", "text": "boiling water for tea"}"#,
        ],
    );
    let r = sub
        .expect("/query/result", T, |m| m.json()["id"] == "q-after")
        .json();
    assert_eq!(ids(&r)[0], "t-kettle", "{r}");
    assert_eq!(r["searched"], 4, "nothing lost: {r}");

    // New words over MQTT replace the configured ones and are announced.
    publish(
        broker.port,
        "edgefuse/test/zero_shot/set",
        &["-m", r#"["vehicle", "pet", "kitchen"]"#],
    );
    let w = sub.expect("/zero_shot/words", T, |_| true).json();
    assert_eq!(w["words"], serde_json::json!(["vehicle", "pet", "kitchen"]));
    publish(
        broker.port,
        "edgefuse/test/zero_shot/set",
        &[
            "-m",
            r#"{"words": 3}"#,
            "-D",
            "publish",
            "correlation-data",
            "bad-words",
        ],
    );
    let e = sub
        .expect("/error", T, |m| m.json()["id"] == "bad-words")
        .json();
    assert!(e["reason"].as_str().unwrap().contains("JSON list"), "{e}");
    text(broker.port, "t-truck", "A truck drives along the motorway.");
    let l = sub
        .expect("/labels", T, |m| m.json()["words"]["item"] == "t-truck")
        .json();
    assert_eq!(l["words"]["scores"][0]["label"], "vehicle", "{l}");

    assert!(daemon.terminate().success());
    assert!(dir.path().join("state/semantic-index.bin").exists());

    // After a restart: the five items are still found, and the words set over MQTT stay.
    let daemon = Daemon::start(&config);
    sub.expect("edgefuse/test/available", T, |m| m.payload == "online");
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"id": "q-restart", "text": "heavy lorry on the highway"}"#,
        ],
    );
    let r = sub
        .expect("/query/result", T, |m| m.json()["id"] == "q-restart")
        .json();
    assert_eq!(ids(&r)[0], "t-truck", "{r}");
    assert_eq!(r["searched"], 5, "{r}");
    text(broker.port, "t-dog", "My dog loves long walks in the park.");
    let l = sub
        .expect("/labels", T, |m| m.json()["words"]["item"] == "t-dog")
        .json();
    assert_eq!(l["words"]["scores"][0]["label"], "pet", "{l}");
    assert!(daemon.terminate().success());
}

#[test]
fn without_the_semantic_space_records_are_unchanged_and_queries_are_refused() {
    let broker = Broker::any();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "[shared_space]\nenabled = false\n");
    let mut sub = Sub::start(broker.port, "edgefuse/test/#");
    let daemon = Daemon::start(&config);
    sub.expect("available", T, |m| m.payload == "online");
    text(broker.port, "t-1", "hello there");
    let e = sub.expect("/embedding/text", T, |_| true).json();
    assert!(e.get("semantic").is_none(), "{e}");
    let f = sub.expect("/fused", T, |_| true).json();
    assert!(f.get("semantic").is_none(), "{f}");
    publish(
        broker.port,
        "edgefuse/test/query",
        &["-m", "hello", "-D", "publish", "correlation-data", "q-off"],
    );
    let err = sub
        .expect("/error", T, |m| m.json()["id"] == "q-off")
        .json();
    assert!(
        err["reason"]
            .as_str()
            .unwrap()
            .contains("semantic search is disabled"),
        "{err}"
    );
    assert!(!dir.path().join("state/semantic-index.bin").exists());
    assert!(daemon.terminate().success());
}
