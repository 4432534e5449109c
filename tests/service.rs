//! The real binary under a fake systemd: `NOTIFY_SOCKET` is a Unix datagram socket bound in a
//! temporary directory, `WATCHDOG_USEC` asks for pings. (The watchdog's liveness rules, such as
//! a stuck encoder stopping the pings, are unit-tested in src/systemd.rs.)

mod util;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{models_dir, Daemon, Mosquitto};

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
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let config = dir.path().join("edgefuse.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"svc\"\nstate_dir = \"{}\"\n[models]\ndir = \"{}\"\n\
             [mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\n",
            dir.path().join("state").display(),
            models_dir().display(),
            broker.port
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edgefuse"))
        .args(["--log", "edgefuse=info", "--config"])
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000") // pings every 0.5 s
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("edgefuse starts");
    let daemon = Daemon { child };

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
        [
            "loading models",
            "loading labels",
            "starting MQTT",
            "starting workers"
        ]
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
