//! MQTT: the broker address, the topic layout, payload encodings, the embedded broker and the
//! client connection shared by MQTT intake and publishing.

pub mod ack;
pub mod broker;
pub mod client;
pub mod discovery;
pub mod payload;
pub mod security;
pub mod topics;

pub use client::{Incoming, MqttHandle, Received};
pub use topics::Topics;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            BrokerAddr::parse("mqtt://10.0.0.2:1884").unwrap(),
            BrokerAddr {
                host: "10.0.0.2".into(),
                port: 1884,
                tls: false,
            }
        );
        let s = BrokerAddr::parse("mqtts://broker.example").unwrap();
        assert_eq!((s.port, s.tls), (8883, true));
        assert_eq!(BrokerAddr::parse("mqtt://broker.local").unwrap().port, 1883);
        assert_eq!(BrokerAddr::parse("mqtt://[::1]:1999").unwrap().host, "::1");
        assert!(BrokerAddr::parse("tcp://x").is_err());
        assert!(BrokerAddr::parse("mqtt://:12").is_err());
        assert!(BrokerAddr::parse("mqtt://h:notaport").is_err());
    }
}
