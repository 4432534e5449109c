//! The pipeline between sources and sinks: per-modality queues, micro-batching workers that
//! run inference off the async runtime, and the events they hand to the publisher.

pub mod lone_run;
pub mod queue;
pub mod semantic;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::InputError;
use crate::types::Ticket;
use crate::types::{Embedding, Modality};

/// What a request asks for once embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Publish the embedding and fuse it.
    Embed,
    /// Add the embedding as an example of a label.
    Enroll(String),
    /// Search the semantic index with the embedded query text (`query` topic).
    Query(Box<semantic::Query>),
    /// Replace the zero-shot words (`zero_shot/set`); never reaches an encoder queue: intake
    /// turns it into [`Event::SetWords`].
    SetWords(Vec<String>),
}

#[derive(Debug, Clone)]
pub enum Body {
    Text(String),
    /// Encoded image or WAV bytes.
    Encoded(Bytes),
    /// Mono samples from a live source.
    Samples {
        samples: Arc<Vec<f32>>,
        rate: u32,
    },
}

/// One item to embed and where its result goes.
#[derive(Debug)]
pub struct Request {
    pub id: String,
    pub modality: Modality,
    pub purpose: Purpose,
    pub body: Body,
    /// `mqtt`, `mic`, `image_dir:<file>`, `snapshot`.
    pub source: String,
    pub group: String,
    pub topic: String,
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
    pub received: Instant,
    /// The MQTT input's ack, completed by the publisher once the result is spooled.
    pub ticket: Ticket,
}

/// Per-modality queues into the encoder workers: `requests` (bounded, the sender waits) for
/// every enabled encoder, `live` (drop-oldest) for live sources. Sources feed them; the stats
/// sink reads their depths.
#[derive(Default)]
pub struct Queues {
    pub requests: BTreeMap<Modality, mpsc::Sender<Request>>,
    pub live: BTreeMap<Modality, Arc<queue::DropOldest<Request>>>,
}

/// A request's outcome, with its queue wait.
#[derive(Debug)]
pub struct Outcome {
    pub request: Request,
    pub result: Result<Embedding, InputError>,
    pub queue_ms: f64,
    pub total_ms: f64,
    /// The item's vector in the shared text space, from the worker's semantic hook.
    pub semantic: Option<semantic::SemanticItem>,
    /// What was said in an audio item (the speech hook's transcript), for `transcript`.
    pub heard: Option<semantic::Heard>,
}

/// What the publisher is told.
#[derive(Debug)]
pub enum Event {
    Embedded(Box<Outcome>),
    Forget {
        label: String,
        id: String,
        topic: String,
        ticket: Ticket,
    },
    /// A new zero-shot word list (`zero_shot/set`).
    SetWords {
        words: Vec<String>,
        id: String,
        topic: String,
        response_topic: Option<String>,
        correlation: Option<Bytes>,
        ticket: Ticket,
    },
    /// A request refused before it reached an encoder.
    Rejected {
        id: String,
        topic: String,
        reason: String,
        ticket: Ticket,
    },
}

impl Event {
    /// The input's ack, for the publisher to complete once the event's results are durable.
    pub fn take_ticket(&mut self) -> Ticket {
        match self {
            Event::Embedded(o) => std::mem::take(&mut o.request.ticket),
            Event::Forget { ticket, .. }
            | Event::Rejected { ticket, .. }
            | Event::SetWords { ticket, .. } => std::mem::take(ticket),
        }
    }
}
