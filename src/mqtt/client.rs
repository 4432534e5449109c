//! One rumqttc (MQTT 5) connection shared by intake and publishing. The event loop runs on its
//! own task: it re-subscribes and announces `online` on every connect, backs off with jitter
//! while the broker is unreachable, and hands incoming publishes to a bounded channel (when
//! the channel is full the loop waits: back-pressure reaches the broker over TCP).

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Topics;

/// A message that arrived on one of our subscriptions.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
    pub content_type: Option<String>,
}

#[derive(Clone)]
pub struct MqttHandle {
    client: AsyncClient,
    pub topics: Topics,
    pub qos: QoS,
    /// False on the embedded broker: rumqttd cannot forward MQTT 5 properties to its
    /// MQTT 3.1.1 listener (it panics on them), so none are sent there.
    properties: bool,
}

pub struct ConnectSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keepalive: Duration,
    pub clean_start: bool,
    pub credentials: Option<(String, String)>,
    pub qos: u8,
    pub max_payload_bytes: usize,
    pub incoming_capacity: usize,
    /// Send MQTT 5 publish properties (content type, correlation, user properties).
    pub properties: bool,
    /// TLS (`mqtts://`), see `security::tls_config`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Create the client and spawn its event loop. The loop ends when `stop` is cancelled or after
/// a clean disconnect has been sent.
pub fn connect(
    s: ConnectSettings,
    topics: Topics,
    stop: CancellationToken,
) -> (
    MqttHandle,
    mpsc::Receiver<Incoming>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
    opts.set_keep_alive(s.keepalive);
    opts.set_clean_start(s.clean_start);
    opts.set_max_packet_size(Some(s.max_payload_bytes.saturating_add(64 * 1024) as u32));
    if let Some((user, pass)) = &s.credentials {
        opts.set_credentials(user, pass);
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let qos = qos(s.qos);
    opts.set_last_will(LastWill::new(
        topics.available(),
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, eventloop) = AsyncClient::new(opts, 256);
    let (tx, rx) = mpsc::channel(s.incoming_capacity.max(1));
    let handle = MqttHandle {
        client,
        topics,
        qos,
        properties: s.properties,
    };
    let task = tokio::spawn(run_event_loop(eventloop, handle.clone(), tx, stop));
    (handle, rx, task)
}

async fn run_event_loop(
    mut eventloop: EventLoop,
    handle: MqttHandle,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    let mut was_connected = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(500);
                was_connected = true;
                tracing::info!("connected to the MQTT broker");
                // try_* because this task is the one draining the request channel.
                for filter in handle.topics.subscriptions() {
                    if let Err(e) = handle.client.try_subscribe(filter.clone(), handle.qos) {
                        tracing::warn!(%filter, "cannot subscribe: {e}");
                    }
                }
                if let Err(e) = handle.client.try_publish(
                    handle.topics.available(),
                    QoS::AtLeastOnce,
                    true,
                    "online",
                ) {
                    tracing::warn!("cannot announce availability: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let props = p.properties.unwrap_or_default();
                let msg = Incoming {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    response_topic: props.response_topic,
                    correlation: props.correlation_data,
                    content_type: props.content_type,
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    sent = tx.send(msg) => if sent.is_err() { tracing::debug!("intake closed; dropping message") },
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("disconnected from the MQTT broker");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let e = super::security::explain(&e);
                if was_connected {
                    tracing::warn!("MQTT connection lost: {e}; reconnecting");
                } else {
                    tracing::warn!("cannot reach the MQTT broker: {e}; retrying in {backoff:?}");
                }
                was_connected = false;
                let jitter = Duration::from_millis(u64::from(rand_u16() % 250));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A little jitter without a random-number dependency.
fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

impl MqttHandle {
    pub async fn publish(
        &self,
        topic: String,
        payload: impl Into<Bytes>,
        retain: bool,
        props: PublishProperties,
    ) -> Result<(), rumqttc::v5::ClientError> {
        let props = if self.properties {
            props
        } else {
            PublishProperties::default()
        };
        self.client
            .publish_with_properties(topic, self.qos, retain, payload.into(), props)
            .await
    }

    /// Stop receiving inputs (used first thing at shutdown).
    pub async fn unsubscribe_all(&self) {
        for filter in self.topics.subscriptions() {
            if let Err(e) = self.client.unsubscribe(filter.clone()).await {
                tracing::debug!(%filter, "cannot unsubscribe: {e}");
            }
        }
    }

    /// Announce a clean stop (retained) and disconnect.
    pub async fn stop(&self) {
        let _ = self
            .client
            .publish(self.topics.available(), QoS::AtLeastOnce, true, "stopped")
            .await;
        let _ = self.client.disconnect().await;
    }
}
