//! The daemon against a real mosquitto on loopback, driven by the independent mosquitto_pub
//! and mosquitto_sub clients; and the embedded broker.

use crate::util::{fixture_path as fixture, free_port, Daemon, Harness, Sub, T};

/// Every daemon here publishes stats every second.
const STATS_EVERY_SECOND: &str = "[stats]\ninterval_s = 1\n";

/// A daemon (`mqtt_extra` in its `[mqtt]` table) started on a fresh broker, and a subscriber
/// on `filter` that has seen it come online on `available`.
fn started(mqtt_extra: &str, filter: &str, available: &str) -> (Harness, Sub) {
    let mut h = Harness::new(STATS_EVERY_SECOND, mqtt_extra);
    let mut sub = h.sub(filter);
    h.start();
    sub.expect(available, T, |m| m.payload == "online");
    (h, sub)
}

/// The fixture file at `rel` on `topic`, with MQTT 5 correlation data.
fn publish_file(h: &Harness, topic: &str, rel: &str, correlation: &str) {
    let path = fixture(rel);
    h.publish(
        topic,
        &[
            "-f",
            &path,
            "-D",
            "publish",
            "correlation-data",
            correlation,
        ],
    );
}

fn unit_norm(v: &serde_json::Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn every_topic_round_trips_through_mosquitto() {
    let (mut h, mut sub) = started("", "#", "edgefuse/test/available");

    // Text, as JSON with an id; the result carries it.
    h.publish(
        "edgefuse/test/in/text",
        &["-m", r#"{"id":"t-1","text":"The cat sits on the mat."}"#],
    );
    let e = sub.expect("embedding/text", T, |_| true).json();
    assert_eq!(e["id"], "t-1");
    assert_eq!(e["schema"], 1);
    assert_eq!(e["dim"], 384);
    assert_eq!(e["model"]["name"], "all-MiniLM-L6-v2");
    assert_eq!(e["model"]["sha256"].as_str().unwrap().len(), 12);
    assert!((unit_norm(&e["vector"]) - 1.0).abs() < 1e-3);
    for stage in ["queue", "preprocess", "inference", "postprocess", "total"] {
        assert!(e["timings_ms"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
    let f = sub.expect("/fused", T, |_| true).json();
    assert_eq!(f["items"]["text"]["id"], "t-1");

    // Image with MQTT 5 correlation data and a response topic.
    h.publish(
        "edgefuse/test/in/image",
        &[
            "-f",
            &fixture("tests/fixtures/images/chelsea.jpg"),
            "-D",
            "publish",
            "correlation-data",
            "img-42",
            "-D",
            "publish",
            "response-topic",
            "replies/me",
        ],
    );
    let e = sub.expect("embedding/vision", T, |_| true);
    assert_eq!(e.json()["id"], "img-42");
    assert_eq!(e.content_type, "application/json");
    let reply = sub.expect("replies/me", T, |_| true);
    assert_eq!(reply.correlation, "img-42");
    assert_eq!(reply.json()["dim"], 384);
    let f = sub
        .expect("/fused", T, |m| {
            m.json()["items"]["vision"]["id"] == "img-42"
        })
        .json();
    assert_eq!(
        f["items"]["text"]["id"], "t-1",
        "text and image fused within the window"
    );
    assert_eq!(f["dim"], 384 + 384 + 512);

    // Audio.
    h.publish(
        "edgefuse/test/in/audio",
        &["-f", &fixture("tests/fixtures/audio/speech_fox.wav")],
    );
    let e = sub.expect("embedding/audio", T, |_| true).json();
    assert_eq!(e["dim"], 512);
    assert_eq!(e["blocks"], 1);

    // Bad payloads are answered on `error` with the id and the input topic.
    h.publish(
        "edgefuse/test/in/image",
        &[
            "-m",
            "not an image",
            "-D",
            "publish",
            "correlation-data",
            "bad-1",
        ],
    );
    let err = sub.expect("/error", T, |_| true).json();
    assert_eq!(err["id"], "bad-1");
    assert_eq!(err["topic"], "edgefuse/test/in/image");
    assert!(err["reason"].as_str().unwrap().contains("image"), "{err}");
    h.publish("edgefuse/test/in/text", &["-m", "{\"text\": 5}"]);
    let err = sub.expect("/error", T, |_| true).json();
    assert!(
        err["reason"].as_str().unwrap().contains("malformed JSON"),
        "{err}"
    );
    h.publish(
        "edgefuse/test/in/audio",
        &["-f", &fixture("tests/fixtures/audio/truncated.wav")],
    );
    let err = sub.expect("/error", T, |_| true).json();
    assert!(
        err["reason"].as_str().unwrap().contains("truncated WAV"),
        "{err}"
    );
    h.publish("edgefuse/test/in/video", &["-m", "x"]);
    let err = sub.expect("/error", T, |_| true).json();
    assert!(
        err["reason"].as_str().unwrap().contains("unknown topic"),
        "{err}"
    );

    // Periodic stats.
    let s = sub
        .expect("/stats", T, |m| {
            m.json()["modalities"]["text"]["items"].as_u64() >= Some(1)
        })
        .json();
    assert!(s["rss_bytes"].as_u64().unwrap() > 0);
    assert!(
        s["modalities"]["vision"]["latency_ms"]["inference"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(s["modalities"]["vision"]["errors"].as_u64().unwrap() >= 1);

    // A clean stop says so and exits 0.
    let status = h.stop();
    assert!(status.success(), "{status}");
    sub.expect("edgefuse/test/available", T, |m| m.payload == "stopped");
}

#[test]
fn last_will_says_offline_when_the_daemon_dies() {
    let (mut h, mut sub) = started("keepalive_s = 5", "edgefuse/test/available", "available");
    h.kill();
    sub.expect("available", T, |m| m.payload == "offline");
}

#[test]
fn enrolled_labels_survive_a_restart_and_can_be_forgotten() {
    let (mut h, mut sub) = started("", "edgefuse/test/#", "available");
    publish_file(
        &h,
        "edgefuse/test/enroll/cat",
        "tests/fixtures/images/chelsea_exif6.jpg",
        "ex-cat",
    );
    let ack = sub.expect("/enrolled", T, |_| true).json();
    assert_eq!(
        (
            ack["label"].as_str(),
            ack["modality"].as_str(),
            ack["examples"].as_u64()
        ),
        (Some("cat"), Some("vision"), Some(1))
    );
    publish_file(
        &h,
        "edgefuse/test/enroll/rocket",
        "tests/fixtures/images/rocket.jpg",
        "ex-rocket",
    );
    sub.expect("/enrolled", T, |m| m.json()["label"] == "rocket");
    h.publish(
        "edgefuse/test/enroll/kitchen",
        &["-m", "turn on the kitchen lights"],
    );
    sub.expect("/enrolled", T, |m| m.json()["modality"] == "text");
    assert!(h.stop().success());
    assert!(h.dir.path().join("state/labels.json").exists());

    h.start();
    sub.expect("available", T, |m| m.payload == "online");
    publish_file(
        &h,
        "edgefuse/test/in/image",
        "tests/fixtures/images/chelsea.jpg",
        "q-1",
    );
    let labels = sub.expect("/labels", T, |_| true).json();
    let best = &labels["labels"][0];
    assert_eq!(best["label"], "cat", "{labels}");
    assert_eq!(best["modalities"]["vision"]["nearest"][0], "ex-cat");
    assert!(best["score"].as_f64().unwrap() > labels["labels"][1]["score"].as_f64().unwrap());
    assert_eq!(labels["items"]["vision"]["id"], "q-1");

    h.publish("edgefuse/test/forget/cat", &["-n"]);
    let gone = sub.expect("/forgotten", T, |_| true).json();
    assert_eq!(
        (gone["label"].as_str(), gone["existed"].as_bool()),
        (Some("cat"), Some(true))
    );
    h.publish(
        "edgefuse/test/in/image",
        &["-f", &fixture("tests/fixtures/images/chelsea.jpg")],
    );
    let labels = sub.expect("/labels", T, |_| true).json();
    assert!(
        labels["labels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["label"] != "cat"),
        "{labels}"
    );
    assert!(h.stop().success());
}

#[test]
fn f16_payloads_carry_metadata_in_user_properties() {
    let mut h = Harness::new(STATS_EVERY_SECOND, "payload = \"f16\"");
    // Hex payload and user properties for the binary topic.
    let mut binary = Sub::start_formatted(
        h.port(),
        "edgefuse/test/embedding/text",
        &["-V", "5"],
        "%C|%P|%x",
    );
    let mut sub = h.sub("edgefuse/test/available");
    h.start();
    sub.expect("available", T, |m| m.payload == "online");
    h.publish("edgefuse/test/in/text", &["-m", "hello f16"]);
    let line = binary.line(T).expect("an f16 embedding");
    let mut parts = line.trim().splitn(3, '|');
    let (ct, props, hex) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    assert_eq!(ct, "application/x-edgefuse-f16");
    assert!(
        props.contains("dim:384") && props.contains("model:all-MiniLM-L6-v2"),
        "{props}"
    );
    assert_eq!(hex.len(), 384 * 2 * 2, "384 f16 values as hex");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let v = edgefuse::mqtt::payload::from_f16_le(&bytes);
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-2, "{n}");
    assert!(h.stop().success());
}

#[test]
fn embedded_broker_serves_plain_mosquitto_clients() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::util::write_config(
        dir.path(),
        "test",
        &format!(
            "{STATS_EVERY_SECOND}[mqtt]\nbroker = \"embedded\"\n\
             embedded_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    let daemon = Daemon::start(&config);
    crate::util::wait_port(port, T);
    // MQTT 3.1.1 clients, as a new user would run them.
    let mut sub = Sub::start_formatted(port, "edgefuse/test/embedding/text", &[], "%p");
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "edgefuse/test/in/text",
            "-m",
            "hello embedded",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let line = sub.line(T).expect("an embedding");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON embedding");
    assert_eq!(v["dim"], 384);

    // A second daemon on the same port fails with a clear message naming the port.
    let second = Daemon::command(&config).output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("already in use"),
        "{err}"
    );
    assert!(daemon.terminate().success());
}
