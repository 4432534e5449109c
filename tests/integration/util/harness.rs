//! Broker, daemon and subscriber started together, each waited on until ready: the broker
//! until it listens, a subscriber until its subscription is acknowledged, the daemon until it
//! has published its retained `online` availability.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use super::{publish, write_config, Broker, Daemon, Sub, T};

/// The device every harness config uses: topics are `edgefuse/test/...`.
pub const DEVICE: &str = "test";

pub struct Harness {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    /// The daemon's config file, in `dir`.
    pub config: PathBuf,
    /// The daemon, once [`Harness::start`] has seen it online.
    pub daemon: Option<Daemon>,
    available: Option<Sub>,
}

impl Harness {
    /// A broker on a free port and a config for it: `before_mqtt` comes before the `[mqtt]`
    /// table (other tables), `mqtt_extra` inside it after the broker address. No daemon yet.
    pub fn new(before_mqtt: &str, mqtt_extra: &str) -> Harness {
        Harness::on(Broker::any(), before_mqtt, mqtt_extra)
    }

    /// The same on a broker of the test's own (persistence, a bridge).
    pub fn on(broker: Broker, before_mqtt: &str, mqtt_extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            DEVICE,
            &format!(
                "{before_mqtt}[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\n{mqtt_extra}\n",
                broker.port
            ),
        );
        Harness {
            broker,
            dir,
            config,
            daemon: None,
            available: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.broker.port
    }

    /// A subscriber on this broker.
    pub fn sub(&self, filter: &str) -> Sub {
        Sub::start(self.broker.port, filter)
    }

    /// `mosquitto_pub` to this broker.
    pub fn publish(&self, topic: &str, args: &[&str]) {
        publish(self.broker.port, topic, args);
    }

    /// Start the daemon and wait until it says `online`.
    pub fn start(&mut self) -> &mut Harness {
        self.start_with(|_| {})
    }

    /// The same, after `adjust` set more on its command.
    pub fn start_with(&mut self, adjust: impl FnOnce(&mut Command)) -> &mut Harness {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let port = self.broker.port;
        let available = self
            .available
            .get_or_insert_with(|| Sub::start(port, &format!("edgefuse/{DEVICE}/available")));
        self.daemon = Some(Daemon::start_with(&self.config, adjust));
        available.expect("available", T, |m| m.payload == "online");
        self
    }

    /// SIGTERM the daemon and wait for its exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.daemon.take().expect("a running daemon").terminate()
    }

    /// SIGKILL the daemon: no shutdown path runs.
    pub fn kill(&mut self) {
        self.daemon.take().expect("a running daemon").kill();
    }
}
