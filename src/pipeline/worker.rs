//! One worker per modality: takes requests (back-pressured) and live items (drop-oldest),
//! micro-batches whatever is queued, and runs the encoder on the blocking pool, so a slow
//! model never stalls the async runtime or another modality's worker.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::queue::DropOldest;
use super::semantic::{Heard, SemanticHook, SemanticItem};
use super::{Body, Event, Outcome, Request};
use crate::encoders::{AudioEncoder, ItemResult, Modality, TextEncoder, VisionEncoder};
use crate::error::InputError;
use crate::stats::Stats;

/// The loaded encoder of one modality (one instance per model, shared by reference).
#[derive(Clone)]
pub enum EncoderRef {
    Text(Arc<TextEncoder>),
    Vision(Arc<VisionEncoder>),
    Audio(Arc<AudioEncoder>),
}

impl EncoderRef {
    pub fn modality(&self) -> Modality {
        match self {
            EncoderRef::Text(_) => Modality::Text,
            EncoderRef::Vision(_) => Modality::Vision,
            EncoderRef::Audio(_) => Modality::Audio,
        }
    }

    /// Embed a batch; every request gets its own result.
    pub fn embed(&self, batch: &[Request]) -> Vec<ItemResult> {
        let wrong = || {
            Err(InputError::Inference(
                "body does not match the modality".into(),
            ))
        };
        match self {
            EncoderRef::Text(enc) => {
                let texts: Vec<Option<&str>> = batch
                    .iter()
                    .map(|r| match &r.body {
                        Body::Text(t) => Some(t.as_str()),
                        _ => None,
                    })
                    .collect();
                let valid: Vec<&str> = texts.iter().flatten().copied().collect();
                let mut out = enc.embed(&valid).into_iter();
                texts
                    .iter()
                    .map(|t| match t {
                        Some(_) => out.next().unwrap_or_else(wrong),
                        None => wrong(),
                    })
                    .collect()
            }
            EncoderRef::Vision(enc) => {
                let bytes: Vec<Option<&[u8]>> = batch
                    .iter()
                    .map(|r| match &r.body {
                        Body::Encoded(b) => Some(b.as_ref()),
                        _ => None,
                    })
                    .collect();
                let valid: Vec<&[u8]> = bytes.iter().flatten().copied().collect();
                let mut out = enc.embed(&valid).into_iter();
                bytes
                    .iter()
                    .map(|b| match b {
                        Some(_) => out.next().unwrap_or_else(wrong),
                        None => wrong(),
                    })
                    .collect()
            }
            // Audio items are long (many blocks each); they are embedded one by one.
            EncoderRef::Audio(enc) => batch
                .iter()
                .map(|r| match &r.body {
                    Body::Encoded(b) => enc.embed_wavs(&[b.as_ref()]).remove(0),
                    Body::Samples { samples, rate } => enc.embed_samples(samples, *rate),
                    Body::Text(_) => wrong(),
                })
                .collect(),
        }
    }
}

/// A panic in a decoder or encoder is a bug, but it must cost only the items involved and
/// each of them must still be answered: the batch is retried item by item, and an item that
/// panics alone gets an error of its own.
pub fn embed_guarded(encoder: &EncoderRef, batch: &[Request]) -> Vec<ItemResult> {
    let run = |items: &[Request]| catch_unwind(AssertUnwindSafe(|| encoder.embed(items)));
    match run(batch) {
        Ok(results) if results.len() == batch.len() => results,
        _ => batch
            .iter()
            .map(|r| match run(std::slice::from_ref(r)) {
                Ok(mut one) if one.len() == 1 => one.remove(0),
                _ => {
                    tracing::error!(id = %r.id, "the {} encoder panicked on this input", r.modality);
                    Err(InputError::Inference(
                        "internal error: the encoder panicked on this input".into(),
                    ))
                }
            })
            .collect(),
    }
}

/// The semantic hook's vectors for a batch, one per request; a hook that panics or answers
/// with the wrong count costs only the semantic vectors, never the embeddings.
fn semantic_guarded(
    hook: Option<&dyn SemanticHook>,
    batch: &[Request],
    results: &[ItemResult],
) -> Vec<(Option<SemanticItem>, Option<Heard>)> {
    let none = || batch.iter().map(|_| (None, None)).collect();
    let Some(hook) = hook else { return none() };
    match catch_unwind(AssertUnwindSafe(|| hook.semantic_heard(batch, results))) {
        Ok(v) if v.len() == batch.len() => v,
        _ => {
            tracing::error!(
                "the semantic hook failed on a batch; its items have no semantic vector"
            );
            none()
        }
    }
}

pub struct Worker {
    pub encoder: EncoderRef,
    pub requests: mpsc::Receiver<Request>,
    pub live: Option<Arc<DropOldest<Request>>>,
    pub events: mpsc::Sender<Event>,
    pub max_batch: usize,
    pub stats: Arc<Stats>,
    /// Places this modality's items in the shared text space (run on the blocking pool).
    pub semantic: Option<Arc<dyn SemanticHook>>,
}

impl Worker {
    /// Run until both inputs are closed and drained.
    pub async fn run(mut self) {
        let modality = self.encoder.modality();
        let mut requests_open = true;
        let mut live_open = self.live.is_some();
        while requests_open || live_open {
            let live = self.live.clone();
            let first = tokio::select! {
                biased;
                r = self.requests.recv(), if requests_open => match r {
                    Some(r) => r,
                    None => { requests_open = false; continue; }
                },
                r = async { live.as_ref()?.pop().await }, if live_open => match r {
                    Some(r) => r,
                    None => { live_open = false; continue; }
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                if let Ok(r) = self.requests.try_recv() {
                    batch.push(r);
                } else if let Some(r) = self.live.as_ref().and_then(|q| q.try_pop()) {
                    batch.push(r);
                } else {
                    break;
                }
            }
            let started = Instant::now();
            let queue_ms: Vec<f64> = batch
                .iter()
                .map(|r| started.duration_since(r.received).as_secs_f64() * 1e3)
                .collect();
            let encoder = self.encoder.clone();
            let hook = self.semantic.clone();
            self.stats.batch_started(modality);
            let joined = tokio::task::spawn_blocking(move || {
                let results = embed_guarded(&encoder, &batch);
                let semantic = semantic_guarded(hook.as_deref(), &batch, &results);
                (batch, results, semantic)
            })
            .await;
            self.stats.batch_finished(modality);
            let (batch, results, semantic) = match joined {
                Ok(x) => x,
                Err(e) => {
                    // A panic inside an encoder is a bug; it must not take the daemon down.
                    tracing::error!(%modality, "encoder task failed: {e}");
                    continue;
                }
            };
            for (((request, result), queue_ms), (semantic, heard)) in
                batch.into_iter().zip(results).zip(queue_ms).zip(semantic)
            {
                let total_ms = request.received.elapsed().as_secs_f64() * 1e3;
                self.stats.record(modality, &result, queue_ms, total_ms);
                let outcome = Outcome {
                    request,
                    result,
                    queue_ms,
                    total_ms,
                    semantic,
                    heard,
                };
                if self
                    .events
                    .send(Event::Embedded(Box::new(outcome)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            self.stats.heartbeat();
        }
        tracing::debug!(%modality, "worker finished");
    }
}
