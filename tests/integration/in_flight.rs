//! Several batches in flight per modality (`encoders.runs_in_flight`): a burst gets every answer,
//! in the order it was sent, every input is acknowledged, and the stats count each item once.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Harness, T, TEXT_ONLY};

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
