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

/// Every duration in `v` (keys ending `_ms` or `_s`, and everything under one) has at most three
/// decimals: whole microseconds or milliseconds, not timer noise like `0.011016999999999999`.
fn assert_durations_rounded(v: &serde_json::Value, what: &str) {
    fn walk(v: &serde_json::Value, in_duration: bool, path: &str, what: &str) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let d = in_duration || k.ends_with("_ms") || k.ends_with("_s");
                    walk(x, d, &format!("{path}.{k}"), what);
                }
            }
            serde_json::Value::Number(n) if in_duration => {
                let x = n.as_f64().unwrap();
                assert_eq!(x, (x * 1e3).round() / 1e3, "{what}{path} = {n} not rounded");
            }
            _ => {}
        }
    }
    walk(v, false, "", what);
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
    assert!(f["items"]["text"]["age_ms"].as_f64().unwrap() > 0.0);
    assert_durations_rounded(&f, "fused");
    assert_durations_rounded(&e.json(), "embedding/vision");

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
    assert_durations_rounded(&s, "stats");
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

/// A stop asked during start-up is a clean exit, never SIGTERM's default action (which killed
/// the daemon when the signal came before the first `recv`): while the models load it stops at
/// once; once connected, start-up finishes and the usual graceful stop follows.
#[test]
fn sigterm_during_start_up_is_a_clean_stop() {
    let h = Harness::new("", "");
    let started = |log_path: &std::path::Path| {
        let log_file = std::fs::File::create(log_path).unwrap();
        Daemon::start_with(&h.config, |c| {
            c.stderr(log_file);
        })
    };
    let log_has = |log_path: &std::path::Path, what: &str| {
        crate::util::wait_for(
            &format!("`{what}` in the log"),
            T,
            std::time::Duration::from_millis(10),
            || {
                std::fs::read_to_string(log_path)
                    .ok()
                    .filter(|l| l.contains(what))
            },
        )
    };

    // Start a daemon, SIGTERM it once its log says `when`: it exits 0; its log.
    let stopped_at = |name: &str, when: &str| {
        let path = h.dir.path().join(name);
        let daemon = started(&path);
        log_has(&path, when);
        let status = daemon.terminate();
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(status.success(), "{status}\n{log}");
        log
    };

    // The handlers are in place when `starting` is logged; the models load after it.
    let log = stopped_at("loading.log", "starting:");
    assert!(log.contains("shutdown asked while loading models"), "{log}");
    assert!(!log.contains("connected to the MQTT broker"), "{log}");

    // Connected, still starting (lone runs to measure, class names to embed): a graceful stop.
    let log = stopped_at("connected.log", "connected to the MQTT broker");
    assert!(log.contains("stopped clean=true"), "{log}");
}

/// `encoders.model_loading = "sequential"` (what a small board gets): the models load one after
/// the other, every one of them, and the daemon answers each modality as usual.
#[test]
fn models_loaded_one_at_a_time_serve_every_modality() {
    let mut h = Harness::new("[encoders]\nmodel_loading = \"sequential\"\n", "");
    let log_path = h.dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut sub = h.sub("edgefuse/test/embedding/#");
    h.start_with(|c| {
        c.stderr(log_file);
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("models load one at a time (encoders.model_loading = \"sequential\""),
        "{log}"
    );
    for model in [
        "text model: ",
        "vision model: ",
        "audio model: ",
        "classifier model: ",
    ] {
        assert!(log.contains(model), "{model} missing:\n{log}");
    }
    h.publish(
        "edgefuse/test/in/text",
        &["-m", r#"{"id":"t","text":"one at a time"}"#],
    );
    h.publish(
        "edgefuse/test/in/image",
        &["-f", &fixture("tests/fixtures/images/chelsea.jpg")],
    );
    h.publish(
        "edgefuse/test/in/audio",
        &["-f", &fixture("tests/fixtures/audio/speech_fox.wav")],
    );
    // In whatever order they finish.
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 3 {
        let m = sub.expect("", T, |m| m.topic.contains("/embedding/"));
        let n = m.json()["vector"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "{}: {}", m.topic, m.payload);
        answered.insert(m.json()["modality"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        answered,
        ["audio", "text", "vision"].map(String::from).into()
    );
    assert!(h.stop().success());
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
    // Enrolls are appended to the label log; the snapshot comes with the first compaction.
    assert!(h.dir.path().join("state/labels.json.log").exists());

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
    let dir = tempfile::tempdir().unwrap();
    let (port, config) = crate::util::write_embedded_config(dir.path(), STATS_EVERY_SECOND);
    let daemon = Daemon::start(&config);
    crate::util::wait_port(port, T);
    // The daemon subscribes before it says `online`; a QoS 0 input sent before that is lost by
    // MQTT's rules (the broker may listen before the daemon's own client has connected).
    let mut available = Sub::start_with(port, "edgefuse/test/available", &[]);
    available.expect("available", T, |m| m.payload == "online");
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

/// Issue 16, items 2 and 3: at the default log level the daemon says what it runs, where to
/// publish and when it is ready; and a subscriber on the embedded broker right after start sees
/// `online`, never a retained `offline` first.
#[test]
fn a_fresh_start_says_what_it_runs_and_shows_online_only() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (port, config) = crate::util::write_embedded_config(dir.path(), STATS_EVERY_SECOND);
    // No --log and no EDGEFUSE_LOG: the default filter.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgefuse"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("EDGEFUSE_MODELS", crate::util::models_dir())
        .env_remove("EDGEFUSE_LOG")
        .env_remove("EDGEFUSE_LOG_FORMAT")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let daemon = Daemon { child };
    crate::util::wait_port(port, T);
    // As soon as the broker listens: a plain MQTT 3.1.1 subscriber, as a user would start it.
    let mut sub = Sub::start_with(port, "edgefuse/test/available", &[]);
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while !lines.iter().any(|l: &String| l.contains("ready:")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("no `ready` line; stderr so far:\n{}", lines.join("\n")),
        }
    }
    sub.expect("available", T, |m| m.payload == "online");
    // Anything but `online` the subscriber gets within a second (a late `offline`, say) is a
    // flap. A second `online` alone is the embedded broker handing a subscription made while
    // the daemon's one publish was in flight both the retained copy and the live one (seen in
    // CI on 2026-12-02 with one connection in the log; as in `early_subscribers_…` below), so
    // the connections are counted in the log instead.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let later: Vec<String> = sub.drain().into_iter().map(|m| m.payload).collect();
    assert!(
        later.iter().all(|p| p == "online"),
        "after online: {later:?}"
    );
    assert!(
        !sub.seen.iter().any(|l| l.ends_with("|offline")),
        "{:?}",
        sub.seen
    );

    let text = lines.join("\n");
    assert_eq!(
        text.matches(": connected to the MQTT broker").count(),
        1,
        "one connection, no flap:\n{text}"
    );
    let want = [
        format!(
            "edgefuse {} starting: device id test",
            env!("CARGO_PKG_VERSION")
        ),
        format!("MQTT broker: embedded, for clients on 127.0.0.1:{port}"),
        "text model: text-w8 (all-MiniLM-L6-v2".to_owned(),
        "vision model: vision-tokens200-w8 (".to_owned(),
        "audio model: audio-pruned75 (".to_owned(),
        "ready: publish to edgefuse/test/in/text, edgefuse/test/in/image, edgefuse/test/in/audio"
            .to_owned(),
    ];
    for w in &want {
        assert!(text.contains(w.as_str()), "missing {w:?} in:\n{text}");
    }
    // Plain text at the default level, no warnings, and short: a summary, not a trace.
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");
    assert!(lines.len() <= 20, "{} lines:\n{text}", lines.len());
    assert!(daemon.terminate().success());
}

/// Issue 16, item 3: with the embedded broker, subscribers that connect over and over from the
/// moment the daemon starts (as Home Assistant does when it comes up beside it) only ever see
/// `online` on the availability topic: never a retained `offline` (the last will of a first
/// connection that went away) before or after it. Several fresh starts
/// (`EDGEFUSE_TEST_FLAP_STARTS`, default 4), each with a new state dir and the text encoder only
/// (the flap came from the MQTT client's first seconds, not from the models: a timer that fired
/// while rumqttc was connecting dropped that connection half made, and the broker published its
/// last will), with four loops of short-lived plain MQTT 3.1.1 subscribers and one long-lived
/// one.
#[test]
fn early_subscribers_on_the_embedded_broker_never_see_offline() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let starts: usize = std::env::var("EDGEFUSE_TEST_FLAP_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for start in 0..starts {
        let dir = tempfile::tempdir().unwrap();
        let (port, config) = crate::util::write_embedded_config(
            dir.path(),
            &format!("{}{STATS_EVERY_SECOND}", crate::util::TEXT_ONLY),
        );
        let log_path = dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log_path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Every message any subscriber got, and how many subscribers got through.
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let subscribed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let loops: Vec<_> = (0..4)
            .map(|_| {
                let (stop, seen, subscribed) = (stop.clone(), seen.clone(), subscribed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Until the broker listens this fails at once; after, it prints the
                        // retained value (if any) and exits, or gives up after a second.
                        let out = std::process::Command::new("mosquitto_sub")
                            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                            .args(["-t", "edgefuse/test/available", "-v", "-C", "1", "-W", "1"])
                            .stderr(std::process::Stdio::null())
                            .output()
                            .expect("mosquitto_sub is installed");
                        let text = String::from_utf8_lossy(&out.stdout).into_owned();
                        // Exit 0: a message; 27: the -W timeout (connected, nothing retained).
                        if out.status.success() || out.status.code() == Some(27) {
                            subscribed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        let mut s = seen.lock().unwrap();
                        s.extend(text.lines().map(str::to_owned));
                    }
                })
            })
            .collect();
        let daemon = Daemon::start_with(&config, |c| {
            c.stderr(log_file);
        });
        crate::util::wait_port(port, T);
        let mut sub = Sub::start_with(port, "edgefuse/test/available", &[]);
        sub.expect("available", T, |m| m.payload == "online");
        crate::util::wait_for(
            "the `ready` line",
            T,
            std::time::Duration::from_millis(100),
            || {
                std::fs::read_to_string(&log_path)
                    .ok()
                    .filter(|l| l.contains("ready:"))
            },
        );
        // A late flap (the first connection dropped after a while) would show in these seconds.
        std::thread::sleep(std::time::Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            l.join().unwrap();
        }
        let later: Vec<String> = sub.drain().into_iter().map(|m| m.payload).collect();
        let seen = seen.lock().unwrap().clone();
        let log = std::fs::read_to_string(&log_path).unwrap();
        eprintln!(
            "start {start}: {} short-lived subscribers got through, {} messages",
            subscribed.load(Ordering::Relaxed),
            seen.len()
        );
        assert!(
            !seen.iter().any(|l| l.ends_with(" offline")),
            "start {start}: a subscriber saw offline: {seen:?}\ndaemon log:\n{log}"
        );
        // A flap would bring `offline` (the will) before a second `online`. A second `online`
        // alone is the embedded broker handing a subscription made while the daemon's one
        // publish was in flight both the retained copy and the live one (seen once in 2026-12,
        // with one connection in the daemon log).
        assert!(
            later.iter().all(|p| p == "online")
                && !sub.seen.iter().any(|l| l.ends_with("|offline")),
            "start {start}: {:?} then {later:?}\ndaemon log:\n{log}",
            sub.seen
        );
        assert_eq!(
            log.matches(": connected to the MQTT broker").count(),
            1,
            "start {start}: one connection, no flap\ndaemon log:\n{log}"
        );
        assert!(
            seen.iter().any(|l| l == "edgefuse/test/available online"),
            "start {start}: no short-lived subscriber saw online: {seen:?}"
        );
        assert!(!log.contains("reconnect"), "{log}");
        assert!(daemon.terminate().success());
    }
}

/// A config for the label and stats checks: `stats_s` apart, the rest as `write_config`.
fn write_config_stats(dir: &std::path::Path, port: u16, stats_s: u64) -> std::path::PathBuf {
    let p = dir.join("edgefuse.toml");
    std::fs::write(
        &p,
        format!(
            "device_id = \"test\"\nstate_dir = \"{}\"\n[models]\ndir = \"{}\"\n\
             [stats]\ninterval_s = {stats_s}\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n",
            dir.join("state").display(),
            crate::util::models_dir().display()
        ),
    )
    .unwrap();
    p
}

/// Issue 16, item 8: `labels` follows every fused record once a label exists, with an empty
/// list when nothing matches (Home Assistant then shows `none`, not the previous label); and
/// `stats` comes right after connecting, not one `stats.interval_s` later.
#[test]
fn labels_follow_every_fused_record_and_stats_come_at_connect() {
    let broker = crate::util::Broker::any();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_stats(dir.path(), broker.port, 3600);
    let mut sub = Sub::start(broker.port, "edgefuse/test/#");
    let daemon = Daemon::start(&config);
    // Both come at connect, in either order (two tasks publish them).
    let (mut stats, mut online) = (None, false);
    while stats.is_none() || !online {
        let m = sub.expect("", std::time::Duration::from_secs(20), |m| {
            m.topic.ends_with("/stats")
                || (m.topic.ends_with("/available") && m.payload == "online")
        });
        if m.topic.ends_with("/stats") {
            stats = Some(m.json());
        } else {
            online = true;
        }
    }
    let s = stats.unwrap();
    assert!(s["uptime_s"].as_f64().unwrap() < 60.0, "{s}");
    assert_eq!(s["fusion"]["labels"], 0, "{s}");

    // No label yet: `fused` only.
    crate::util::publish(
        broker.port,
        "edgefuse/test/in/text",
        &["-m", "before any label"],
    );
    sub.expect("/fused", T, |_| true);
    crate::util::publish(
        broker.port,
        "edgefuse/test/enroll/cat",
        &["-f", &fixture("tests/fixtures/images/chelsea_exif6.jpg")],
    );
    sub.expect("/enrolled", T, |m| m.json()["label"] == "cat");
    crate::util::publish(
        broker.port,
        "edgefuse/test/in/image",
        &["-f", &fixture("tests/fixtures/images/chelsea.jpg")],
    );
    let l = sub.expect("/labels", T, |_| true).json();
    assert_eq!(l["labels"][0]["label"], "cat", "{l}");
    // Text in another group: no vision in its window, so no label matches; `labels` still
    // comes, empty.
    crate::util::publish(
        broker.port,
        "edgefuse/test/in/text",
        &[
            "-m",
            r#"{"id":"t-x","text":"nothing like a cat","group":"hall"}"#,
        ],
    );
    let f = sub
        .expect("/fused", T, |m| m.json()["group"] == "hall")
        .json();
    let l = sub
        .expect("/labels", T, |m| m.json()["group"] == "hall")
        .json();
    assert_eq!(l["id"], f["id"]);
    assert_eq!(l["labels"], serde_json::json!([]), "{l}");
    assert_eq!(l["items"]["text"]["id"], "t-x");
    // Before the first enroll there was no `labels` record at all.
    let first_labels = sub.seen.iter().position(|x| x.contains("/labels|"));
    let enrolled = sub.seen.iter().position(|x| x.contains("/enrolled|"));
    assert!(first_labels > enrolled, "{:?}", sub.seen);
    assert!(daemon.terminate().success());
}

/// Bytes of every file under `dir`, except the compiled-model cache (written once at start).
fn state_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "compiled") {
            continue;
        }
        match e.metadata() {
            Ok(m) if m.is_dir() => total += state_bytes(&p),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

/// The next message on which `done` holds (JSON, or the payload as a JSON string), counting
/// `error` records on the way.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
    errors: &mut Vec<serde_json::Value>,
    what: &str,
    done: impl Fn(&str, &serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let (t, p) = tokio::time::timeout(std::time::Duration::from_secs(120), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("the listener runs");
        let v = serde_json::from_slice(&p)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&p).into()));
        if t.ends_with("/error") {
            errors.push(v.clone());
        }
        if done(&t, &v) {
            return v;
        }
    }
}

/// `VmHWM` (peak resident set) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    kb * 1024
}

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Issue 16, item 5: a flood of distinct fusion groups, request ids and labels, far beyond the
/// limits (16 groups, 8 labels, 2 examples), goes through the real daemon on a real mosquitto,
/// and leaves its memory (peak RSS) and state directory bounded, its counters honest, its log
/// short (every limit logs at most once a minute, repeated refusals at most once a second), and
/// the daemon answering.
///
/// Each input and each enroll is really embedded, which bounds how many fit in a test run.
/// `EDGEFUSE_TEST_FLOOD` sets the number of inputs, each with its own id and group, and as many
/// enrolls of distinct labels; the default (3000) keeps `cargo test` short, and tests/run runs
/// it with 100000 as its own step. The cheapest input that still takes the whole path: texts cut
/// to two tokens (`encoders.text.max_length = 2`), vision and audio off, no spool (results go
/// out at QoS 0), rounds of 250 inputs + 250 enrolls published back to back while at most one
/// earlier round is still being worked on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard serialises this whole test against the other heavy ones; holding it across awaits is
// the point.
#[allow(clippy::await_holding_lock)]
async fn distinct_groups_labels_and_ids_keep_memory_and_disk_bounded() {
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    const ROUND: usize = 250;
    let count: usize = std::env::var("EDGEFUSE_TEST_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
        .max(4 * ROUND);
    let (max_groups, max_labels, max_examples) = (16u64, 8u64, 2u64);
    let port = free_port();
    let _exclusive = crate::util::exclusive();
    let broker = crate::util::Broker::start(port, "max_queued_messages 0");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("edgefuse.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"test\"\nstate_dir = \"{}\"\n[models]\ndir = \"{}\"\n\
             [encoders.text]\nmax_batch = 64\nmax_length = 2\n\
             [encoders.vision]\nenabled = false\n[encoders.audio]\nenabled = false\n\
             [queues]\ntext = 256\n\
             [fusion]\nmax_groups = {max_groups}\nmax_labels = {max_labels}\n\
             max_examples = {max_examples}\n\
             [spool]\nenabled = false\n[homeassistant]\nenabled = false\n\
             [shared_space.index]\nmax_items = 16\n\
             [stats]\ninterval_s = 1\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n",
            state.display(),
            crate::util::models_dir().display()
        ),
    )
    .unwrap();

    let (listener, mut rx) =
        crate::util::mqtt::listener(MqttOptions::new("flood-listener", "127.0.0.1", port));
    for t in [
        "edgefuse/test/available",
        "edgefuse/test/stats",
        "edgefuse/test/error",
        "flood/reply",
    ] {
        listener.subscribe(t, QoS::AtLeastOnce).await.unwrap();
    }
    let log_path = dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let daemon = Daemon::start_with(&config, |c| {
        c.stderr(log_file);
    });
    let pid = daemon.child.id();

    let mut errors = Vec::new();
    let rx = &mut rx;
    let errors_seen = &mut errors;
    wait_for(rx, errors_seen, "online", |t, v| {
        t.ends_with("/available") && v == "online"
    })
    .await;
    let started = std::time::Instant::now();
    let cpu0 = cpu_seconds(pid);

    let (sender, mut sender_events) =
        AsyncClient::new(MqttOptions::new("flood-sender", "127.0.0.1", port), 256);
    tokio::spawn(async move { while sender_events.poll().await.is_ok() {} });
    // One round: inputs with their own id and group, and enrolls of new labels.
    let send = |from: usize, to: usize| {
        let sender = sender.clone();
        async move {
            for i in from..to {
                let body = format!(r#"{{"id":"id-{i}","text":"word {i}","group":"g-{i}"}}"#);
                sender
                    .publish("edgefuse/test/in/text", QoS::AtLeastOnce, false, body)
                    .await
                    .unwrap();
                sender
                    .publish(
                        format!("edgefuse/test/enroll/label-{i}"),
                        QoS::AtLeastOnce,
                        false,
                        format!("label {i}"),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    // Stats once `n` items (inputs + enrolls) are done. A reconnect would lose inputs in flight
    // (clean session) and the count would never come: say so instead of timing out.
    let done_at_least = |n: u64| {
        move |t: &str, v: &serde_json::Value| {
            if t.ends_with("/stats") {
                assert_eq!(v["mqtt"]["reconnects"], 0, "the daemon reconnected: {v}");
            }
            t.ends_with("/stats") && v["modalities"]["text"]["items"].as_u64() >= Some(n)
        }
    };

    // Rounds back to back, at most one round behind. The state after the first quarter (every
    // limit has acted many times over by then) is the baseline the rest must not grow.
    let mut sent = 0;
    let mut baseline = None;
    while sent < count {
        let next = (sent + ROUND).min(count);
        if sent >= ROUND {
            let behind = (2 * (sent - ROUND)) as u64;
            wait_for(rx, errors_seen, "a round", done_at_least(behind)).await;
        }
        send(sent, next).await;
        sent = next;
        if baseline.is_none() && sent >= count / 4 {
            let s = wait_for(rx, errors_seen, "a quarter", done_at_least(2 * sent as u64)).await;
            baseline = Some((peak_rss(pid), state_bytes(&state), sent));
            eprintln!("after {sent} inputs: {}", s["fusion"]);
        }
    }
    let total = 2 * count as u64;
    let refused = count as u64 - max_labels;
    wait_for(rx, errors_seen, "every input", done_at_least(total)).await;
    // The publisher may trail the workers' counters by a few records.
    let s2 = wait_for(rx, errors_seen, "the refusals", move |t, v| {
        t.ends_with("/stats") && v["fusion"]["enrolls_refused"].as_u64() == Some(refused)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let (rss1, disk1, at1) = baseline.expect("a baseline was taken");
    let (rss2, disk2) = (peak_rss(pid), state_bytes(&state));
    let f = &s2["fusion"];
    eprintln!(
        "{count} inputs and {count} enrolls in {elapsed:.0} s ({:.0} items/s; daemon CPU {cpu:.0} s, \
         {:.2} ms/item); peak RSS {} MiB after {at1} inputs -> {} MiB after {count}; \
         state {disk1} -> {disk2} bytes; {f}",
        total as f64 / elapsed,
        1000.0 * cpu / total as f64,
        rss1 >> 20,
        rss2 >> 20,
    );
    assert_eq!(s2["modalities"]["text"]["errors"], 0, "{s2}");
    assert_eq!(s2["modalities"]["text"]["drops"], 0, "{s2}");
    assert!(f["groups"].as_u64().unwrap() <= max_groups, "{f}");
    assert!(
        f["groups_evicted"].as_u64().unwrap() > 0,
        "distinct groups beyond the limit were evicted (groups gone stale first are dropped \
         unseen and not counted): {f}"
    );
    assert_eq!(f["labels"], max_labels, "{f}");
    assert_eq!(
        f["label_examples"], max_labels,
        "one example per label: {f}"
    );
    assert_eq!(f["enrolls_refused"], refused, "{f}");
    // Disk: 8 labels of one 384-d example each, snapshot plus log, and a 16-item index: well
    // under 200 kB, and not growing with the number of inputs.
    assert!(disk2 < 200_000, "{disk2}");
    assert!(disk2 <= disk1 + 50_000, "{disk1} -> {disk2}");
    // Memory: the last three quarters of the flood add no state; the peak may still move by
    // allocator noise (a leak of 100 bytes per item would add 15 MiB at 100,000).
    assert!(
        rss2 < rss1 + 16 * 1024 * 1024,
        "peak RSS grew from {} MiB to {} MiB",
        rss1 >> 20,
        rss2 >> 20
    );

    // Still answering: a new input is embedded and its reply comes back.
    sender
        .publish_with_properties(
            "edgefuse/test/in/text",
            QoS::AtLeastOnce,
            false,
            "still here",
            PublishProperties {
                response_topic: Some("flood/reply".into()),
                correlation_data: Some(Bytes::from("final")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reply = wait_for(rx, errors_seen, "the final reply", |t, _| {
        t == "flood/reply"
    })
    .await;
    assert_eq!(reply["dim"], 384, "{reply}");
    // Refused enrolls are answered on `error`. Without the spool (off here for speed) results
    // go out at QoS 0 and are dropped when rumqttc's request queue is full (docs/reliability.md),
    // so not every one arrives; each that does names the limit.
    assert!(!errors_seen.is_empty());
    for e in errors_seen.iter() {
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("the label store is full"), "{e}");
        assert!(
            e["topic"].as_str().unwrap().contains("/enroll/label-"),
            "{e}"
        );
    }
    assert!(daemon.terminate().success());
    drop(broker);

    // The log says when each limit acts, and stays short: limits log at most once a minute,
    // refusals and failed publishes at most once a second each (plus start and stop).
    let log = std::fs::read_to_string(&log_path).unwrap();
    for want in [
        "fusion.max_groups (16) reached",
        "enroll refused",
        "semantic index compacted",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
    let lines = log.lines().count();
    let allowed = 60 + 3 * elapsed.ceil() as usize;
    assert!(
        lines <= allowed,
        "{lines} log lines for {total} items in {elapsed:.0} s (at most {allowed}):\n{}",
        log.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}
