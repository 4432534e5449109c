//! The MQTT intake as a source: incoming publishes on `in/<modality>`, `enroll/<label>`,
//! `forget/<label>`, `query` and `zero_shot/set` become requests on the encoder queues, or
//! events for the publisher (forget, word lists, refusals). Back-pressure: intake waits for
//! room on a full queue, so the broker's flow control (Receive Maximum) bounds what is held.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::SourceContext;
use crate::mqtt::topics::Route;
use crate::mqtt::{Incoming, Received, Topics};
use crate::pipeline::{Body, Event, Purpose, Queues, Request};
use crate::sources;
use crate::types::{Modality, Ticket};

#[derive(Deserialize)]
struct TextJson {
    #[serde(default)]
    id: Option<serde_json::Value>,
    text: String,
    #[serde(default)]
    group: Option<String>,
}

/// Guess the modality of an `enroll/<label>` payload from its bytes.
fn sniff(payload: &[u8]) -> Modality {
    if payload.len() >= 12 && &payload[0..4] == b"RIFF" && &payload[8..12] == b"WAVE" {
        Modality::Audio
    } else if image::guess_format(payload).is_ok() {
        Modality::Vision
    } else {
        Modality::Text
    }
}

fn correlation_id(c: &Option<Bytes>) -> Option<String> {
    let c = c.as_ref()?;
    Some(match std::str::from_utf8(c) {
        Ok(s) if !s.is_empty() && !s.contains(char::is_control) => s.to_owned(),
        _ => c.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// What an incoming message becomes.
#[derive(Debug)]
pub enum Parsed {
    Request(Box<Request>),
    Forget { label: String, id: String },
}

/// Parse one incoming message into a request, or a refusal `(id, reason)`.
pub fn parse_incoming(
    msg: &Incoming,
    topics: &Topics,
    max_payload: usize,
    max_text: usize,
) -> Result<Parsed, (String, String)> {
    let route = topics.route(&msg.topic);
    let fallback_id = correlation_id(&msg.correlation).unwrap_or_else(|| sources::new_id("mqtt"));
    let refuse = |id: &str, reason: String| Err((id.to_owned(), reason));
    if msg.payload.len() > max_payload {
        return refuse(
            &fallback_id,
            format!(
                "payload of {} bytes exceeds the limit of {max_payload}",
                msg.payload.len()
            ),
        );
    }
    let (modality, purpose) = match route {
        Route::Input(m) => (m, Purpose::Embed),
        Route::Enroll(label) => (sniff(&msg.payload), Purpose::Enroll(label)),
        Route::Forget(label) => {
            return Ok(Parsed::Forget {
                label,
                id: fallback_id,
            })
        }
        Route::Query => {
            let q = match crate::shared_space::query::parse(
                &msg.payload,
                msg.content_type.as_deref(),
            ) {
                Ok(q) => q,
                Err(e) => return refuse(&fallback_id, e.to_string()),
            };
            let id = q.id.clone().unwrap_or(fallback_id);
            let body = Body::Text(q.text.clone());
            return Ok(Parsed::Request(Box::new(control_request(
                msg,
                id,
                Purpose::Query(Box::new(q)),
                body,
            ))));
        }
        Route::SetWords => {
            let words = match crate::shared_space::words::parse_payload(&msg.payload) {
                Ok(w) => w,
                Err(e) => return refuse(&fallback_id, e.to_string()),
            };
            let body = Body::Text(words.join(", "));
            return Ok(Parsed::Request(Box::new(control_request(
                msg,
                fallback_id,
                Purpose::SetWords(words),
                body,
            ))));
        }
        Route::Unknown(t) => return refuse(&fallback_id, format!("unknown topic {t}")),
    };
    if msg.payload.is_empty() {
        return refuse(&fallback_id, "empty payload".into());
    }
    let mut id = fallback_id;
    let mut group = "default".to_owned();
    let body = match modality {
        Modality::Text => {
            let Ok(text) = std::str::from_utf8(&msg.payload) else {
                return refuse(&id, "text is not valid UTF-8".into());
            };
            let is_json = msg.content_type.as_deref() == Some("application/json")
                || text.trim_start().starts_with('{');
            if is_json {
                match serde_json::from_str::<TextJson>(text) {
                    Ok(j) => {
                        if let Some(v) = j.id {
                            id = match v {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                        }
                        if let Some(g) = j.group.filter(|g| !g.is_empty()) {
                            group = g;
                        }
                        Body::Text(j.text)
                    }
                    Err(e) => return refuse(&id, format!("malformed JSON: {e}")),
                }
            } else {
                Body::Text(text.to_owned())
            }
        }
        Modality::Vision | Modality::Audio => Body::Encoded(msg.payload.clone()),
    };
    if let Body::Text(t) = &body {
        if t.len() > max_text {
            return refuse(
                &id,
                format!(
                    "text of {} bytes exceeds encoders.text.max_bytes ({max_text})",
                    t.len()
                ),
            );
        }
    }
    Ok(Parsed::Request(Box::new(Request {
        id,
        modality,
        purpose,
        body,
        source: "mqtt".into(),
        group,
        topic: msg.topic.clone(),
        response_topic: msg.response_topic.clone(),
        correlation: msg.correlation.clone(),
        received: tokio::time::Instant::now(),
        ticket: Ticket::none(),
    })))
}

/// A `query` or `zero_shot/set` request (text modality: a query's text is embedded by the
/// text worker; a word list goes to the publisher, which embeds it on the blocking pool).
fn control_request(msg: &Incoming, id: String, purpose: Purpose, body: Body) -> Request {
    Request {
        id,
        modality: Modality::Text,
        purpose,
        body,
        source: "mqtt".into(),
        group: "default".into(),
        topic: msg.topic.clone(),
        response_topic: msg.response_topic.clone(),
        correlation: msg.correlation.clone(),
        received: tokio::time::Instant::now(),
        ticket: Ticket::none(),
    }
}

/// Where intake stopped: the MQTT input channel, and the message it was holding when a full
/// queue made it wait (a reload hands both to the next pipeline, tickets included, so nothing
/// is lost or left unacknowledged).
pub struct IntakeEnd {
    pub incoming: mpsc::Receiver<Received>,
    pub pending: Option<Received>,
}

impl IntakeEnd {
    /// A fresh start: nothing held yet.
    pub fn new(incoming: mpsc::Receiver<Received>) -> IntakeEnd {
        IntakeEnd {
            incoming,
            pending: None,
        }
    }
}

/// Limits intake checks before a request is queued.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    /// `mqtt.max_payload_bytes`.
    pub max_payload: usize,
    /// `encoders.text.max_bytes`.
    pub max_text: usize,
}

/// Start the intake on `input`, feeding the context's queues and events; it stops when
/// `ctx.cancel` fires and returns where it stopped.
pub fn spawn(
    input: IntakeEnd,
    topics: Topics,
    limits: IntakeLimits,
    ctx: &SourceContext,
) -> JoinHandle<IntakeEnd> {
    tokio::spawn(intake(
        input.incoming,
        input.pending,
        topics,
        Arc::clone(&ctx.queues),
        ctx.events.clone(),
        (limits.max_payload, limits.max_text),
        ctx.cancel.clone(),
    ))
}

async fn intake(
    mut incoming: mpsc::Receiver<Received>,
    mut pending: Option<Received>,
    topics: Topics,
    queues: Arc<Queues>,
    events: mpsc::Sender<Event>,
    (max_payload, max_text): (usize, usize),
    cancel: CancellationToken,
) -> IntakeEnd {
    loop {
        let Received { msg, ticket } = match pending.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = cancel.cancelled() => break,
                m = incoming.recv() => match m { Some(m) => m, None => break },
            },
        };
        let event = match parse_incoming(&msg, &topics, max_payload, max_text) {
            Ok(Parsed::Request(request)) if matches!(request.purpose, Purpose::SetWords(_)) => {
                let r = *request;
                let Purpose::SetWords(words) = r.purpose else {
                    continue;
                };
                Event::SetWords {
                    words,
                    id: r.id,
                    topic: r.topic,
                    response_topic: r.response_topic,
                    correlation: r.correlation,
                    ticket,
                }
            }
            Ok(Parsed::Request(request)) => {
                let mut request = *request;
                match queues.requests.get(&request.modality) {
                    // Back-pressure: wait for room rather than drop a request. `reserve` keeps
                    // the message (and its ticket) here until there is room.
                    Some(q) => {
                        tokio::select! {
                            _ = cancel.cancelled() => {
                                pending = Some(Received { msg, ticket });
                                break;
                            }
                            permit = q.reserve() => match permit {
                                Ok(permit) => {
                                    request.ticket = ticket;
                                    permit.send(request);
                                }
                                Err(_) => {
                                    pending = Some(Received { msg, ticket });
                                    break;
                                }
                            },
                        }
                        continue;
                    }
                    None => Event::Rejected {
                        id: request.id,
                        topic: msg.topic.clone(),
                        reason: format!(
                            "the {} encoder is disabled in this configuration",
                            request.modality
                        ),
                        ticket,
                    },
                }
            }
            Ok(Parsed::Forget { label, id }) => Event::Forget {
                label,
                id,
                topic: msg.topic.clone(),
                ticket,
            },
            Err((id, reason)) => Event::Rejected {
                id,
                topic: msg.topic.clone(),
                reason,
                ticket,
            },
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    IntakeEnd { incoming, pending }
}
