//! One rumqttc (MQTT 5) connection shared by intake and publishing. The event loop runs on its
//! own task and only moves packets: it turns rumqttc's events into calls on the delivery state
//! (`outbox::Outbox`, no I/O: the window, packet ids, replay cursor, what a connect announces,
//! backoff) and carries out the actions that state asks for. It re-subscribes and announces
//! `online` (and Home Assistant discovery) on every connect, backs off exponentially with
//! jitter while the broker is unreachable, and hands incoming publishes to a bounded channel
//! (when the channel is full the loop waits: back-pressure reaches the broker over TCP).
//!
//! Store-and-forward: results are appended to the spool (`mqtt::spool`) by the publisher and
//! sent from the spool by this loop only, which maps each packet id rumqttc assigns back to its
//! spool record and removes the record on PubAck (PubComp at QoS 2). rumqttc cannot say which
//! publish a connection error lost (rumqtt#349), so the spool, not rumqttc, decides what was
//! delivered: after a reconnect everything unacknowledged is sent again, in order, flagged
//! `historical`. Every QoS ≥ 1 publish goes through this task so the id mapping stays exact;
//! other tasks publish at QoS 0.
//!
//! Inputs are acknowledged manually (`ack`): each QoS ≥ 1 input travels with a ticket, and this
//! loop sends the PubAcks, in receive order, once their inputs' outcomes are durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::ack::{AckTracker, Ticket, RECEIVE_MAXIMUM};
use super::discovery::Discovery;
use super::outbox::{Ack, Action, Counts, Inbound, Kind, Outbox, Pending, Settings};
use super::spool::{self, Record, Spool, SpoolStats};
use super::Topics;

/// A message that arrived on one of our subscriptions.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
    pub content_type: Option<String>,
}

/// An incoming message and its claim on a PubAck (complete it once its outcome is durable).
#[derive(Debug)]
pub struct Received {
    pub msg: Incoming,
    pub ticket: Ticket,
}

#[derive(Clone)]
pub struct MqttHandle {
    client: AsyncClient,
    pub topics: Topics,
    pub qos: QoS,
    /// False on the embedded broker: rumqttd cannot forward MQTT 5 properties to its
    /// MQTT 3.1.1 listener (it panics on them), so none are sent there.
    properties: bool,
    spool: Option<Arc<SharedSpool>>,
    pub counters: Arc<Counters>,
    control: mpsc::Sender<Control>,
    /// Inputs received and not yet acknowledged.
    acks: AckTracker,
}

/// The spool shared by the publisher (appends) and the event loop (sends, acks).
struct SharedSpool {
    spool: Mutex<Spool>,
    wake: Notify,
}

/// Connection counters for the `stats` topic and the tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicBool,
    /// TCP/MQTT connection attempts, failed or not.
    pub connect_attempts: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Turns of the event loop (a busy loop would make this climb).
    pub loop_turns: AtomicU64,
    /// Spooled results sent again after a reconnect or restart.
    pub replayed: AtomicU64,
    /// Home Assistant discovery announcements (each is the whole set of configs).
    pub discovery_announcements: AtomicU64,
    /// Signalled on every ConnAck, so `stats` goes out right after (re)connecting instead of
    /// up to `stats.interval_s` later. One stored permit: a connect before the stats task
    /// waits is not lost.
    pub on_connect: Notify,
}

impl Counters {
    /// Copy the outbox's counts (only the event loop writes them).
    fn mirror(&self, c: Counts) {
        self.connected.store(c.connected, Ordering::Relaxed);
        self.connect_attempts
            .store(c.connect_attempts, Ordering::Relaxed);
        self.reconnects.store(c.reconnects, Ordering::Relaxed);
        self.replayed.store(c.replayed, Ordering::Relaxed);
        self.discovery_announcements
            .store(c.discovery_announcements, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CountersSnapshot {
    pub connected: bool,
    pub connect_attempts: u64,
    pub reconnects: u64,
    pub replayed: u64,
    /// Inputs received and not yet acknowledged to the broker (at most the Receive Maximum).
    pub unacked_inputs: usize,
}

enum Control {
    /// Announce a clean stop (retained) and disconnect.
    Stop,
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
    /// Store-and-forward for results (QoS ≥ 1 only).
    pub spool: Option<Spool>,
    /// Home Assistant discovery to announce on connect.
    pub discovery: Option<Discovery>,
}

impl ConnectSettings {
    /// A plain-TCP QoS 1 session to `host:port` with MQTT 5 properties, no credentials, spool or
    /// discovery; set the rest with struct update syntax.
    pub fn plain(host: &str, port: u16, client_id: &str) -> ConnectSettings {
        ConnectSettings {
            host: host.to_owned(),
            port,
            client_id: client_id.to_owned(),
            keepalive: Duration::from_secs(30),
            clean_start: true,
            credentials: None,
            qos: 1,
            max_payload_bytes: 1 << 20,
            incoming_capacity: 16,
            properties: true,
            tls: None,
            spool: None,
            discovery: None,
        }
    }
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
    mpsc::Receiver<Received>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
    opts.set_keep_alive(s.keepalive);
    opts.set_clean_start(s.clean_start);
    // An input is acknowledged once its result is durable, not on arrival (see `ack`). The
    // Receive Maximum bounds how many the broker sends before we acknowledge.
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(RECEIVE_MAXIMUM));
    if !s.clean_start {
        // MQTT 5 ends a session at disconnect unless it has an expiry: keep it a day.
        opts.set_session_expiry_interval(Some(24 * 3600));
    }
    opts.set_max_packet_size(Some(s.max_payload_bytes.saturating_add(64 * 1024) as u32));
    // Results are small packets sent one at a time: without TCP_NODELAY, Nagle holds each one
    // until the broker's delayed ACK for the previous one (up to 40 ms on Linux).
    let mut net = opts.network_options();
    net.set_tcp_nodelay(true);
    opts.set_network_options(net);
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
    let (control, control_rx) = mpsc::channel(4);
    let spool = s.spool.filter(|_| qos != QoS::AtMostOnce).map(|spool| {
        Arc::new(SharedSpool {
            spool: Mutex::new(spool),
            wake: Notify::new(),
        })
    });
    let handle = MqttHandle {
        client,
        topics,
        qos,
        properties: s.properties,
        spool,
        counters: Arc::new(Counters::default()),
        control,
        acks: AckTracker::default(),
    };
    let outbox = Outbox::new(Settings {
        qos,
        properties: s.properties,
        available: handle.topics.available(),
        subscriptions: handle.topics.subscriptions().to_vec(),
        discovery: s.discovery,
    });
    let task = tokio::spawn(run_event_loop(
        eventloop,
        handle.clone(),
        outbox,
        tx,
        control_rx,
        stop,
    ));
    (handle, rx, task)
}

async fn run_event_loop(
    mut eventloop: EventLoop,
    handle: MqttHandle,
    mut outbox: Outbox,
    tx: mpsc::Sender<Received>,
    mut control: mpsc::Receiver<Control>,
    stop: CancellationToken,
) {
    // Not `interval`: its first tick is immediate, and a branch that wins the select! while
    // rumqttc is connecting drops that connection half made. rumqttd then fires its last will,
    // a retained `offline` that subscribers saw before the `online` (tests: daemon.rs, early_subscribers_…).
    let every = Duration::from_secs(10);
    let mut expire = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = handle.counters.clone();
    counters.mirror(outbox.counts());
    loop {
        counters.loop_turns.fetch_add(1, Ordering::Relaxed);
        let room = outbox.has_room();
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            Some(c) = control.recv() => {
                match c {
                    Control::Stop => outbox.stop(),
                }
                None
            }
            _ = handle.acks.changed(), if outbox.is_connected() => None,
            _ = wait_for_records(&handle.spool), if room => None,
            _ = expire.tick(), if handle.spool.is_some() => {
                if let Some(s) = &handle.spool {
                    lock(&s.spool).expire(spool::now_ms());
                }
                None
            }
            ev = eventloop.poll() => Some(ev),
        };
        match event {
            None => {}
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                // Publishes left over from the last connection (resumed sessions): the spool
                // resends results itself, and availability is announced afresh. Acks left
                // over name the old connection's packet ids: the broker resends those inputs,
                // which get tickets of their own.
                eventloop.pending.retain(|r| {
                    !matches!(
                        r,
                        Request::Publish(_) | Request::PubAck(_) | Request::PubRec(_)
                    )
                });
                handle.acks.reset();
                let last_seq = handle
                    .spool
                    .as_ref()
                    .map_or(0, |s| lock(&s.spool).last_seq());
                outbox.connected(last_seq);
                counters.mirror(outbox.counts());
                counters.on_connect.notify_one();
                tracing::info!("connected to the MQTT broker");
            }
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let ticket = handle.acks.receive(p.pkid, p.qos);
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                match outbox.inbound(&topic, &p.payload) {
                    Inbound::Intake => {
                        let props = p.properties.unwrap_or_default();
                        let msg = Incoming {
                            topic,
                            payload: p.payload,
                            response_topic: props.response_topic,
                            correlation: props.correlation_data,
                            content_type: props.content_type,
                        };
                        // When the intake is gone, or at a stop, the ticket is dropped with
                        // the message.
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            sent = tx.send(Received { msg, ticket }) => if sent.is_err() { tracing::debug!("intake closed; dropping message") },
                        }
                    }
                    Inbound::HomeAssistantOnline => {
                        tracing::info!("Home Assistant is online; announcing discovery");
                        ticket.complete();
                    }
                    Inbound::HomeAssistantOther => ticket.complete(),
                }
            }
            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => outbox.packet_id(pkid),
            Some(Ok(Event::Incoming(Packet::PubAck(a)))) => outbox.acked(a.pkid, Ack::PubAck),
            Some(Ok(Event::Incoming(Packet::PubComp(c)))) => outbox.acked(c.pkid, Ack::PubComp),
            Some(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                tracing::info!("disconnected from the MQTT broker");
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let retry = outbox.lost(rand_u16());
                counters.mirror(outbox.counts());
                // rumqttc drops the PubAcks still queued; the broker resends those inputs.
                handle.acks.reset();
                let e = super::security::explain(&e);
                if retry.was_connected {
                    tracing::warn!("MQTT connection lost: {e}; reconnecting");
                } else {
                    let backoff = retry.backoff;
                    tracing::warn!("cannot reach the MQTT broker: {e}; retrying in {backoff:?}");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry.wait) => {}
                }
                outbox.retrying();
            }
        }
        carry_out(&handle, &mut outbox);
        counters.mirror(outbox.counts());
    }
    counters.connected.store(false, Ordering::Relaxed);
}

/// Carry out what the outbox asks for until it has nothing more for now. Only the event loop
/// calls it: it also drains rumqttc's request channel, so it never waits for room there.
fn carry_out(handle: &MqttHandle, outbox: &mut Outbox) {
    let mut spool = handle.spool.as_ref().map(|s| lock(&s.spool));
    while let Some(action) = outbox.poll(spool.as_deref().map(|s| s as &dyn Pending)) {
        match action {
            Action::Subscribe { filter, qos } => {
                if let Err(e) = handle.client.try_subscribe(filter.clone(), qos) {
                    tracing::warn!(%filter, "cannot subscribe: {e}");
                }
            }
            Action::Publish(p) => {
                let (kind, topic) = (p.kind, p.topic.clone());
                let sent = match p.properties {
                    Some(props) => handle
                        .client
                        .try_publish_with_properties(p.topic, p.qos, p.retain, p.payload, props),
                    None => handle
                        .client
                        .try_publish(p.topic, p.qos, p.retain, p.payload),
                };
                if let Err(e) = sent {
                    match kind {
                        Kind::Online => tracing::warn!("cannot announce availability: {e}"),
                        Kind::Discovery => {
                            tracing::warn!(%topic, "cannot announce discovery: {e}")
                        }
                        // A record waits in the spool for the next turn of the loop.
                        Kind::Stopped | Kind::Record { .. } => {}
                    }
                    outbox.refused(kind);
                }
            }
            Action::AckInputs => flush_acks(handle),
            Action::Delivered(seq) => {
                if let Some(s) = spool.as_mut() {
                    s.ack(seq);
                }
            }
            Action::Discard { seq, error } => {
                tracing::error!("{error}; dropping it");
                if let Some(s) = spool.as_mut() {
                    s.discard(seq);
                }
            }
            Action::Disconnect => {
                let _ = handle.client.try_disconnect();
            }
        }
    }
}

fn lock(m: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    // A panic while holding the lock leaves the spool consistent on disk; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn wait_for_records(spool: &Option<Arc<SharedSpool>>) {
    match spool {
        Some(s) => s.wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Send the PubAcks (PubRecs at QoS 2) of the completed prefix, in receive order. Only this task
/// calls it: it also drains rumqttc's request channel, so it must never wait for room there.
fn flush_acks(handle: &MqttHandle) {
    while let Some((pkid, qos)) = handle.acks.peek_ready() {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new("", qos, Bytes::new(), None);
        p.pkid = pkid;
        match handle.client.try_ack(&p) {
            Ok(()) => handle.acks.pop(),
            // The request channel is full: the next turn of the loop tries again.
            Err(_) => break,
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
    /// Publish now, not spooled: at QoS 0 when the spool is active (only the event loop sends
    /// QoS ≥ 1 then), else at the configured QoS. For stats and debug output, and for results
    /// when there is no spool.
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
        let qos = if self.spool.is_some() {
            QoS::AtMostOnce
        } else {
            self.qos
        };
        // Never wait for room: the event loop may itself be waiting for intake, which waits
        // for the publisher (a cycle). When rumqttc's request channel is full the message is
        // dropped with an error; results avoid this through the spool.
        self.client
            .try_publish_with_properties(topic, qos, retain, payload.into(), props)
    }

    /// Whether results go through the spool.
    pub fn spooling(&self) -> bool {
        self.spool.is_some()
    }

    /// Append a result to the spool; it is sent after [`MqttHandle::commit`]. Returns the
    /// record back when there is no spool or the append failed (publish it directly then).
    pub fn spool(&self, rec: Record) -> Result<(), Box<Record>> {
        let Some(o) = &self.spool else {
            return Err(Box::new(rec));
        };
        match lock(&o.spool).append(&rec, spool::now_ms()) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!("{e}; publishing without the spool");
                Err(Box::new(rec))
            }
        }
    }

    /// Make appended results durable, then let the event loop send them.
    pub fn commit(&self) {
        if let Some(o) = &self.spool {
            if let Err(e) = lock(&o.spool).sync() {
                tracing::error!("{e}");
            }
            o.wake.notify_one();
        }
    }

    /// Group commit: hand back the one fsync covering every result appended so far, to run off
    /// the async threads without the spool's lock, and with `send` let the event loop send
    /// those results now, before the fsync. The inputs behind them are acknowledged only after
    /// it has run (`sinks::publisher`).
    pub fn flush(&self, send: bool) -> Option<spool::SyncJob> {
        let o = self.spool.as_ref()?;
        let job = lock(&o.spool).take_sync().unwrap_or_else(|e| {
            tracing::error!("{e}");
            None
        });
        if send {
            o.wake.notify_one();
        }
        job
    }

    pub fn spool_stats(&self) -> Option<SpoolStats> {
        self.spool.as_ref().map(|o| lock(&o.spool).stats())
    }

    pub fn counters(&self) -> CountersSnapshot {
        let c = &self.counters;
        CountersSnapshot {
            connected: c.connected.load(Ordering::Relaxed),
            connect_attempts: c.connect_attempts.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            unacked_inputs: self.acks.len(),
        }
    }

    /// Wait (up to `deadline`) until the broker has acknowledged every spooled result, so a
    /// clean stop leaves nothing behind when the broker is reachable.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let Some(o) = &self.spool else { return };
        while tokio::time::Instant::now() < deadline {
            if lock(&o.spool).is_empty() || !self.counters.connected.load(Ordering::Relaxed) {
                return;
            }
            o.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shutdown began: inputs not processed from now on are not acknowledged, so the broker
    /// sends them again to the next run (with a persistent session).
    pub fn inputs_stopping(&self) {
        self.acks.stopping();
    }

    /// Inputs received and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.acks.len()
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
        let _ = self.control.send(Control::Stop).await;
    }
}
