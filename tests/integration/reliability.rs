//! Reliability against real mosquitto brokers on loopback: reconnect without a busy loop,
//! store-and-forward across broker restarts (every result arrives), a mosquitto bridge, and
//! Home Assistant discovery. Figures from these tests are in docs/reliability.md.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgefuse::mqtt::client::{connect, ConnectSettings};
use edgefuse::mqtt::spool::{Record, Spool, SpoolConfig};
use edgefuse::mqtt::Topics;
use tokio_util::sync::CancellationToken;

use crate::util::{exclusive, free_port, publish, Broker, Harness, Msg, Sub, T, TEXT_ONLY};

/// The cheapest daemon (text only), with stats every second: `clean_start` as given.
fn text_only(broker: Broker, clean_start: bool) -> Harness {
    let before = format!("{TEXT_ONLY}[stats]\ninterval_s = 1\n");
    let session = if clean_start {
        ""
    } else {
        "clean_start = false"
    };
    Harness::on(broker, &before, session)
}

fn record(i: usize) -> Record {
    Record {
        topic: "edgefuse/bo/embedding/text".into(),
        payload: format!("{{\"id\":\"r-{i}\"}}").into(),
        content_type: Some("application/json".into()),
        ..Default::default()
    }
}

// The guard only serializes whole tests; this test's runtime is its own.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_down_the_client_backs_off_then_replays_the_spool_in_order() {
    let _exclusive = exclusive();
    let port = free_port();
    // The subscriber's persistent session exists before the client can ever connect, so no
    // replayed result slips past it however fast the client reconnects: subscribe once, then
    // stop the broker (it saves the session) before the client starts.
    let mut broker = Broker::start(port, "persistence true\npersistence_location ./\n");
    {
        let mut probe = Sub::start_with(
            port,
            "edgefuse/bo/#",
            &[
                "-V", "mqttv5", "-c", "-x", "3600", "-i", "bo-sub", "-q", "1",
            ],
        );
        publish(port, "edgefuse/bo/probe", &["-m", "x"]);
        probe.expect("probe", T, |_| true);
    }
    broker.halt("TERM");
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    let stop = CancellationToken::new();
    let (mqtt, _incoming, task) = connect(
        ConnectSettings {
            keepalive: Duration::from_secs(5),
            incoming_capacity: 4,
            spool: Some(spool),
            ..ConnectSettings::plain("127.0.0.1", port, "backoff-test")
        },
        Topics::new("edgefuse", "bo"),
        stop.clone(),
    );
    for i in 0..20 {
        mqtt.spool(record(i)).unwrap();
        // Each commit wakes the event loop; while disconnected that must not make it spin.
        mqtt.commit();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = mqtt.counters().connect_attempts;
    let turns = mqtt
        .counters
        .loop_turns
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("broker down for 4 s: {attempts} connection attempts, {turns} loop turns");
    // Backoff 0.5 s, 1 s, 2 s (+ up to 25 % jitter): at most 4 attempts in 4 s; a busy loop
    // would make thousands.
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} connection attempts in 4 s"
    );
    assert!(
        turns <= 3 * attempts + 2,
        "{turns} loop turns for {attempts} attempts"
    );
    assert!(!mqtt.counters().connected);

    // The broker comes back; the client connects at its next attempt and replays the spool,
    // which the broker queues for the subscriber's session until it reconnects.
    broker.resume();
    let mut sub = tokio::task::spawn_blocking(move || {
        Sub::start_with(
            port,
            "edgefuse/bo/#",
            &[
                "-V", "mqttv5", "-c", "-x", "3600", "-i", "bo-sub", "-q", "1",
            ],
        )
    })
    .await
    .unwrap();
    let ids = tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        while ids.len() < 20 {
            let m = sub.expect("embedding/text", T, |_| true);
            let v = m.json();
            assert_eq!(v["historical"], true, "{}", m.payload);
            assert_eq!(m.content_type, "application/json");
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
        ids
    })
    .await
    .unwrap();
    let want: Vec<String> = (0..20).map(|i| format!("r-{i}")).collect();
    assert_eq!(ids, want, "replayed in order");
    let deadline = Instant::now() + T;
    while mqtt.spool_stats().unwrap().records > 0 {
        assert!(Instant::now() < deadline, "acks did not empty the spool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mqtt.counters().replayed, 20);
    stop.cancel();
    let _ = task.await;
}

/// Publish `lines` as separate QoS 1 messages through one `mosquitto_pub -l`.
fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "mosquitto_pub -l failed");
}

/// Reads `embedding/text` results: unique ids, and how many came flagged historical.
struct Collector {
    sub: Sub,
    ids: BTreeSet<String>,
    historical: usize,
    messages: usize,
}

impl Collector {
    fn pump(&mut self, wait: Duration) {
        if let Some(m) = self.sub.next(wait) {
            self.take(m);
        }
        for m in self.sub.drain() {
            self.take(m);
        }
    }

    fn take(&mut self, m: Msg) {
        if !m.topic.ends_with("embedding/text") {
            return;
        }
        let v = m.json();
        self.messages += 1;
        if v["historical"] == true {
            self.historical += 1;
        }
        self.ids.insert(v["id"].as_str().unwrap().to_owned());
    }
}

#[test]
fn every_result_arrives_although_the_broker_restarts_five_times_during_2000_inputs() {
    let _exclusive = exclusive();
    const INPUTS: usize = 2000;
    const RESTARTS: usize = 5;
    let port = free_port();
    // Persistence: the broker keeps the sessions and messages it acknowledged across a restart.
    let broker = Broker::start(
        port,
        "persistence true\npersistence_location ./\nmax_queued_messages 100000\n",
    );
    // A persistent session, so inputs published while the daemon reconnects wait for it.
    let mut h = text_only(broker, false);
    // The collector has a persistent session too (-c): the broker keeps its messages.
    let mut col = Collector {
        sub: Sub::start_with(
            port,
            "edgefuse/test/embedding/text",
            &["-c", "-i", "collector", "-q", "1"],
        ),
        ids: BTreeSet::new(),
        historical: 0,
        messages: 0,
    };
    h.start();

    let chunk = INPUTS / RESTARTS;
    let started = Instant::now();
    for r in 0..RESTARTS {
        let lines: Vec<String> = (r * chunk..(r + 1) * chunk)
            .map(|i| {
                format!(
                    r#"{{"id":"in-{i:05}","text":"reading number {i} from sensor {}"}}"#,
                    i % 7
                )
            })
            .collect();
        publish_lines(port, "edgefuse/test/in/text", &lines);
        // Restart while the chunk is being processed: results are in the daemon's queues,
        // its spool and in flight.
        let target = r * chunk + chunk / 10;
        let deadline = Instant::now() + T;
        while col.ids.len() < target {
            assert!(
                Instant::now() < deadline,
                "round {r}: {} results",
                col.ids.len()
            );
            col.pump(Duration::from_millis(100));
        }
        h.broker.halt("TERM");
        std::thread::sleep(Duration::from_millis(1500));
        h.broker.resume();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while col.ids.len() < INPUTS && Instant::now() < deadline {
        col.pump(Duration::from_millis(200));
    }
    let missing: Vec<String> = (0..INPUTS)
        .map(|i| format!("in-{i:05}"))
        .filter(|id| !col.ids.contains(id))
        .collect();
    eprintln!(
        "restart test: {} unique of {INPUTS} results in {:.1} s, {} messages, {} historical",
        col.ids.len(),
        started.elapsed().as_secs_f64(),
        col.messages,
        col.historical
    );
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        col.historical > 0,
        "some results must have waited in the spool (historical: true)"
    );
    let status = h.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn results_cross_a_mosquitto_bridge_to_a_second_broker() {
    let _exclusive = exclusive();
    let central_port = free_port();
    let _central = Broker::start(central_port, "");
    let local_port = free_port();
    let local = Broker::start(
        local_port,
        &format!(
            "connection central\naddress 127.0.0.1:{central_port}\n\
             bridge_protocol_version mqttv50\ncleansession true\n\
             topic edgefuse/# out 1\ntopic homeassistant/# out 1\n"
        ),
    );
    let mut sub = Sub::start(central_port, "edgefuse/#");
    // The bridge connects on its own schedule: wait until a probe crosses it.
    let deadline = Instant::now() + T;
    loop {
        publish(local_port, "edgefuse/probe", &["-m", "x"]);
        if sub
            .next(Duration::from_millis(500))
            .is_some_and(|m| m.topic == "edgefuse/probe")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge never connected");
    }
    let mut h = text_only(local, true);
    h.start();
    sub.expect("edgefuse/test/available", T, |m| m.payload == "online");
    publish(
        local_port,
        "edgefuse/test/in/text",
        &["-m", r#"{"id":"via-bridge","text":"a parcel at the door"}"#],
    );
    let e = sub.expect("embedding/text", T, |_| true);
    assert_eq!(e.json()["id"], "via-bridge");
    assert_eq!(
        e.content_type, "application/json",
        "MQTT 5 properties cross the bridge"
    );
    let f = sub.expect("/fused", T, |_| true).json();
    assert_eq!(f["items"]["text"]["id"], "via-bridge");
    assert!(h.stop().success());
}

#[test]
fn home_assistant_discovery_is_retained_and_announced_again_when_home_assistant_restarts() {
    let _exclusive = exclusive();
    let mut h = text_only(Broker::any(), true);
    let port = h.port();
    let mut avail = h.sub("edgefuse/test/available");
    h.start();
    avail.expect("available", T, |m| m.payload == "online");

    // A subscriber arriving later still gets every config: they are retained.
    let mut ha = Sub::start(port, "homeassistant/#");
    let mut configs = BTreeMap::new();
    while let Some(m) = ha.next(Duration::from_secs(2)) {
        configs.insert(m.topic.clone(), m.json());
    }
    for entity in [
        "binary_sensor/edgefuse_test/status",
        "sensor/edgefuse_test/label",
        "sensor/edgefuse_test/novelty",
        "sensor/edgefuse_test/uptime",
        "sensor/edgefuse_test/memory",
        "sensor/edgefuse_test/spool_records",
        "sensor/edgefuse_test/spool_drops",
    ] {
        let topic = format!("homeassistant/{entity}/config");
        let c = configs
            .get(&topic)
            .unwrap_or_else(|| panic!("{topic} missing: {configs:?}"));
        assert!(c["state_topic"]
            .as_str()
            .unwrap()
            .starts_with("edgefuse/test/"));
        assert_eq!(c["device"]["identifiers"][0], "edgefuse_test");
    }
    // The novelty sensor reads a field the daemon really publishes.
    let mut fused = Sub::start(port, "edgefuse/test/fused");
    publish(
        port,
        "edgefuse/test/in/text",
        &["-m", "the kettle is boiling"],
    );
    let f = fused.expect("fused", T, |_| true).json();
    assert!(f["novelty"].as_f64().is_some(), "{f}");

    // Home Assistant restarts and says so: every config comes again.
    let n = configs.len();
    publish(port, "homeassistant/status", &["-m", "online"]);
    let mut again = 0;
    while let Some(m) = ha.next(Duration::from_secs(2)) {
        if m.topic.ends_with("/config") {
            again += 1;
        }
    }
    assert_eq!(again, n, "re-announced after homeassistant/status online");
    // Its own status message is not taken for an input.
    let mut errors = Sub::start(port, "edgefuse/test/error");
    publish(port, "homeassistant/status", &["-m", "offline"]);
    assert!(errors.next(Duration::from_secs(1)).is_none());
    assert!(h.stop().success());
}

/// Inputs the daemon received but had not answered when it was killed: with manual acks the
/// broker never got their PubAcks, so with a persistent session (`clean_start = false`) it sends
/// them again to the restarted daemon and every result arrives. Under automatic acks (rumqttc's
/// default, before) they were acknowledged on arrival and lost.
#[test]
fn inputs_received_but_unanswered_when_the_daemon_is_killed_are_answered_after_a_restart() {
    let _exclusive = exclusive();
    // More than the Receive Maximum (128), so the test also sees the broker respect it, and
    // fewer than the pipeline holds (queues and channels), so only the broker limits intake.
    const INPUTS: usize = 150;
    let receive_max = usize::from(edgefuse::mqtt::ack::RECEIVE_MAXIMUM);
    let mut h = text_only(Broker::any(), false);
    let port = h.port();
    let mut results = h.sub("edgefuse/test/embedding/text");
    let mut avail = h.sub("edgefuse/test/available");
    // The hook (a `test-hooks` build, Cargo.toml) holds every result: inputs are received and
    // embedded, never answered.
    h.start_with(|cmd| {
        cmd.env(edgefuse::sinks::publisher::HOLD_RESULTS, "1");
    });
    avail.expect("available", T, |m| m.payload == "online");
    let mut stats = Sub::start(port, "edgefuse/test/stats");
    let lines: Vec<String> = (0..INPUTS)
        .map(|i| format!(r#"{{"id":"held-{i:03}","text":"reading {i} before the crash"}}"#))
        .collect();
    publish_lines(port, "edgefuse/test/in/text", &lines);
    // No race: wait until the daemon itself reports the inputs received and unacknowledged
    // (under automatic acks the broker would have had their PubAcks by now).
    let unacked = |m: &Msg| m.json()["mqtt"]["unacked_inputs"].as_u64();
    let first = stats.expect("stats", T, |m| unacked(m) == Some(receive_max as u64));
    eprintln!("held daemon: {:?} inputs unacknowledged", unacked(&first));
    // Two stats later the broker has still not sent more.
    for _ in 0..2 {
        let m = stats.expect("stats", T, |_| true);
        assert_eq!(
            unacked(&m),
            Some(receive_max as u64),
            "the broker exceeded the Receive Maximum"
        );
    }
    assert!(
        results.drain().is_empty(),
        "the hook let a result through before the kill"
    );
    h.kill(); // SIGKILL: no shutdown path runs

    h.start();
    let mut ids = BTreeSet::new();
    let mut messages = 0;
    let deadline = Instant::now() + T;
    while ids.len() < INPUTS && Instant::now() < deadline {
        if let Some(m) = results.next(Duration::from_millis(200)) {
            messages += 1;
            ids.insert(m.json()["id"].as_str().unwrap().to_owned());
        }
    }
    eprintln!(
        "after the restart: {} unique of {INPUTS} results, {messages} messages",
        ids.len()
    );
    let missing: Vec<String> = (0..INPUTS)
        .map(|i| format!("held-{i:03}"))
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Everything was acknowledged once answered.
    let deadline = Instant::now() + T;
    loop {
        let m = stats.expect("stats", T, |_| true);
        if unacked(&m) == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "inputs left unacknowledged");
    }
    assert!(h.stop().success());
}
