//! Real mosquitto brokers on free loopback ports, `mosquitto_sub` subscribers that say when
//! their subscription stands, and `mosquitto_pub`.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::wait_for;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, timeout: Duration) {
    wait_for(
        &format!("something listening on 127.0.0.1:{port}"),
        timeout,
        Duration::from_millis(50),
        || TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

/// A real mosquitto, killed on drop, that can be stopped and started again on the same port
/// and config (`extra` lines go into its config file, e.g. persistence or a bridge).
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// On a free port, with the default config.
    pub fn any() -> Broker {
        Broker::start(free_port(), "")
    }

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

/// The output format of [`Sub::start`]: topic, content type, correlation data, payload.
const FORMAT: &str = "%t|%C|%D|%p";

/// `mosquitto_sub` printing one line per message into a channel; it is returned once the broker
/// has acknowledged the subscription.
pub struct Sub {
    child: Child,
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Sub {
    /// MQTT 5, `topic|correlation|payload` lines.
    pub fn start(port: u16, filter: &str) -> Sub {
        Sub::start_with(port, filter, &["-V", "5"])
    }

    /// With extra mosquitto_sub arguments (e.g. `-c -i id -q 1` for a persistent session).
    pub fn start_with(port: u16, filter: &str, extra: &[&str]) -> Sub {
        Sub::start_formatted(port, filter, extra, FORMAT)
    }

    /// Lines in mosquitto_sub's `-F` `format`; read them with [`Sub::line`].
    pub fn start_formatted(port: u16, filter: &str, extra: &[&str], format: &str) -> Sub {
        // -d: the debug lines say when the subscription stands; they are not passed on.
        // mosquitto_sub flushes its stdout after messages only: stdbuf (coreutils) makes the
        // debug lines arrive as they are written.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-t", filter])
            .args(extra)
            .args(["-F", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            // Raw inputs (JPEG, WAV) echo on the input topics: read bytes, not UTF-8 lines.
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_owned();
                buf.clear();
                if line.starts_with("Subscribed (mid: ") {
                    let _ = ready_tx.send(());
                } else if line.starts_with("Client ") {
                    // mosquitto_sub's own debug output.
                } else if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert!(
            ready.recv_timeout(Duration::from_secs(10)).is_ok(),
            "mosquitto_sub on 127.0.0.1:{port} got no SUBACK for {filter}"
        );
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

    /// The next line as printed, if one arrives within `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next message, if one arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Msg> {
        self.line(timeout).and_then(|l| Msg::parse(&l))
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
                        // Raw WAV/JPEG echoes hold multi-byte replacement characters.
                        .map(|l| l.chars().take(160).collect::<String>())
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

/// `mosquitto_pub` (MQTT 5, QoS 1) of one message; `args` give the payload and properties.
pub fn publish(port: u16, topic: &str, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-V", "5", "-q", "1", "-t", topic])
        .args(args)
        .status()
        .expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub {topic} {args:?}");
}

/// An MQTT 5 client on `opts` whose every incoming publish arrives on the returned channel as
/// `(topic, payload)`; its event loop runs on the current tokio runtime and retries after an
/// error (logged) every 200 ms.
pub fn listener(
    opts: rumqttc::v5::MqttOptions,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event};
    let (client, mut events) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if tx.send((topic, p.payload)).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("listener: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    (client, rx)
}
