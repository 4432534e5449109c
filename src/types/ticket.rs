//! An input's claim on an acknowledgement, neutral of where the input came from: requests
//! carry a [`Ticket`] along the pipeline, and the publisher completes it once the outcome is
//! durable. What completing means belongs to the source that owes the ack (the MQTT intake's
//! `mqtt::ack`), behind [`Settle`].

/// What a source does when a ticket is completed or dropped.
pub trait Settle: Send + Sync {
    /// `done`: completed (the outcome is durable or final); `false`: dropped uncompleted
    /// (abandoned by a path that lost it).
    fn settle(self: Box<Self>, done: bool);

    /// A short name for logs and `Debug` (e.g. the ack sequence number).
    fn seq(&self) -> u64;
}

/// One input's claim on an acknowledgement. [`Ticket::complete`] once the input's outcome is
/// durable or final. Dropping it uncompleted settles it as abandoned: a path that loses the
/// ticket (a panicked task, a dropped queue) must not hold back every later ack forever. A
/// crash runs no destructor, so an input whose result was not yet durable is never acked then,
/// and the broker sends it again.
#[derive(Default)]
pub struct Ticket(Option<Box<dyn Settle>>);

impl Ticket {
    /// No ack owed (QoS 0, or an input that did not come over MQTT).
    pub fn none() -> Ticket {
        Ticket(None)
    }

    /// A ticket that settles through `held`.
    pub fn new(held: Box<dyn Settle>) -> Ticket {
        Ticket(Some(held))
    }

    /// Whether an acknowledgement waits on this ticket (a QoS ≥ 1 input over MQTT).
    pub fn owes_ack(&self) -> bool {
        self.0.is_some()
    }

    pub fn complete(mut self) {
        if let Some(h) = self.0.take() {
            h.settle(true);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.settle(false);
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(h) => write!(f, "Ticket(#{})", h.seq()),
            None => f.write_str("Ticket(none)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Probe(Arc<Mutex<Vec<bool>>>, u64);
    impl Settle for Probe {
        fn settle(self: Box<Self>, done: bool) {
            self.0.lock().unwrap().push(done);
        }
        fn seq(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn a_ticket_settles_once_done_when_completed_abandoned_when_dropped() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let t = Ticket::new(Box::new(Probe(Arc::clone(&log), 7)));
        assert_eq!(format!("{t:?}"), "Ticket(#7)");
        t.complete();
        drop(Ticket::new(Box::new(Probe(Arc::clone(&log), 8))));
        drop(Ticket::none());
        assert_eq!(*log.lock().unwrap(), vec![true, false]);
        assert_eq!(format!("{:?}", Ticket::none()), "Ticket(none)");
    }
}
