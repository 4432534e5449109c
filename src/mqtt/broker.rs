//! The embedded broker (rumqttd): MQTT 3.1.1 on the configured address for users' clients
//! (`mosquitto_sub`, Home Assistant, …), and MQTT 5 on a private loopback port for the daemon
//! itself. Both listeners share one router, so messages flow between them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot start the embedded MQTT broker: {addr} is already in use. Stop the other \
         broker, or use it with mqtt.broker = \"mqtt://{addr}\", or set mqtt.embedded_listen"
    )]
    PortInUse { addr: SocketAddr },
    #[error("cannot start the embedded MQTT broker on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded MQTT broker config: {0}")]
    Config(String),
    #[error("the embedded MQTT broker did not start listening on {addr}")]
    NotListening { addr: SocketAddr },
}

/// Addresses of a running embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    /// MQTT 3.1.1, for users.
    pub public: SocketAddr,
    /// MQTT 5, loopback only, for the daemon's own client.
    pub internal: SocketAddr,
}

/// Start rumqttd on its own thread and wait until both listeners accept connections.
pub fn start(listen: SocketAddr, max_payload_bytes: usize) -> Result<EmbeddedBroker, BrokerError> {
    // Probe the public port first so a clash is reported clearly, not as a panic in rumqttd.
    match TcpListener::bind(listen) {
        Ok(l) => drop(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(BrokerError::PortInUse { addr: listen })
        }
        Err(source) => {
            return Err(BrokerError::Bind {
                addr: listen,
                source,
            })
        }
    }
    let internal = {
        let probe = SocketAddr::from(([127, 0, 0, 1], 0));
        let l = TcpListener::bind(probe).map_err(|source| BrokerError::Bind {
            addr: probe,
            source,
        })?;
        l.local_addr().map_err(|source| BrokerError::Bind {
            addr: probe,
            source,
        })?
    };
    // One public MQTT 3.1.1 listener for clients, one loopback MQTT 5 listener for the daemon.
    let listener = |section: &str, listen: &SocketAddr| {
        format!(
            r#"
[{section}]
name = "{name}"
listen = "{listen}"
next_connection_delay_ms = 1
  [{section}.connections]
  connection_timeout_ms = 60000
  max_payload_size = {max_payload_bytes}
  max_inflight_count = 500
  dynamic_filters = true
"#,
            name = section.split('.').next_back().unwrap_or(section),
        )
    };
    let config_text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
{}{}"#,
        listener("v4.public", &listen),
        listener("v5.internal", &internal),
    );
    let config: rumqttd::Config =
        toml::from_str(&config_text).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|e| BrokerError::Config(format!("cannot spawn the broker thread: {e}")))?;
    for addr in [listen, internal] {
        wait_listening(addr)?;
    }
    tracing::debug!(%listen, %internal, "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        public: listen,
        internal,
    })
}

fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening { addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_in_the_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = start(addr, 1 << 20).unwrap_err();
        assert!(matches!(err, BrokerError::PortInUse { .. }));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
