//! The real binary under a fake systemd: `NOTIFY_SOCKET` is a Unix datagram socket bound in a
//! temporary directory, `WATCHDOG_USEC` asks for pings. (The watchdog's liveness rules, such as
//! a stuck encoder stopping the pings, are unit-tested in src/systemd.rs.)

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{fixture_path, publish, wait_for, write_config, Broker, Daemon, Sub};

/// A broker, a temporary directory and the notify socket bound in it (path and socket).
fn fake_systemd() -> (Broker, tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    (Broker::any(), dir, sock_path, sock)
}

/// Datagrams until `until` matches one, or panic after `timeout`.
fn recv_until(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    timeout: Duration,
    until: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; got {seen:#?}");
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = until(&msg);
            seen.push(msg);
            if done {
                return;
            }
        }
    }
}

#[test]
fn the_daemon_speaks_sd_notify_ready_status_watchdog_and_stopping() {
    let (broker, dir, sock_path, sock) = fake_systemd();
    let config = write_config(dir.path(), "svc", &mqtt_table(broker.port));
    let daemon = Daemon::start_with(&config, |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000") // pings every 0.5 s
            .env_remove("WATCHDOG_PID");
    });

    let mut seen = Vec::new();
    recv_until(&sock, &mut seen, Duration::from_secs(120), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let stages: Vec<&str> = seen
        .iter()
        .filter_map(|m| m.strip_prefix("STATUS="))
        .map(str::trim_end)
        .collect();
    assert_eq!(
        stages,
        ["loading models", "starting MQTT", "starting the pipeline"]
    );
    let ready = seen.last().unwrap();
    assert!(
        ready.starts_with("READY=1\nSTATUS=running: 0 items"),
        "{ready}"
    );

    // An idle daemon keeps pinging: 4 pings take about 1.5 s.
    let before = seen.len();
    let started = Instant::now();
    for _ in 0..4 {
        recv_until(&sock, &mut seen, Duration::from_secs(5), |m| {
            m == "WATCHDOG=1\n"
        });
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(4),
        "4 pings took {took:?}: {:?}",
        &seen[before..]
    );

    let status = daemon.terminate();
    recv_until(&sock, &mut seen, Duration::from_secs(1), |m| {
        m.starts_with("STOPPING=1\n")
    });
    assert!(status.success(), "{status:?}");
}

fn mqtt_table(port: u16) -> String {
    format!("[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n")
}

/// The config file the reload test rewrites: text and vision on, audio off.
fn write_reload_config(dir: &std::path::Path, port: u16, extra: &str) {
    let rest = format!(
        "{}[encoders.audio]\nenabled = false\n{extra}",
        mqtt_table(port)
    );
    write_config(dir, "hup", &rest);
}

fn wait_for_log(log: &std::path::Path, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    wait_for(
        &format!("a log line in {}", log.display()),
        timeout,
        Duration::from_millis(100),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines().find(|l| pred(l)).map(str::to_owned)
        },
    )
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_running_on_an_invalid_one() {
    let (broker, dir, sock_path, sock) = fake_systemd();
    let log = dir.path().join("daemon.log");
    write_reload_config(dir.path(), broker.port, "");
    let config = dir.path().join("edgefuse.toml");
    let mut sub = Sub::start(broker.port, "edgefuse/hup/#");
    let daemon = Daemon::start_with(&config, |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env_remove("WATCHDOG_USEC")
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    });
    let hup = || daemon.signal("HUP");
    let t = Duration::from_secs(120);
    let mut seen = Vec::new();
    recv_until(&sock, &mut seen, t, |m| m.lines().any(|l| l == "READY=1"));
    sub.expect("edgefuse/hup/available", t, |m| m.payload == "online");
    let image = fixture_path("tests/fixtures/images/coffee.jpg");

    // 1. Invalid: the daemon says why (log, STATUS=, error topic) and keeps the old config.
    write_reload_config(
        dir.path(),
        broker.port,
        "[encoders.text]\nmax_batch = 0\nbogus_key = 1\n",
    );
    hup();
    recv_until(&sock, &mut seen, t, |m| m.starts_with("RELOADING=1\n"));
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    recv_until(&sock, &mut seen, t, |m| m.starts_with("READY=1\n"));
    let status = seen.last().unwrap();
    assert!(status.contains("config reload refused"), "{status}");
    assert!(status.contains("encoders.text"), "{status}");
    let err = sub.expect("edgefuse/hup/error", t, |_| true).json();
    assert_eq!(err["id"], "reload");
    let reason = err["reason"].as_str().unwrap();
    assert!(reason.contains("encoders.text"), "{reason}");
    wait_for_log(&log, t, |l| l.contains("config reload refused"));
    // Still on the old config: vision works.
    publish(broker.port, "edgefuse/hup/in/image", &["-f", &image]);
    sub.expect("embedding/vision", t, |_| true);

    // 2. Valid: vision off, text untouched. Only what changed is reloaded.
    write_reload_config(
        dir.path(),
        broker.port,
        "[encoders.vision]\nenabled = false\n[stats]\ninterval_s = 1\n",
    );
    hup();
    recv_until(&sock, &mut seen, t, |m| m.starts_with("READY=1\n"));
    let status = seen.last().unwrap();
    assert!(!status.contains("refused"), "{status}");
    let line = wait_for_log(&log, t, |l| l.contains("config reloaded"));
    assert!(line.contains("text kept"), "{line}");
    assert!(line.contains("vision disabled"), "{line}");
    // The new config is in force: images are refused, text still embeds, stats now flow.
    publish(broker.port, "edgefuse/hup/in/image", &["-f", &image]);
    let err = sub.expect("edgefuse/hup/error", t, |_| true).json();
    assert!(
        err["reason"].as_str().unwrap().contains("disabled"),
        "{err}"
    );
    publish(broker.port, "edgefuse/hup/in/text", &["-m", "still here"]);
    sub.expect("embedding/text", t, |_| true);
    sub.expect("edgefuse/hup/stats", t, |_| true);

    // 3. A text setting changes: the text encoder (only) is loaded again. Inputs sent just
    // before are answered across the swap, and acknowledged: none is left holding the broker's
    // window.
    write_reload_config(
        dir.path(),
        broker.port,
        "[encoders.vision]\nenabled = false\n[encoders.text]\nmax_length = 128\n\
         [stats]\ninterval_s = 1\n",
    );
    for i in 0..8 {
        publish(
            broker.port,
            "edgefuse/hup/in/text",
            &[
                "-m",
                &format!(r#"{{"id":"around-hup-{i}","text":"input {i}"}}"#),
            ],
        );
    }
    hup();
    let line = wait_for_log(&log, t, |l| {
        l.contains("config reloaded") && l.contains("text loaded")
    });
    assert!(!line.contains("vision"), "{line}");
    publish(
        broker.port,
        "edgefuse/hup/in/text",
        &["-m", r#"{"id":"after-hup","text":"and here"}"#],
    );
    let mut ids = std::collections::BTreeSet::new();
    while !ids.contains("after-hup") || ids.len() < 9 {
        let m = sub.expect("embedding/text", t, |_| true);
        ids.insert(m.json()["id"].as_str().unwrap().to_owned());
    }
    sub.expect("edgefuse/hup/stats", t, |m| {
        m.json()["mqtt"]["unacked_inputs"] == 0
    });

    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
}
