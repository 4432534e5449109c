//! Manual acknowledgement of inputs. rumqttc would PubAck an input as soon as it arrives; then a
//! crash before its result reaches the spool loses an input the broker thinks delivered. Instead
//! every QoS ≥ 1 input gets a [`Ticket`], completed only when its outcome is durable or final
//! (result spooled or handed to rumqttc, `error` published, deliberately dropped). The event loop
//! then acks the completed prefix, in receive order, as MQTT requires (MQTT 5 4.6.0-2; rumqttd
//! disconnects a client that acks out of order).
//!
//! Bounded: the client announces a Receive Maximum ([`RECEIVE_MAXIMUM`]) and the broker must not
//! send more unacknowledged QoS ≥ 1 publishes than that, so the tracker holds about that many
//! entries per connection (mosquitto 2.0.11 at times sends one more; beyond it is logged). Entries are per connection: packet ids mean nothing on the next one,
//! so a reconnect starts a new generation and tickets of the old one complete into nothing (with a
//! persistent session the broker sends those inputs again; at-least-once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::Notify;

use crate::types::Settle;
pub use crate::types::Ticket;

/// Receive Maximum announced at connect: unacknowledged inputs the broker may send us at once.
/// Deep enough for the default queues to batch (text `max_batch` 16), small enough to bound
/// what a crash makes the broker send again.
pub const RECEIVE_MAXIMUM: u16 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending,
    Done,
    /// Dropped without being completed.
    Abandoned,
}

struct Entry {
    pkid: u16,
    qos: QoS,
    slot: Slot,
}

struct State {
    generation: u64,
    /// Sequence number of `entries[0]`.
    base: u64,
    /// This connection's unacknowledged inputs, in receive order.
    entries: VecDeque<Entry>,
    /// Once shutdown starts, an abandoned ticket is not acked: its input was never processed,
    /// and unacked the broker sends it again to the next run (persistent session).
    stopping: bool,
    /// Entries beyond which the next warning is logged (doubling, so the log stays short).
    warn_at: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

/// Receive-order tracker of the inputs not yet acknowledged. Cheap to clone (shared).
#[derive(Clone)]
pub struct AckTracker {
    shared: Arc<Shared>,
}

impl Default for AckTracker {
    fn default() -> Self {
        AckTracker {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    generation: 0,
                    base: 0,
                    entries: VecDeque::new(),
                    stopping: false,
                    warn_at: usize::from(RECEIVE_MAXIMUM),
                }),
                wake: Notify::new(),
            }),
        }
    }
}

impl AckTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: a panic elsewhere cannot tear it.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a publish just received; QoS 0 needs no ack and gets an empty ticket.
    pub fn receive(&self, pkid: u16, qos: QoS) -> Ticket {
        if qos == QoS::AtMostOnce {
            return Ticket::none();
        }
        let mut s = self.lock();
        if s.entries.len() >= s.warn_at {
            // The broker exceeds our Receive Maximum. Still tracked: acking early would break
            // the guarantee, and the broker's own window and queue bound what it sends.
            tracing::warn!(
                "the broker sent {} unacknowledged inputs, more than the Receive Maximum ({RECEIVE_MAXIMUM})",
                s.entries.len() + 1
            );
            s.warn_at = s.warn_at.saturating_mul(2);
        }
        let seq = s.base + s.entries.len() as u64;
        s.entries.push_back(Entry {
            pkid,
            qos,
            slot: Slot::Pending,
        });
        Ticket::new(Box::new(Held {
            shared: Arc::clone(&self.shared),
            generation: s.generation,
            seq,
        }))
    }

    /// The oldest input, if its ack may be sent now: `(packet id, QoS)`. Call
    /// [`AckTracker::pop`] once the ack is handed to rumqttc.
    pub fn peek_ready(&self) -> Option<(u16, QoS)> {
        let s = self.lock();
        let e = s.entries.front()?;
        let ready = match e.slot {
            Slot::Done => true,
            Slot::Abandoned => !s.stopping,
            Slot::Pending => false,
        };
        ready.then_some((e.pkid, e.qos))
    }

    pub fn pop(&self) {
        let mut s = self.lock();
        if s.entries.pop_front().is_some() {
            s.base += 1;
        }
    }

    /// A connection ended or began: its packet ids are void.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.base = 0;
        s.entries.clear();
        s.warn_at = usize::from(RECEIVE_MAXIMUM);
    }

    /// Shutdown: from now on only completed tickets are acked.
    pub fn stopping(&self) {
        self.lock().stopping = true;
        self.shared.wake.notify_one();
    }

    /// Inputs received and not yet acknowledged on this connection.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inputs whose ticket was completed and not yet popped (tests).
    #[cfg(test)]
    pub(crate) fn completed(&self) -> usize {
        let s = self.lock();
        s.entries.iter().filter(|e| e.slot == Slot::Done).count()
    }

    /// Resolves after a ticket completed (or shutdown began).
    pub async fn changed(&self) {
        self.shared.wake.notified().await
    }
}

struct Held {
    shared: Arc<Shared>,
    generation: u64,
    seq: u64,
}

impl Held {
    fn finish(self, slot: Slot) {
        {
            let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.generation != self.generation {
                return;
            }
            let Some(i) = self.seq.checked_sub(s.base) else {
                return;
            };
            if let Some(e) = usize::try_from(i).ok().and_then(|i| s.entries.get_mut(i)) {
                e.slot = slot;
            }
        }
        self.shared.wake.notify_one();
    }
}

impl Settle for Held {
    fn settle(self: Box<Self>, done: bool) {
        self.finish(if done { Slot::Done } else { Slot::Abandoned });
    }

    fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(t: &AckTracker) -> Vec<u16> {
        let mut acked = Vec::new();
        while let Some((pkid, _)) = t.peek_ready() {
            acked.push(pkid);
            t.pop();
        }
        acked
    }

    #[test]
    fn out_of_order_completions_are_acked_in_receive_order() {
        let t = AckTracker::default();
        let a = t.receive(7, QoS::AtLeastOnce);
        let b = t.receive(3, QoS::AtLeastOnce);
        let c = t.receive(9, QoS::ExactlyOnce);
        c.complete();
        assert_eq!(drain(&t), Vec::<u16>::new(), "9 waits for 7 and 3");
        a.complete();
        assert_eq!(drain(&t), vec![7]);
        b.complete();
        assert_eq!(drain(&t), vec![3, 9]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_dropped_ticket_completes_so_later_acks_are_not_held_back() {
        let t = AckTracker::default();
        let a = t.receive(1, QoS::AtLeastOnce);
        let b = t.receive(2, QoS::AtLeastOnce);
        b.complete();
        drop(a);
        assert_eq!(drain(&t), vec![1, 2]);
    }

    #[test]
    fn at_shutdown_a_dropped_ticket_is_not_acked_nor_anything_after_it() {
        let t = AckTracker::default();
        let a = t.receive(1, QoS::AtLeastOnce);
        let b = t.receive(2, QoS::AtLeastOnce);
        let c = t.receive(3, QoS::AtLeastOnce);
        a.complete();
        t.stopping();
        drop(b);
        c.complete();
        assert_eq!(
            drain(&t),
            vec![1],
            "2 was never processed: the broker sends 2 and 3 again"
        );
    }

    #[test]
    fn tickets_of_a_previous_connection_complete_into_nothing() {
        let t = AckTracker::default();
        let old = t.receive(5, QoS::AtLeastOnce);
        t.reset();
        // The broker resends packet 5 on the new connection (same id, a new delivery).
        let new = t.receive(5, QoS::AtLeastOnce);
        old.complete();
        assert_eq!(drain(&t), Vec::<u16>::new());
        new.complete();
        assert_eq!(drain(&t), vec![5]);
    }

    #[test]
    fn qos0_needs_no_ack() {
        let t = AckTracker::default();
        t.receive(0, QoS::AtMostOnce).complete();
        assert!(t.is_empty());
        assert_eq!(drain(&t), Vec::<u16>::new());
    }
}
