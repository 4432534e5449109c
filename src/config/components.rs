//! The component parts of the config that their components re-export (`systemd`,
//! `mqtt::discovery`, `mqtt`, `sinks::spool`): defined here, at the bottom of the data flow, so
//! that `config` imports nothing above it.

use serde::Deserialize;

/// `[watchdog]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// A batch in inference for longer than this counts as a stuck encoder.
    pub max_batch_s: u64,
    /// Seconds between `STATUS=` updates while running.
    pub status_interval_s: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            max_batch_s: 120,
            status_interval_s: 10,
        }
    }
}

/// `[homeassistant]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs (on by default: Home Assistant then finds the device on its
    /// own, as it does for Zigbee2MQTT or Tasmota; other subscribers ignore the topics).
    pub enabled: bool,
    /// Home Assistant's `discovery_prefix`.
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// `mqtt://host:port` (port defaults to 1883) or `mqtts://host:port` (TLS, 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<BrokerAddr, String> {
        let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
            (r, true, 8883)
        } else {
            let r = url
                .strip_prefix("mqtt://")
                .ok_or("expected \"embedded\", mqtt://host[:port] or mqtts://host[:port]")?;
            (r, false, 1883)
        };
        let rest = rest.trim_end_matches('/');
        let parse_port = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port {p:?}"));
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or("unclosed '[' in host")?;
            match tail.strip_prefix(':') {
                Some(p) => (h, parse_port(p)?),
                None if tail.is_empty() => (h, default_port),
                None => return Err(format!("unexpected {tail:?} after host")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// `[spool]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool results published at QoS 1 or 2 (QoS 0 results are never spooled).
    pub enabled: bool,
    /// Upper bound of the spool on disk; the oldest records are dropped beyond it.
    pub max_bytes: u64,
    /// Records older than this are dropped unsent.
    pub max_age_s: u64,
    /// fsync the spool before an input is acknowledged (power-cut safe); false leaves it to
    /// the OS.
    pub fsync: bool,
    /// Group commit: at most this many results share one fsync.
    pub commit_max_records: usize,
    /// Group commit: at most about this many bytes of results share one fsync (the batch ends
    /// after the result that crosses it).
    pub commit_max_bytes: u64,
    /// Group commit: a batch takes in results already waiting for at most this long after its
    /// first one; it never waits for results that have not arrived.
    pub commit_max_delay_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            max_age_s: 7 * 24 * 3600,
            fsync: true,
            commit_max_records: 64,
            commit_max_bytes: 1024 * 1024,
            commit_max_delay_ms: 5,
        }
    }
}

/// A count that is either given or taken from the machine: `"auto"` or a number in the config
/// (`encoders.threads`, `encoders.runs_in_flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// The CPUs this process may use: [`std::thread::available_parallelism`], which honours
    /// the cgroup CPU quota (containers, systemd `CPUQuota=`) and the affinity mask.
    Auto,
    Count(usize),
}

/// The most either key accepts, and what `"auto"` is capped at.
pub const MAX_CORES: usize = 64;

impl Cores {
    /// The count to use: the number given, or the CPUs available now (at least 1).
    pub fn get(self) -> usize {
        match self {
            Cores::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_CORES),
            Cores::Count(n) => n,
        }
    }
}

impl std::fmt::Display for Cores {
    /// `auto (2)` or `2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cores::Auto => write!(f, "auto ({})", self.get()),
            Cores::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cores, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Cores;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a positive whole number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cores, E> {
                if s == "auto" {
                    Ok(Cores::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(s), &self))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Cores, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Cores, E> {
                // Range problems (0, too many) are reported by validation, with the path.
                Ok(Cores::Count(usize::try_from(n).unwrap_or(usize::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}
