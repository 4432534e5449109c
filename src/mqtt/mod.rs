//! MQTT: the broker address, the topic layout, payload encodings, the embedded broker, the
//! client connection shared by MQTT intake and publishing, and the store-and-forward spool it
//! drives (`spool`: the publisher appends, the client replays and acks).

pub mod ack;
pub mod broker;
pub mod client;
pub mod discovery;
pub mod outbox;
pub mod payload;
pub mod security;
pub mod spool;
pub mod topics;

pub use crate::config::BrokerAddr;
pub use client::{Incoming, MqttHandle, Received};
pub use topics::Topics;

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
