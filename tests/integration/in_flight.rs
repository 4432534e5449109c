//! Several batches in flight per modality (`encoders.runs_in_flight`): a burst gets every answer,
//! in the order it was sent, every input is acknowledged, and the stats count each item once.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{wait_for, Harness, T, TEXT_ONLY};

/// More inputs than the Receive Maximum the daemon announces (128): were an ack lost or sent
/// out of order, the broker would stop sending before the end.
const INPUTS: usize = 160;

#[test]
fn a_burst_with_three_runs_in_flight_gets_every_answer_in_order_and_every_ack() {
    let mut h = Harness::new(
        &format!(
            "[encoders]\nruns_in_flight = 3\n{TEXT_ONLY}[encoders.text]\nmax_batch = 2\n\
             [stats]\ninterval_s = 1\n"
        ),
        "",
    );
    let mut sub = h.sub("edgefuse/test/#");
    h.start();

    // All at once, through one QoS 1 connection.
    let sent: Vec<String> = (0..INPUTS).map(|i| format!("b-{i:03}")).collect();
    let mut pub_ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &h.port().to_string(), "-q", "1"])
        .args(["-t", "edgefuse/test/in/text", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    {
        let mut stdin = pub_.stdin.take().unwrap();
        for (i, id) in sent.iter().enumerate() {
            writeln!(
                stdin,
                r#"{{"id":"{id}","text":"burst item {i} of {INPUTS}"}}"#
            )
            .unwrap();
        }
    }
    assert!(pub_.wait().unwrap().success(), "mosquitto_pub -l failed");

    let (mut embedded, mut fused) = (Vec::new(), 0);
    let deadline = Instant::now() + T;
    while embedded.len() < INPUTS || fused < INPUTS {
        assert!(
            Instant::now() < deadline,
            "{} embeddings and {fused} fused records of {INPUTS}",
            embedded.len()
        );
        let Some(m) = sub.next(Duration::from_millis(200)) else {
            continue;
        };
        if m.topic.ends_with("/embedding/text") {
            embedded.push(m.json()["id"].as_str().unwrap().to_owned());
        } else if m.topic.ends_with("/fused") {
            fused += 1;
        }
    }
    assert_eq!(embedded, sent, "one answer per input, in the order sent");

    // Counted once each, and every input acknowledged to the broker.
    let stats = sub.expect("/stats", T, |m| {
        let v = m.json();
        v["modalities"]["text"]["items"] == INPUTS && v["mqtt"]["unacked_inputs"] == 0
    });
    assert_eq!(stats.json()["modalities"]["text"]["errors"], 0);
}

/// `encoders.lone_run_threads = "auto"`: at first start each model is timed on one thread and on
/// every core, the result is kept in the state directory, and the next start reads it back
/// instead of measuring again; the daemon answers as usual either way.
#[test]
fn lone_run_threads_are_measured_once_per_model_and_kept() {
    let mut h = Harness::new(
        "[encoders]\nlone_run_threads = \"auto\"\n[encoders.vision]\nenabled = false\n",
        "",
    );
    let kept = h.dir.path().join("state/lone-threads.json");
    let mut sub = h.sub("edgefuse/test/embedding/#");
    h.start();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        assert!(!kept.exists(), "one core: nothing to measure");
        return;
    }
    // `online` comes at connect; the measurement follows, before `ready`.
    let read = || -> serde_json::Value {
        let bytes = wait_for("lone-threads.json", T, Duration::from_millis(50), || {
            std::fs::read(&kept).ok()
        });
        serde_json::from_slice(&bytes).unwrap()
    };
    let first = read();
    let entries = first.as_object().unwrap();
    assert_eq!(entries.len(), 2, "text and audio: {first}");
    for (key, m) in entries {
        assert!(key.contains("tract"), "{key}");
        assert_eq!(m["threads"], cores, "{key}");
        for t in ["one_thread_ms", "all_threads_ms"] {
            let ms = m[t].as_f64().unwrap();
            assert!(ms > 0.0 && ms < 60_000.0, "{key}: {t} = {ms}");
        }
    }
    h.publish(
        "edgefuse/test/in/text",
        &["-m", r#"{"id":"t1","text":"a lone sentence"}"#],
    );
    let m = sub.expect("/embedding/text", T, |m| m.json()["id"] == "t1");
    assert_eq!(m.json()["vector"].as_array().map(Vec::len), Some(384));
    assert!(h.stop().success());

    h.start();
    h.publish(
        "edgefuse/test/in/text",
        &["-m", r#"{"id":"t2","text":"once more"}"#],
    );
    sub.expect("/embedding/text", T, |m| m.json()["id"] == "t2");
    // Read back, not measured again; unless other processes were busy during the first
    // measurement (tests run in parallel), which the next start takes again.
    let second = read();
    for (key, m) in entries {
        let busy = m["others_busy_cores"].as_f64().is_some_and(|c| c > 0.25);
        if busy {
            assert_eq!(second[key]["attempts"], 2, "{key}: measured again");
        } else {
            assert_eq!(&second[key], m, "{key}: kept");
        }
    }
    assert!(h.stop().success());
}
