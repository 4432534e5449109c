//! 10,000 malformed inputs, drawn from the fuzz corpora (`fuzz/corpus/*`) and mutated, sent
//! over MQTT to one running daemon on a real mosquitto: every one is answered on `error` with
//! its id, none produces a result, the daemon keeps running (a valid input afterwards is still
//! embedded) and stops cleanly. The figure in docs/reliability.md comes from this test.
//!
//! "Malformed" is decided by the library's own entry points before sending (the same
//! `parse_incoming` and decoders the daemon runs): a mutation that still decodes to a valid
//! input is mutated further or dropped, since the daemon rightly embeds it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::util::mutate::{mutate, mutate_one, Rng};
use crate::util::{exclusive, repo, Harness};
use bytes::Bytes;
use edgefuse::encoders::Modality;
use edgefuse::fuzz_entry;
use edgefuse::mqtt::{Incoming, Topics};
use edgefuse::pipeline::Body;
use edgefuse::sources::mqtt::{parse_incoming, Parsed};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};

const INPUTS: usize = 10_000;
const MAX_PAYLOAD: usize = 64 * 1024;
/// Inputs sent but not yet answered: a client paces itself rather than overrun the broker's
/// per-client queue (mosquitto's max_queued_messages, 1000 by default).
const WINDOW: usize = 200;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Whether the daemon must refuse this message, and under which id, judged by the same code
/// it runs: `parse_incoming`, then the decoders (limits as in the test's config), then the
/// tokenizer's empty-text rule.
fn refused_as(msg: &Incoming, topics: &Topics, max_text: usize) -> Option<String> {
    let r = std::panic::catch_unwind(|| refused_as_inner(msg, topics, max_text));
    r.unwrap_or_else(|_| {
        let dump = std::env::temp_dir().join("edgefuse-malformed-crash.bin");
        std::fs::write(&dump, &msg.payload).unwrap();
        eprintln!("the input that panicked is in {}", dump.display());
        panic!("{}", msg.topic)
    })
}
fn refused_as_inner(msg: &Incoming, topics: &Topics, max_text: usize) -> Option<String> {
    match parse_incoming(msg, topics, MAX_PAYLOAD, max_text) {
        Err((id, _)) => Some(id),
        Ok(Parsed::Forget { .. }) => None,
        Ok(Parsed::Request(r)) => {
            let bad = match (&r.body, r.modality) {
                (Body::Encoded(b), Modality::Audio) => fuzz_entry::wav_bytes(b).is_err(),
                (Body::Encoded(b), _) => fuzz_entry::image_bytes(b).is_err(),
                (Body::Text(t), _) => t.trim().is_empty(),
                (Body::Samples { .. }, _) => false,
            };
            bad.then_some(r.id)
        }
    }
}

/// The 10,000 inputs: `(topic, payload, content type)`, each refused under the id `m-<i>`.
fn malformed_inputs(topics: &Topics, max_text: usize) -> Vec<(String, Bytes, Option<String>)> {
    let payloads = corpus("payload");
    let images = corpus("image");
    let wavs = corpus("wav");
    let configs = corpus("config");
    let all: Vec<Vec<u8>> = [&payloads, &images, &wavs, &configs]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut rng = Rng(0x005E_ED0F_ED6E_F05E);
    let mut out = Vec::with_capacity(INPUTS);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    while out.len() < INPUTS {
        let id = format!("m-{}", out.len());
        let (kind, mut msg) = match rng.below(100) {
            0..=39 => {
                // A fuzz `payload` input: its first bytes pick the topic and flags.
                let m = fuzz_entry::message(&mutate_one(&mut rng, &payloads, &all));
                let Some(rest) = m.topic.strip_prefix("edgefuse/fuzz/") else {
                    continue; // outside the daemon's prefix: nobody answers, by design
                };
                let topic = topics.at(rest);
                ("payload", Incoming { topic, ..m })
            }
            40..=64 => {
                let suffix = if rng.below(5) == 0 {
                    "enroll/thing"
                } else {
                    "in/image"
                };
                let bytes = mutate_one(&mut rng, &images, &all);
                ("image", incoming(topics.at(suffix), bytes))
            }
            65..=89 => {
                let bytes = mutate_one(&mut rng, &wavs, &all);
                ("wav", incoming(topics.at("in/audio"), bytes))
            }
            90..=94 => {
                // Oversized text and payloads.
                let n = if rng.below(2) == 0 {
                    max_text + 1 + rng.below(4096)
                } else {
                    MAX_PAYLOAD + 1 + rng.below(32 * 1024)
                };
                let text: Vec<u8> = (0..n).map(|i| b"abc def "[i % 8]).collect();
                ("oversized", incoming(topics.at("in/text"), text))
            }
            _ => {
                // Config text with invalid UTF-8, or an unknown topic under the prefix.
                let mut bytes = mutate_one(&mut rng, &configs, &all);
                if rng.below(2) == 0 {
                    let i = rng.below(bytes.len() + 1);
                    bytes.insert(i, 0xFF);
                    ("text", incoming(topics.at("in/text"), bytes))
                } else {
                    let suffix = ["in/video", "in/text/extra", "enroll/a/b", "in/"][rng.below(4)];
                    ("topic", incoming(topics.at(suffix), bytes))
                }
            }
        };
        msg.correlation = Some(Bytes::from(id.clone()));
        msg.response_topic = None;
        // A mutation that left the input valid: break it harder, a few times, else redraw.
        let mut tries = 0;
        while refused_as(&msg, topics, max_text).as_deref() != Some(id.as_str()) && tries < 6 {
            let mut b = msg.payload.to_vec();
            if tries % 2 == 0 {
                b.truncate(rng.below(b.len().max(1)));
            } else {
                b = mutate(&mut rng, &b, &all);
            }
            msg.payload = Bytes::from(b);
            tries += 1;
        }
        if refused_as(&msg, topics, max_text).as_deref() == Some(id.as_str()) {
            *kinds.entry(kind).or_default() += 1;
            out.push((msg.topic, msg.payload, msg.content_type));
        }
    }
    eprintln!("malformed inputs by origin: {kinds:?}");
    out
}

fn incoming(topic: String, payload: Vec<u8>) -> Incoming {
    Incoming {
        topic,
        payload: Bytes::from(payload),
        response_topic: None,
        correlation: None,
        content_type: None,
    }
}

/// Tight input limits, so the corpus crosses them.
fn limits(max_text: usize) -> String {
    format!(
        "[encoders.text]\nmax_bytes = {max_text}\n\
         [encoders.vision]\nmax_pixels = {pixels}\n\
         [encoders.audio]\nmax_seconds = {seconds:.1}\n\
         [stats]\ninterval_s = 1\n",
        pixels = fuzz_entry::MAX_PIXELS,
        seconds = fuzz_entry::MAX_SECONDS,
    )
}

// The guard only serializes whole tests; this test's runtime is its own.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_inputs_are_each_answered_on_error() {
    let max_text = 4096;
    let topics = Topics::new("edgefuse", "test");
    let inputs = malformed_inputs(&topics, max_text);
    assert_eq!(inputs.len(), INPUTS);

    // 10,000 inputs against a deadline: not alongside the other heavy tests.
    let _exclusive = exclusive();
    let mut h = Harness::new(
        &limits(max_text),
        &format!("max_payload_bytes = {MAX_PAYLOAD}"),
    );

    // One client listens, one sends.
    let mut opts = MqttOptions::new("malformed-listener", "127.0.0.1", h.port());
    opts.set_max_packet_size(Some(1 << 20));
    let (listener, mut answers) = crate::util::mqtt::listener(opts);
    for suffix in [
        "available",
        "error",
        "embedding/+",
        "enrolled",
        "forgotten",
        "stats",
    ] {
        listener
            .subscribe(topics.at(suffix), QoS::AtLeastOnce)
            .await
            .unwrap();
    }

    tokio::task::block_in_place(|| h.start());
    let online = |t: &str, p: &Bytes| t.ends_with("/available") && p.as_ref() == b"online";
    loop {
        let (t, p) = tokio::time::timeout(Duration::from_secs(120), answers.recv())
            .await
            .expect("the daemon comes online")
            .unwrap();
        if online(&t, &p) {
            break;
        }
    }

    let mut opts = MqttOptions::new("malformed-sender", "127.0.0.1", h.port());
    opts.set_max_packet_size(Some(1 << 20));
    let (sender, mut sender_events) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while sender_events.poll().await.is_ok() {} });

    let mut tally = Tally::default();
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while tally.errors.len() < INPUTS {
        while sent < INPUTS && sent - tally.errors.len().min(sent) < WINDOW {
            let (topic, payload, content_type) = inputs[sent].clone();
            let props = PublishProperties {
                correlation_data: Some(Bytes::from(format!("m-{sent}"))),
                content_type,
                ..Default::default()
            };
            sender
                .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                .await
                .unwrap();
            sent += 1;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(60)), answers.recv()).await {
            Ok(Some((t, p))) => tally.handle(&t, &p),
            _ => panic!(
                "answers stopped after {} of {sent} sent; missing e.g. {:?}",
                tally.errors.len(),
                (0..sent)
                    .map(|i| format!("m-{i}"))
                    .filter(|id| !tally.errors.contains(id))
                    .take(5)
                    .collect::<Vec<_>>()
            ),
        }
        assert!(
            h.daemon
                .as_mut()
                .unwrap()
                .child
                .try_wait()
                .unwrap()
                .is_none(),
            "the daemon exited after {} answers",
            tally.errors.len()
        );
    }
    assert_eq!(
        tally.errors.len(),
        INPUTS,
        "each malformed input answered once by id"
    );
    assert!(
        tally.results.is_empty(),
        "results for malformed inputs: {:?}",
        tally.results
    );

    // Past the packet size the daemon announced (max_payload_bytes + 64 KiB), the broker
    // drops the message for the daemon instead of delivering it: no answer, no disconnect.
    sender
        .publish_with_properties(
            topics.at("in/image"),
            QoS::AtLeastOnce,
            false,
            vec![0u8; 4 * MAX_PAYLOAD],
            PublishProperties {
                correlation_data: Some(Bytes::from("huge-1")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Still serving: a valid text is embedded.
    sender
        .publish_with_properties(
            topics.at("in/text"),
            QoS::AtLeastOnce,
            false,
            "still here",
            PublishProperties {
                correlation_data: Some(Bytes::from("valid-1")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    loop {
        let (t, p) = tokio::time::timeout(Duration::from_secs(60), answers.recv())
            .await
            .expect("the valid input is answered")
            .unwrap();
        if t.ends_with("embedding/text") {
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["id"], "valid-1");
            break;
        }
        assert!(
            !String::from_utf8_lossy(&p).contains("huge-1"),
            "the broker delivered a packet over the announced maximum: {t}"
        );
        tally.handle(&t, &p);
    }
    let Tally {
        errors,
        results,
        rss,
        reasons,
    } = tally;
    let peak = rss.iter().max().copied().unwrap_or(0);
    let hwm = std::fs::read_to_string(format!(
        "/proc/{}/status",
        h.daemon.as_ref().unwrap().child.id()
    ))
    .unwrap_or_default()
    .lines()
    .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
    .unwrap_or_default();
    eprintln!(
        "malformed inputs: {} sent, {} answered on error, {} results, daemon RSS first {} MB, \
         peak {} MB over {} stats records, VmHWM {hwm}; reasons: {reasons:#?}",
        sent,
        errors.len(),
        results.len(),
        rss.first().copied().unwrap_or(0) >> 20,
        peak >> 20,
        rss.len()
    );
    // Bounded memory: far below what keeping the inputs (or decoding a bomb) would take.
    assert!(peak > 0 && peak < 2 << 30, "peak RSS {peak}");
    let status = h.stop();
    assert!(status.success(), "{status}");
}

/// What came back, by kind.
#[derive(Default)]
struct Tally {
    /// Ids answered on `error`.
    errors: HashSet<String>,
    /// Anything else about a malformed input (must stay empty).
    results: Vec<String>,
    /// `rss_bytes` of each `stats` record.
    rss: Vec<u64>,
    /// Error reasons by their first words.
    reasons: BTreeMap<String, usize>,
}

impl Tally {
    fn handle(&mut self, topic: &str, payload: &Bytes) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        if topic.ends_with("/error") && id.starts_with("m-") {
            let reason = v["reason"].as_str().unwrap_or_default();
            assert!(!reason.is_empty(), "{v}");
            let key: String = reason
                .split(':')
                .next()
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(48)
                .collect();
            *self.reasons.entry(key).or_default() += 1;
            assert!(self.errors.insert(id), "answered twice: {v}");
        } else if topic.ends_with("/stats") {
            self.rss.push(v["rss_bytes"].as_u64().unwrap_or(0));
        } else if id.starts_with("m-") {
            self.results.push(format!("{topic}: {id}"));
        }
    }
}
