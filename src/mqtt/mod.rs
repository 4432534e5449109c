//! MQTT: the broker address, the topic layout, payload encodings, the embedded broker and the
//! client connection shared by MQTT intake and publishing.

pub mod broker;
pub mod client;
pub mod discovery;
pub mod payload;
pub mod topics;

pub use client::{Incoming, MqttHandle};
pub use topics::Topics;

/// `mqtt://host:port` (port defaults to 1883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<BrokerAddr, String> {
        let rest = url
            .strip_prefix("mqtt://")
            .ok_or("expected \"embedded\" or mqtt://host[:port]")?
            .trim_end_matches('/');
        let parse_port = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port {p:?}"));
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or("unclosed '[' in host")?;
            match tail.strip_prefix(':') {
                Some(p) => (h, parse_port(p)?),
                None if tail.is_empty() => (h, 1883),
                None => return Err(format!("unexpected {tail:?} after host")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (rest, 1883),
            }
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            BrokerAddr::parse("mqtt://10.0.0.2:1884").unwrap(),
            BrokerAddr {
                host: "10.0.0.2".into(),
                port: 1884
            }
        );
        assert_eq!(BrokerAddr::parse("mqtt://broker.local").unwrap().port, 1883);
        assert_eq!(BrokerAddr::parse("mqtt://[::1]:1999").unwrap().host, "::1");
        assert!(BrokerAddr::parse("tcp://x").is_err());
        assert!(BrokerAddr::parse("mqtt://:12").is_err());
        assert!(BrokerAddr::parse("mqtt://h:notaport").is_err());
    }
}
