//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod mutate;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fetched models: `EDGEFUSE_MODELS` or the repository's `models/`. Tests that need them
/// fail (not skip) without them, naming the fix.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("EDGEFUSE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let probe = dir.join("text/all-minilm-l6-v2.onnx");
    assert!(
        probe.exists(),
        "{} is missing: run `models/fetch` first (or set EDGEFUSE_MODELS)",
        probe.display()
    );
    dir
}

/// The built-in config with every encoder on its fp32 original: the golden tests compare those
/// with onnxruntime, whatever compressed variant the defaults select (tests/variants.rs covers
/// the variants).
pub fn fp32_config() -> edgefuse::config::Config {
    let mut c = edgefuse::config::Config::builtin();
    c.encoders.text.model = "text".into();
    c.encoders.vision.model = "vision".into();
    c.encoders.audio.model = "audio".into();
    c
}

pub fn fixture(rel: &str) -> Vec<u8> {
    let p = repo().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    edgefuse::encoders::cosine(a, b)
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

// ------------------------------------------------------------------ MQTT test harness

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// A real mosquitto on a free loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (tests/run installs it)");
        wait_port(port, Duration::from_secs(10));
        Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }
}

/// A mosquitto that can be stopped and started again on the same port and config
/// (`extra` lines go into its config file, e.g. persistence or a bridge).
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start(port: u16, extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto started as root drops to the `mosquitto` user: let it write persistence.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n"),
        )
        .unwrap();
        let mut b = Broker {
            port,
            child: None,
            dir,
        };
        b.resume();
        b
    }

    /// Start (again) with the same config.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (tests/run installs it)");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10));
    }

    /// Stop with `signal` (TERM: the broker saves its persistent state; KILL: it does not).
    pub fn halt(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub` (MQTT 5) printing `topic|correlation|payload` lines into a channel.
pub struct Sub {
    child: Child,
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Sub {
    pub fn start(port: u16, filter: &str) -> Sub {
        Sub::start_with(port, filter, &["-V", "5"])
    }

    /// With extra mosquitto_sub arguments (e.g. `-c -i id -q 1` for a persistent session).
    pub fn start_with(port: u16, filter: &str, extra: &[&str]) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", filter])
            .args(extra)
            .args(["-F", "%t|%C|%D|%p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Raw inputs (JPEG, WAV) echo on the input topics: read bytes, not UTF-8 lines.
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_owned();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Give the subscription a moment to be registered.
        std::thread::sleep(Duration::from_millis(300));
        Sub {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Every message that arrived so far, without waiting.
    pub fn drain(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Ok(line) = self.rx.try_recv() {
            if let Some(m) = Msg::parse(&line) {
                out.push(m);
            }
        }
        out
    }

    /// The next message, if one arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Msg> {
        self.rx
            .recv_timeout(timeout)
            .ok()
            .and_then(|l| Msg::parse(&l))
    }

    /// The first new line whose topic ends with `suffix` and whose payload satisfies `pred`.
    pub fn expect(&mut self, suffix: &str, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(m) = Msg::parse(&line) {
                        if m.topic.ends_with(suffix) && pred(&m) {
                            return m;
                        }
                    }
                }
                Err(_) => panic!(
                    "no message on *{suffix} within {timeout:?}; saw:\n{}",
                    self.seen
                        .iter()
                        .map(|l| &l[..l.len().min(160)])
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub content_type: String,
    pub correlation: String,
    pub payload: String,
}

impl Msg {
    fn parse(line: &str) -> Option<Msg> {
        let mut it = line.splitn(4, '|');
        Some(Msg {
            topic: it.next()?.to_owned(),
            content_type: it.next()?.to_owned(),
            correlation: it.next()?.to_owned(),
            payload: it.next()?.to_owned(),
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap_or_else(|e| panic!("{}: {e}", self.payload))
    }
}

pub fn publish(port: u16, topic: &str, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            topic,
        ])
        .args(args)
        .status()
        .expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub {topic} {args:?}");
}

/// The daemon as a child process, killed on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn start(config: &std::path::Path) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// With extra environment variables (test hooks such as `EDGEFUSE_TEST_HOLD_RESULTS`).
    pub fn start_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_edgefuse"))
            .args(["--log", "edgefuse=info"])
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("EDGEFUSE_MODELS", models_dir())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("edgefuse starts");
        Daemon { child }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
