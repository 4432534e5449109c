// Over 600 lines because of its tests (~700 of ~1180): the pure delivery state is tested alone.
//! MQTT delivery as pure state (rumqttc's `MqttState` habit): what the connection sends, in
//! which order, and what each acknowledgement means, with no I/O. The event loop
//! (`client.rs`) turns rumqttc's events into calls here, then carries out the [`Action`]s it
//! polls ([`Outbox::poll`]) until there are none; the tests below drive the type alone.
//!
//! What it owns:
//! - **The in-flight window.** A spooled result is handed to rumqttc only while fewer than
//!   [`WINDOW`] of our QoS ≥ 1 publishes await a packet id or (records) an acknowledgement;
//!   the rest wait in the spool.
//! - **The packet-id map.** rumqttc assigns packet ids in the order publishes are handed to it
//!   and reports each as it goes out ([`Outbox::packet_id`]), so the ids map back to spool
//!   records in that order. PubAck (PubComp at QoS 2) of a record yields
//!   [`Action::Delivered`]: the spool removes it, in any order the broker acknowledges.
//! - **The replay cursor.** The last spool record handed to rumqttc on this connection.
//!   rumqttc cannot say which publish a connection error lost (rumqtt#349), so each connection
//!   starts again from the oldest unacknowledged record: everything a lost connection left
//!   unacknowledged is sent again, in order (at-least-once), and records that existed before
//!   the connection are flagged `historical`.
//! - **What a connection starts with.** Subscriptions, `online` on the availability topic,
//!   and the Home Assistant discovery configs: once per connect, and again whenever Home
//!   Assistant announces `online` on its status topic.
//! - **Backoff** between connection attempts: 0.5 s doubling to 30 s, plus up to a quarter of
//!   jitter so a fleet does not reconnect in step.
//!
//! Inputs keep their receive-order ack state in `ack.rs`; the outbox says when their acks may
//! go out ([`Action::AckInputs`]: while connected, and before a clean stop).
//!
//! Bounds: records in flight ≤ [`WINDOW`]; the packet-id map and the queue of ids to come hold
//! at most the window plus the publishes one connect or one stop announces (availability and
//! the discovery configs); the action queue is drained by the event loop after every event.
//!
//! Length: about 480 lines of code; the rest of the file is its unit tests, which need a fake
//! spool and a fake rumqttc request channel and stay beside the code they drive.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

use super::discovery::Discovery;
use super::spool::{self, Record, Spool, SpoolError};

/// At most this many of our QoS ≥ 1 publishes are in flight (handed to rumqttc, not yet
/// acknowledged); spooled results start only while there is room.
pub const WINDOW: usize = 16;
/// First delay after a failed connection attempt.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The delay doubles per failed attempt up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the outbox reads from the spool: its unacknowledged records, oldest first.
/// [`Spool`] implements it with its own functions; tests use a map.
pub trait Pending {
    /// The first unacknowledged record after `after` (or the first of all).
    fn next_after(&self, after: Option<u64>) -> Option<u64>;
    fn read(&self, seq: u64) -> Result<Record, SpoolError>;
}

impl Pending for Spool {
    fn next_after(&self, after: Option<u64>) -> Option<u64> {
        Spool::next_after(self, after)
    }

    fn read(&self, seq: u64) -> Result<Record, SpoolError> {
        Spool::read(self, seq)
    }
}

/// What a publish is, for the window and for the log when rumqttc refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `online` on the availability topic.
    Online,
    /// One Home Assistant discovery config.
    Discovery,
    /// `stopped` on the availability topic (clean stop).
    Stopped,
    /// A spooled result; `historical` when it existed before this connection.
    Record { seq: u64, historical: bool },
}

/// A publish to hand to rumqttc, exactly as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// `None`: sent without a properties section (availability, discovery).
    pub properties: Option<PublishProperties>,
    pub kind: Kind,
}

/// What the event loop does next. Publish and subscribe use rumqttc's `try_*` calls (the loop
/// drains rumqttc's request channel itself, so it must never wait for room there); a refused
/// publish goes back with [`Outbox::refused`].
#[derive(Debug)]
pub enum Action {
    Subscribe {
        filter: String,
        qos: QoS,
    },
    Publish(Publish),
    /// Send the PubAcks of the inputs completed so far, in receive order (`AckTracker`).
    AckInputs,
    /// The broker acknowledged this spool record: remove it from the spool.
    Delivered(u64),
    /// This spool record cannot be read back and never will be: drop it from the spool.
    Discard {
        seq: u64,
        error: SpoolError,
    },
    /// Disconnect cleanly (after a stop).
    Disconnect,
}

/// The broker's acknowledgement of one of our publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    PubComp,
}

/// What a message on a subscription is to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// An input for the intake.
    Intake,
    /// Home Assistant's status topic, `online`: discovery is announced again.
    HomeAssistantOnline,
    /// Home Assistant's status topic, anything else.
    HomeAssistantOther,
}

/// A lost connection (or a failed attempt) and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Whether a connection was up (else an attempt failed).
    pub was_connected: bool,
    /// The backoff step, without jitter.
    pub backoff: Duration,
    /// How long to wait before the next attempt: `backoff` plus jitter.
    pub wait: Duration,
}

/// Counters the event loop mirrors into `Counters` for the `stats` topic and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub connected: bool,
    /// Connection attempts, failed or not (the first is counted at creation).
    pub connect_attempts: u64,
    /// Successful connections after the first.
    pub reconnects: u64,
    /// Spooled results sent again after a reconnect or restart.
    pub replayed: u64,
    /// Home Assistant discovery announcements (each is the whole set of configs).
    pub discovery_announcements: u64,
}

/// What the outbox needs to know about the connection; fixed for its life.
#[derive(Debug, Clone)]
pub struct Settings {
    /// QoS of subscriptions and of spooled results.
    pub qos: QoS,
    /// Send MQTT 5 publish properties with spooled results.
    pub properties: bool,
    /// The availability topic (`online`, `stopped`; the last will says `offline`).
    pub available: String,
    /// Topic filters subscribed on every connect.
    pub subscriptions: Vec<String>,
    /// Home Assistant discovery to announce on connect.
    pub discovery: Option<Discovery>,
}

/// Delivery state of one MQTT client. See the module documentation.
pub struct Outbox {
    settings: Settings,
    counts: Counts,
    ever_connected: bool,
    backoff: Duration,
    /// Last spool record handed to rumqttc on this connection.
    cursor: Option<u64>,
    /// Records up to this sequence number existed before this connection: they are replays.
    replay_until: u64,
    /// Our QoS ≥ 1 publishes handed to rumqttc, in order, not yet given a packet id:
    /// `Some(seq)` for spool records, `None` for availability and discovery.
    awaiting_id: VecDeque<Option<u64>>,
    /// Packet id → spool record, sent and not yet acknowledged.
    in_flight: HashMap<u16, u64>,
    /// Actions other than spooled records, in order.
    queue: VecDeque<Action>,
    /// The cursor before the last record polled, restored when rumqttc refuses that record.
    cursor_before: Option<u64>,
    /// rumqttc refused a record in this drive: no more records until [`Outbox::poll`] next
    /// returns `None`.
    stalled: bool,
    /// This drive's [`Action::AckInputs`] was polled.
    acks_polled: bool,
}

impl Outbox {
    /// A connection attempt starts at once (rumqttc connects on its first poll): counted here.
    pub fn new(settings: Settings) -> Outbox {
        Outbox {
            settings,
            counts: Counts {
                connect_attempts: 1,
                ..Counts::default()
            },
            ever_connected: false,
            backoff: BACKOFF_MIN,
            cursor: None,
            replay_until: 0,
            awaiting_id: VecDeque::new(),
            in_flight: HashMap::new(),
            queue: VecDeque::new(),
            cursor_before: None,
            stalled: false,
            acks_polled: false,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn is_connected(&self) -> bool {
        self.counts.connected
    }

    /// Connected, and the window has room for another spooled result.
    pub fn has_room(&self) -> bool {
        self.counts.connected && self.in_window() < WINDOW
    }

    fn in_window(&self) -> usize {
        self.awaiting_id.len() + self.in_flight.len()
    }

    /// Packet ids of the window belong to one connection.
    fn forget_connection(&mut self) {
        self.counts.connected = false;
        self.cursor = None;
        self.awaiting_id.clear();
        self.in_flight.clear();
        self.cursor_before = None;
    }

    /// ConnAck. `last_seq` is the spool's highest sequence number so far
    /// ([`Spool::last_seq`]): records up to it are replays.
    pub fn connected(&mut self, last_seq: u64) {
        self.backoff = BACKOFF_MIN;
        if self.ever_connected {
            self.counts.reconnects += 1;
        }
        self.ever_connected = true;
        self.forget_connection();
        self.counts.connected = true;
        self.replay_until = last_seq;
        let qos = self.settings.qos;
        for filter in &self.settings.subscriptions {
            self.queue.push_back(Action::Subscribe {
                filter: filter.clone(),
                qos,
            });
        }
        if let Some(d) = &self.settings.discovery {
            self.queue.push_back(Action::Subscribe {
                filter: d.status_topic.clone(),
                qos: QoS::AtLeastOnce,
            });
        }
        self.queue
            .push_back(self.availability("online", Kind::Online));
        self.announce();
    }

    fn availability(&self, state: &'static str, kind: Kind) -> Action {
        Action::Publish(Publish {
            topic: self.settings.available.clone(),
            payload: Bytes::from_static(state.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            kind,
        })
    }

    /// Queue the retained Home Assistant discovery configs.
    fn announce(&mut self) {
        let Some(d) = &self.settings.discovery else {
            return;
        };
        for (topic, body) in &d.messages {
            self.queue.push_back(Action::Publish(Publish {
                topic: topic.clone(),
                payload: Bytes::from(body.clone()),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: None,
                kind: Kind::Discovery,
            }));
        }
        self.counts.discovery_announcements += 1;
    }

    /// The connection was lost or an attempt failed. Returns how long to wait before the next
    /// attempt; `jitter` is any random number (it picks the jitter within its bound).
    pub fn lost(&mut self, jitter: u16) -> Retry {
        let was_connected = self.counts.connected;
        self.forget_connection();
        let backoff = self.backoff;
        // Up to a quarter of the delay again, so a fleet does not reconnect in step.
        let spread = (backoff.as_millis() as u64 / 4).max(1);
        let wait = backoff + Duration::from_millis(u64::from(jitter) % spread);
        self.backoff = (backoff * 2).min(BACKOFF_MAX);
        Retry {
            was_connected,
            backoff,
            wait,
        }
    }

    /// The wait after [`Outbox::lost`] is over: the next attempt starts.
    pub fn retrying(&mut self) {
        self.counts.connect_attempts += 1;
    }

    /// A message arrived on a subscription: is it Home Assistant's status?
    pub fn inbound(&mut self, topic: &str, payload: &[u8]) -> Inbound {
        let status = self
            .settings
            .discovery
            .as_ref()
            .is_some_and(|d| d.status_topic == topic);
        if !status {
            return Inbound::Intake;
        }
        if payload != b"online" {
            return Inbound::HomeAssistantOther;
        }
        // Home Assistant restarted: it forgets non-retained state, so announce again.
        self.announce();
        Inbound::HomeAssistantOnline
    }

    /// rumqttc sent one of our publishes with this packet id (0 for QoS 0, which is ignored).
    pub fn packet_id(&mut self, pkid: u16) {
        if pkid == 0 {
            return;
        }
        if let Some(Some(seq)) = self.awaiting_id.pop_front() {
            self.in_flight.insert(pkid, seq);
        }
    }

    /// The broker acknowledged packet `pkid`. A record is delivered on the acknowledgement
    /// that ends its QoS flow: PubAck at QoS 1, PubComp at QoS 2.
    pub fn acked(&mut self, pkid: u16, ack: Ack) {
        let final_ack = match ack {
            Ack::PubAck => self.settings.qos == QoS::AtLeastOnce,
            Ack::PubComp => self.settings.qos == QoS::ExactlyOnce,
        };
        if !final_ack {
            return;
        }
        if let Some(seq) = self.in_flight.remove(&pkid) {
            self.queue.push_back(Action::Delivered(seq));
        }
    }

    /// Clean stop: acks queued so far go out (when connected), then `stopped` (retained) and a
    /// disconnect.
    pub fn stop(&mut self) {
        if self.counts.connected {
            self.queue.push_back(Action::AckInputs);
        }
        self.queue
            .push_back(self.availability("stopped", Kind::Stopped));
        self.queue.push_back(Action::Disconnect);
    }

    /// The next thing to do, or `None` when done for now. Queued actions first, then (while
    /// connected and the window has room) spooled records after the cursor, oldest first, then
    /// one [`Action::AckInputs`] while connected (it also retries acks that found rumqttc's
    /// request channel full). A publish counts as handed over when polled: give a refused one
    /// back with [`Outbox::refused`] before polling again.
    pub fn poll(&mut self, spool: Option<&dyn Pending>) -> Option<Action> {
        if let Some(a) = self.queue.pop_front() {
            if let Action::Publish(p) = &a {
                self.handed_over(p.kind);
            }
            return Some(a);
        }
        if !self.stalled && self.has_room() {
            if let Some(a) = spool.and_then(|s| self.next_record(s)) {
                return Some(a);
            }
        }
        if self.counts.connected && !self.acks_polled {
            self.acks_polled = true;
            return Some(Action::AckInputs);
        }
        self.stalled = false;
        self.acks_polled = false;
        None
    }

    fn next_record(&mut self, spool: &dyn Pending) -> Option<Action> {
        let seq = spool.next_after(self.cursor)?;
        let rec = match spool.read(seq) {
            Ok(r) => r,
            Err(error) => {
                // A record that cannot be read now will not become readable: drop it.
                self.cursor = Some(seq);
                return Some(Action::Discard { seq, error });
            }
        };
        let historical = seq <= self.replay_until;
        let kind = Kind::Record { seq, historical };
        let (topic, retain) = (rec.topic.clone(), rec.retain);
        let (payload, props) = outgoing(rec, historical, self.settings.properties);
        let p = Publish {
            topic,
            payload,
            qos: self.settings.qos,
            retain,
            properties: Some(props),
            kind,
        };
        self.handed_over(kind);
        Some(Action::Publish(p))
    }

    fn handed_over(&mut self, kind: Kind) {
        match kind {
            Kind::Record { seq, historical } => {
                self.awaiting_id.push_back(Some(seq));
                self.cursor_before = self.cursor;
                self.cursor = Some(seq);
                if historical {
                    self.counts.replayed += 1;
                }
            }
            Kind::Online | Kind::Discovery | Kind::Stopped => self.awaiting_id.push_back(None),
        }
    }

    /// rumqttc refused the publish just polled (its request channel is full). Availability
    /// and discovery are given up (the loop logs them); a record stays in the spool and is
    /// polled again on the next drive.
    pub fn refused(&mut self, kind: Kind) {
        self.awaiting_id.pop_back();
        if let Kind::Record { historical, .. } = kind {
            self.cursor = self.cursor_before;
            if historical {
                self.counts.replayed = self.counts.replayed.saturating_sub(1);
            }
            self.stalled = true;
        }
    }
}

/// The payload and properties a spooled record is sent with.
fn outgoing(rec: Record, historical: bool, properties: bool) -> (Bytes, PublishProperties) {
    let mut payload = rec.payload;
    let mut user_properties = rec.user_properties;
    if historical {
        match spool::mark_historical(&payload) {
            Some(p) => payload = p,
            None => user_properties.push(("historical".into(), "true".into())),
        }
    }
    let props = if properties {
        PublishProperties {
            content_type: rec.content_type,
            correlation_data: rec.correlation,
            user_properties,
            ..Default::default()
        }
    } else {
        PublishProperties::default()
    };
    (payload, props)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// The spool as the outbox sees it: unacknowledged records by sequence number.
    #[derive(Default)]
    struct FakeSpool {
        records: BTreeMap<u64, Record>,
        corrupt: BTreeSet<u64>,
        last: u64,
    }

    impl FakeSpool {
        fn append(&mut self, id: &str) -> u64 {
            self.last += 1;
            self.records.insert(
                self.last,
                Record {
                    topic: "edgefuse/dev/embedding/text".into(),
                    payload: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
                    content_type: Some("application/json".into()),
                    ..Default::default()
                },
            );
            self.last
        }
    }

    impl Pending for FakeSpool {
        fn next_after(&self, after: Option<u64>) -> Option<u64> {
            let from = after.map_or(0, |a| a + 1);
            self.records.range(from..).next().map(|(s, _)| *s)
        }

        fn read(&self, seq: u64) -> Result<Record, SpoolError> {
            if self.corrupt.contains(&seq) {
                return Err(SpoolError::Corrupt {
                    seq,
                    path: "fake.seg".into(),
                });
            }
            self.records
                .get(&seq)
                .cloned()
                .ok_or(SpoolError::Gone { seq })
        }
    }

    /// rumqttc as the event loop sees it: a request channel that takes `room` more publishes
    /// (unbounded when `None`) and hands out packet ids in order.
    #[derive(Default)]
    struct Wire {
        room: Option<usize>,
        /// Every publish rumqttc took, in order.
        sent: Vec<Publish>,
        /// Publishes taken, not yet given a packet id.
        unsent: VecDeque<Publish>,
        /// Packet id → the publish that carried it.
        carried: HashMap<u16, Publish>,
        next_pkid: u16,
        subscribed: Vec<String>,
        ack_flushes: usize,
        disconnected: bool,
        discarded: Vec<u64>,
    }

    impl Wire {
        /// What `client::carry_out` does, against the fakes.
        fn drive(&mut self, o: &mut Outbox, spool: &mut FakeSpool) {
            while let Some(a) = o.poll(Some(&*spool)) {
                match a {
                    Action::Subscribe { filter, .. } => self.subscribed.push(filter),
                    Action::Publish(p) => {
                        if self.room == Some(0) {
                            o.refused(p.kind);
                            continue;
                        }
                        self.room = self.room.map(|r| r - 1);
                        self.sent.push(p.clone());
                        self.unsent.push_back(p);
                    }
                    Action::AckInputs => self.ack_flushes += 1,
                    Action::Delivered(seq) => {
                        spool.records.remove(&seq);
                    }
                    Action::Discard { seq, .. } => {
                        self.discarded.push(seq);
                        spool.records.remove(&seq);
                    }
                    Action::Disconnect => self.disconnected = true,
                }
            }
        }

        /// rumqttc writes every publish taken so far, giving each a packet id.
        fn write(&mut self, o: &mut Outbox) {
            self.write_n(o, usize::MAX);
        }

        /// rumqttc writes the next `n` publishes taken.
        fn write_n(&mut self, o: &mut Outbox, n: usize) {
            for _ in 0..n {
                let Some(p) = self.unsent.pop_front() else {
                    break;
                };
                self.next_pkid += 1;
                o.packet_id(self.next_pkid);
                self.carried.insert(self.next_pkid, p);
            }
        }

        /// The packet id that carried spool record `seq` last.
        fn pkid_of(&self, seq: u64) -> u16 {
            let found = self
                .carried
                .iter()
                .filter(|(_, p)| matches!(p.kind, Kind::Record { seq: s, .. } if s == seq))
                .map(|(id, _)| *id)
                .max();
            found.unwrap_or_else(|| panic!("record {seq} was never written"))
        }

        /// Spool sequence numbers of the records taken since `from`, in order.
        fn records_since(&self, from: usize) -> Vec<u64> {
            self.sent[from..]
                .iter()
                .filter_map(|p| match p.kind {
                    Kind::Record { seq, .. } => Some(seq),
                    _ => None,
                })
                .collect()
        }

        fn kinds_since(&self, from: usize) -> Vec<Kind> {
            self.sent[from..].iter().map(|p| p.kind).collect()
        }
    }

    fn settings(qos: QoS, discovery: Option<Discovery>) -> Settings {
        Settings {
            qos,
            properties: true,
            available: "edgefuse/dev/available".into(),
            subscriptions: vec!["edgefuse/dev/in/#".into(), "edgefuse/dev/query".into()],
            discovery,
        }
    }

    fn discovery() -> Discovery {
        Discovery {
            status_topic: "homeassistant/status".into(),
            messages: vec![
                (
                    "homeassistant/sensor/edgefuse_dev/labels/config".into(),
                    "{\"name\":\"Labels\"}".into(),
                ),
                (
                    "homeassistant/binary_sensor/edgefuse_dev/status/config".into(),
                    "{\"name\":\"Status\"}".into(),
                ),
            ],
        }
    }

    fn ids(wire: &Wire, from: usize) -> Vec<String> {
        wire.sent[from..]
            .iter()
            .filter(|p| matches!(p.kind, Kind::Record { .. }))
            .map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_connect_subscribes_announces_online_then_sends_the_spool_oldest_first() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        for i in 0..3 {
            spool.append(&format!("r-{i}"));
        }
        wire.drive(&mut o, &mut spool);
        assert!(wire.sent.is_empty(), "nothing is sent before the ConnAck");
        o.connected(0);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.subscribed, ["edgefuse/dev/in/#", "edgefuse/dev/query"]);
        let online = &wire.sent[0];
        assert_eq!(
            (
                online.topic.as_str(),
                &online.payload[..],
                online.retain,
                online.qos
            ),
            (
                "edgefuse/dev/available",
                &b"online"[..],
                true,
                QoS::AtLeastOnce
            )
        );
        assert_eq!(online.properties, None);
        assert_eq!(ids(&wire, 0), ["r-0", "r-1", "r-2"]);
        assert_eq!(wire.ack_flushes, 1, "acks go out at the end of every drive");
        // Acknowledged one by one, the spool empties and nothing is sent again.
        wire.write(&mut o);
        for seq in 1..=3 {
            o.acked(wire.pkid_of(seq), Ack::PubAck);
        }
        let before = wire.sent.len();
        wire.drive(&mut o, &mut spool);
        assert!(spool.records.is_empty());
        assert_eq!(wire.sent.len(), before);
        assert_eq!(o.counts().replayed, 0);
    }

    #[test]
    fn a_record_goes_out_byte_for_byte_with_its_properties() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        o.connected(0);
        spool.last = 1;
        spool.records.insert(
            2,
            Record {
                topic: "edgefuse/dev/labels".into(),
                payload: Bytes::from_static(b"{\"a\":1}"),
                retain: true,
                content_type: Some("application/json".into()),
                correlation: Some(Bytes::from_static(b"\x00c")),
                user_properties: vec![("id".into(), "r-1".into())],
            },
        );
        wire.drive(&mut o, &mut spool);
        let p = wire.sent.last().unwrap();
        assert_eq!(p.topic, "edgefuse/dev/labels");
        assert_eq!(&p.payload[..], b"{\"a\":1}");
        assert!(p.retain);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(
            p.properties,
            Some(PublishProperties {
                content_type: Some("application/json".into()),
                correlation_data: Some(Bytes::from_static(b"\x00c")),
                user_properties: vec![("id".into(), "r-1".into())],
                ..Default::default()
            })
        );
        assert_eq!(
            p.kind,
            Kind::Record {
                seq: 2,
                historical: false
            }
        );

        // Without MQTT 5 properties (embedded broker) the same record carries none.
        let mut bare = Outbox::new(Settings {
            properties: false,
            ..settings(QoS::AtLeastOnce, None)
        });
        let mut wire = Wire::default();
        bare.connected(0);
        wire.drive(&mut bare, &mut spool);
        let p = wire.sent.last().unwrap();
        assert_eq!(&p.payload[..], b"{\"a\":1}");
        assert_eq!(p.properties, Some(PublishProperties::default()));
    }

    #[test]
    fn after_a_reconnect_every_unacknowledged_record_is_sent_again_in_order_and_no_acknowledged_one(
    ) {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        o.connected(0);
        for i in 1..=6 {
            spool.append(&format!("r-{i}"));
        }
        wire.drive(&mut o, &mut spool);
        // `online` and records 1-4 reach the wire; 5 and 6 are handed over but not yet
        // written when the connection drops.
        wire.write_n(&mut o, 5);
        o.acked(wire.pkid_of(2), Ack::PubAck);
        o.acked(wire.pkid_of(4), Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        let old_pkid = wire.pkid_of(1);
        let retry = o.lost(0);
        assert!(retry.was_connected);
        assert!(!o.has_room());
        wire.unsent.clear();

        spool.append("r-7"); // spooled while disconnected: existed before the next connection
        let from = wire.sent.len();
        o.connected(spool.last);
        spool.append("r-8"); // after the connection: new, not a replay
        wire.drive(&mut o, &mut spool);
        assert_eq!(
            ids(&wire, from),
            ["r-1", "r-3", "r-5", "r-6", "r-7", "r-8"],
            "unacknowledged records again, oldest first; 2 and 4 were delivered"
        );
        let historical: Vec<bool> = wire.sent[from..]
            .iter()
            .filter_map(|p| match p.kind {
                Kind::Record { historical, .. } => Some(historical),
                _ => None,
            })
            .collect();
        assert_eq!(historical, [true, true, true, true, true, false]);
        let first = wire.sent[from..]
            .iter()
            .find(|p| matches!(p.kind, Kind::Record { .. }))
            .unwrap();
        assert_eq!(&first.payload[..], b"{\"historical\":true,\"id\":\"r-1\"}");
        assert_eq!(o.counts().replayed, 5);
        assert_eq!(o.counts().reconnects, 1);

        // An ack for a packet id of the old connection means nothing now.
        let before = spool.records.len();
        o.acked(old_pkid, Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert_eq!(spool.records.len(), before);
        wire.write(&mut o);
        for seq in [1, 3, 5, 6, 7, 8] {
            o.acked(wire.pkid_of(seq), Ack::PubAck);
        }
        wire.drive(&mut o, &mut spool);
        assert!(
            spool.records.is_empty(),
            "every record delivered once acked"
        );
    }

    #[test]
    fn acknowledgements_in_any_order_remove_exactly_their_records() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        o.connected(0);
        for i in 1..=4 {
            spool.append(&format!("r-{i}"));
        }
        wire.drive(&mut o, &mut spool);
        wire.write(&mut o);
        o.acked(wire.pkid_of(3), Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert_eq!(spool.records.keys().copied().collect::<Vec<_>>(), [1, 2, 4]);
        o.acked(wire.pkid_of(1), Ack::PubAck);
        o.acked(wire.pkid_of(4), Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert_eq!(spool.records.keys().copied().collect::<Vec<_>>(), [2]);
        // A duplicate ack, or one for availability, changes nothing.
        o.acked(wire.pkid_of(3), Ack::PubAck);
        o.acked(1, Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert_eq!(spool.records.keys().copied().collect::<Vec<_>>(), [2]);
        let sent = wire.sent.len();
        o.acked(wire.pkid_of(2), Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert!(spool.records.is_empty());
        assert_eq!(wire.sent.len(), sent, "nothing was sent twice");
    }

    #[test]
    fn at_qos_2_a_record_is_delivered_on_pubcomp_not_before() {
        let mut o = Outbox::new(settings(QoS::ExactlyOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        o.connected(0);
        spool.append("r-1");
        wire.drive(&mut o, &mut spool);
        wire.write(&mut o);
        let pkid = wire.pkid_of(1);
        o.acked(pkid, Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert_eq!(spool.records.len(), 1);
        o.acked(pkid, Ack::PubComp);
        wire.drive(&mut o, &mut spool);
        assert!(spool.records.is_empty());

        // At QoS 1 a PubComp is not ours to act on.
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let mut wire = Wire::default();
        o.connected(0);
        spool.append("r-2");
        wire.drive(&mut o, &mut spool);
        wire.write(&mut o);
        o.acked(wire.pkid_of(2), Ack::PubComp);
        wire.drive(&mut o, &mut spool);
        assert_eq!(spool.records.len(), 1);
    }

    #[test]
    fn a_full_window_holds_further_records_in_the_spool_until_acks_make_room() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        o.connected(0);
        for i in 1..=40 {
            spool.append(&format!("r-{i}"));
        }
        wire.drive(&mut o, &mut spool);
        // `online` awaits its packet id in the window too.
        assert_eq!(wire.records_since(0).len(), WINDOW - 1);
        assert!(!o.has_room());
        wire.drive(&mut o, &mut spool);
        assert_eq!(
            wire.records_since(0).len(),
            WINDOW - 1,
            "full: nothing more"
        );
        // Once written, `online` leaves the window (its ack concerns no record).
        wire.write(&mut o);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.records_since(0).len(), WINDOW);
        assert!(!o.has_room());
        wire.write(&mut o);
        // Two acks, two more records, in order.
        let sent = wire.sent.len();
        o.acked(wire.pkid_of(5), Ack::PubAck);
        o.acked(wire.pkid_of(1), Ack::PubAck);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.records_since(sent), [17, 18]);
        assert!(!o.has_room());
        // Draining to the end sends each of the 40 exactly once.
        loop {
            wire.write(&mut o);
            let open: Vec<u64> = wire
                .carried
                .values()
                .filter_map(|p| match p.kind {
                    Kind::Record { seq, .. } if spool.records.contains_key(&seq) => Some(seq),
                    _ => None,
                })
                .collect();
            if open.is_empty() {
                break;
            }
            for seq in open {
                o.acked(wire.pkid_of(seq), Ack::PubAck);
            }
            wire.drive(&mut o, &mut spool);
        }
        assert!(spool.records.is_empty());
        assert_eq!(wire.records_since(0), (1..=40).collect::<Vec<u64>>());
    }

    #[test]
    fn records_the_full_spool_dropped_are_skipped_and_an_unreadable_one_is_discarded() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        o.connected(0);
        for i in 1..=20 {
            spool.append(&format!("r-{i}"));
        }
        wire.drive(&mut o, &mut spool);
        wire.write(&mut o);
        assert_eq!(wire.records_since(0), (1..=15).collect::<Vec<u64>>());
        // The spool reached `max_bytes` and dropped its oldest records: 1-3 in flight, 16-17
        // not yet sent. Record 19 turns out unreadable.
        for seq in [1, 2, 3, 16, 17] {
            spool.records.remove(&seq);
        }
        spool.corrupt.insert(19);
        // The broker still acknowledges the dropped in-flight records: harmless.
        for seq in [1, 2, 3] {
            o.acked(wire.pkid_of(seq), Ack::PubAck);
        }
        let from = wire.sent.len();
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.records_since(from), [18, 20]);
        assert_eq!(wire.discarded, [19]);
        assert_eq!(
            spool.records.keys().copied().collect::<Vec<_>>(),
            (4..=15).chain([18, 20]).collect::<Vec<u64>>()
        );
    }

    #[test]
    fn a_publish_rumqttc_refuses_waits_for_the_next_drive_and_keeps_its_place() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        for i in 1..=5 {
            spool.append(&format!("r-{i}"));
        }
        o.connected(spool.last);
        // The request channel takes `online` and two records, then is full.
        wire.room = Some(3);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.records_since(0), [1, 2]);
        assert_eq!(o.counts().replayed, 2, "a refused replay is not counted");
        wire.room = None;
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.records_since(0), [1, 2, 3, 4, 5]);
        assert_eq!(o.counts().replayed, 5);

        // A refused `online` is given up (logged), and takes no room in the window.
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let mut spool = FakeSpool::default();
        for i in 1..=20 {
            spool.append(&format!("r-{i}"));
        }
        let mut wire = Wire {
            room: Some(0),
            ..Wire::default()
        };
        o.connected(0);
        wire.drive(&mut o, &mut spool);
        assert!(wire.sent.is_empty());
        wire.room = None;
        wire.drive(&mut o, &mut spool);
        assert_eq!(
            wire.kinds_since(0).first(),
            Some(&Kind::Record {
                seq: 1,
                historical: false
            }),
            "`online` is not sent again"
        );
        assert_eq!(
            wire.records_since(0),
            (1..=WINDOW as u64).collect::<Vec<u64>>(),
            "the whole window for records"
        );
    }

    #[test]
    fn discovery_is_announced_once_per_connect_and_again_when_home_assistant_restarts() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, Some(discovery())));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        spool.append("r-1");
        o.connected(0);
        wire.drive(&mut o, &mut spool);
        assert_eq!(
            wire.subscribed,
            [
                "edgefuse/dev/in/#",
                "edgefuse/dev/query",
                "homeassistant/status"
            ]
        );
        assert_eq!(
            wire.kinds_since(0),
            [
                Kind::Online,
                Kind::Discovery,
                Kind::Discovery,
                Kind::Record {
                    seq: 1,
                    historical: false
                }
            ]
        );
        let config = &wire.sent[1];
        assert_eq!(
            (config.topic.as_str(), &config.payload[..]),
            (
                "homeassistant/sensor/edgefuse_dev/labels/config",
                &b"{\"name\":\"Labels\"}"[..]
            )
        );
        assert!(config.retain && config.properties.is_none());
        assert_eq!(o.counts().discovery_announcements, 1);
        // Later turns do not announce again.
        wire.write(&mut o);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.sent.len(), 4);

        // Home Assistant's birth message: announce again. Other status payloads and other
        // topics are not discovery's business.
        assert_eq!(
            o.inbound("homeassistant/status", b"offline"),
            Inbound::HomeAssistantOther
        );
        assert_eq!(
            o.inbound("edgefuse/dev/in/text", b"online"),
            Inbound::Intake
        );
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.sent.len(), 4);
        assert_eq!(
            o.inbound("homeassistant/status", b"online"),
            Inbound::HomeAssistantOnline
        );
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.kinds_since(4), [Kind::Discovery, Kind::Discovery]);
        assert_eq!(o.counts().discovery_announcements, 2);

        // A reconnect announces once more.
        o.lost(0);
        o.retrying();
        o.connected(spool.last);
        wire.drive(&mut o, &mut spool);
        assert_eq!(
            wire.kinds_since(6)[..3],
            [Kind::Online, Kind::Discovery, Kind::Discovery]
        );
        assert_eq!(o.counts().discovery_announcements, 3);

        // Without discovery, the status topic is an ordinary input topic.
        let mut plain = Outbox::new(settings(QoS::AtLeastOnce, None));
        assert_eq!(
            plain.inbound("homeassistant/status", b"online"),
            Inbound::Intake
        );
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_with_up_to_a_quarter_of_jitter() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        assert_eq!(o.counts().connect_attempts, 1);
        let mut steps = Vec::new();
        for _ in 0..9 {
            let r = o.lost(0);
            assert!(!r.was_connected);
            assert_eq!(r.wait, r.backoff, "no jitter drawn");
            steps.push(r.backoff.as_millis());
            o.retrying();
        }
        assert_eq!(
            steps,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(o.counts().connect_attempts, 10);
        assert_eq!(o.counts().reconnects, 0);

        // A connection resets the backoff; losing it says so.
        o.connected(0);
        assert!(o.counts().connected);
        let r = o.lost(u16::MAX);
        assert!(r.was_connected && !o.counts().connected);
        assert_eq!(r.backoff, BACKOFF_MIN);
        // Jitter stays below a quarter of the step: 65535 % 125 ms.
        assert_eq!(r.wait, BACKOFF_MIN + Duration::from_millis(65535 % 125));
        for jitter in [1u16, 124, 125, 999, u16::MAX] {
            let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
            let r = o.lost(jitter);
            assert!(r.wait >= r.backoff && r.wait < r.backoff + r.backoff / 4);
        }
        o.connected(0);
        assert_eq!(o.counts().reconnects, 1);
    }

    #[test]
    fn a_clean_stop_sends_pending_acks_then_stopped_then_disconnects() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let mut spool = FakeSpool::default();
        o.connected(0);
        while o.poll(Some(&spool)).is_some() {}
        o.stop();
        let mut actions = Vec::new();
        while let Some(a) = o.poll(Some(&spool)) {
            actions.push(a);
        }
        assert!(matches!(actions[0], Action::AckInputs));
        match &actions[1] {
            Action::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), &p.payload[..], p.retain, p.kind),
                    (
                        "edgefuse/dev/available",
                        &b"stopped"[..],
                        true,
                        Kind::Stopped
                    )
                );
            }
            other => panic!("expected `stopped`, got {other:?}"),
        }
        assert!(matches!(actions[2], Action::Disconnect));

        // Not connected: no acks to send (their packet ids are void), still `stopped`.
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let mut wire = Wire::default();
        o.stop();
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.ack_flushes, 0);
        assert_eq!(wire.kinds_since(0), [Kind::Stopped]);
        assert!(wire.disconnected);
    }

    #[test]
    fn input_acks_go_out_only_while_connected() {
        let mut o = Outbox::new(settings(QoS::AtLeastOnce, None));
        let (mut spool, mut wire) = (FakeSpool::default(), Wire::default());
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.ack_flushes, 0);
        o.connected(0);
        wire.drive(&mut o, &mut spool);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.ack_flushes, 2, "once per drive");
        o.lost(0);
        wire.drive(&mut o, &mut spool);
        assert_eq!(wire.ack_flushes, 2);
    }
}
