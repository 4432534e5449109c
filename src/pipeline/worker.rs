//! One worker per modality: takes requests (back-pressured) and live items (drop-oldest),
//! micro-batches whatever is queued, and runs the encoder on the blocking pool, so a slow
//! model never stalls the async runtime or another modality's worker.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use tract_linalg::multithread::{multithread_tract_scope, Executor};

use super::lone_run::RunsOnMachine;
use super::queue::DropOldest;
use super::semantic::{Heard, SemanticFromInputs, SemanticHook, SemanticItem};
use super::{Body, Event, Outcome, Request};
use crate::encoders::{AudioEncoder, ItemResult, Modality, TextEncoder, VisionEncoder};
use crate::error::InputError;
use crate::stats::Stats;

/// What a test's fake encoder answers for a batch.
#[cfg(test)]
pub type FakeEmbed = dyn Fn(&[Request]) -> Vec<ItemResult> + Send + Sync;

/// The loaded encoder of one modality (one instance per model, shared by reference).
#[derive(Clone)]
pub enum EncoderRef {
    Text(Arc<TextEncoder>),
    Vision(Arc<VisionEncoder>),
    Audio(Arc<AudioEncoder>),
    /// The tests' stand-in: a modality and what to answer for a batch.
    #[cfg(test)]
    Fake(Modality, Arc<FakeEmbed>),
}

impl EncoderRef {
    pub fn modality(&self) -> Modality {
        match self {
            EncoderRef::Text(_) => Modality::Text,
            EncoderRef::Vision(_) => Modality::Vision,
            EncoderRef::Audio(_) => Modality::Audio,
            #[cfg(test)]
            EncoderRef::Fake(m, _) => *m,
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
            #[cfg(test)]
            EncoderRef::Fake(_, f) => f(batch),
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

/// One batch on its blocking thread: the encoder and the hook, beside it or after it, on
/// `lone`'s threads when given.
fn run_batch(
    encoder: &EncoderRef,
    hook: Option<&dyn SemanticHook>,
    batch: &[Request],
    beside: bool,
    lone: Option<Executor>,
) -> (Vec<ItemResult>, Vec<Placed>) {
    match hook.filter(|_| beside).and_then(|h| h.inputs_only()) {
        Some(early) => embed_with_semantic_beside(
            &|| on_lone(&lone, || embed_guarded(encoder, batch)),
            early,
            batch,
        ),
        None => on_lone(&lone, || {
            let results = embed_guarded(encoder, batch);
            let semantic = semantic_guarded(hook, batch, &results);
            (results, semantic)
        }),
    }
}

/// `f` on the lone-run executor when there is one, else on this thread.
fn on_lone<R>(lone: &Option<Executor>, f: impl FnOnce() -> R) -> R {
    match lone {
        Some(executor) => multithread_tract_scope(executor.clone(), f),
        None => f(),
    }
}

/// The encoder and a hook that needs only the inputs (a photo's classifier beside its
/// embedding), at once on two threads: used when a core would otherwise sit idle. A hook that
/// panics, declines or answers with the wrong count costs only the semantic vectors, as in
/// [`semantic_guarded`].
fn embed_with_semantic_beside(
    embed: &dyn Fn() -> Vec<ItemResult>,
    hook: &dyn SemanticFromInputs,
    batch: &[Request],
) -> (Vec<ItemResult>, Vec<Placed>) {
    let (results, early) = std::thread::scope(|s| {
        let early = s.spawn(|| hook.semantic_from_inputs(batch));
        let results = embed();
        (results, early.join())
    });
    let semantic = match early {
        Ok(items) if items.len() == batch.len() => items
            .into_iter()
            .zip(&results)
            // Only items that embedded carry a semantic vector, as when run after the encoder.
            .map(|(item, result)| (item.filter(|_| result.is_ok()), None))
            .collect(),
        _ => {
            tracing::error!(
                "the semantic hook failed on a batch; its items have no semantic vector"
            );
            batch.iter().map(|_| (None, None)).collect()
        }
    };
    (results, semantic)
}

pub struct Worker {
    pub encoder: EncoderRef,
    pub requests: mpsc::Receiver<Request>,
    pub live: Option<Arc<DropOldest<Request>>>,
    pub events: mpsc::Sender<Event>,
    pub max_batch: usize,
    /// Batches run at once (`encoders.runs_in_flight`), each on its own blocking thread with
    /// its own tract state over the one shared plan; 0 counts as 1.
    pub runs_in_flight: usize,
    pub stats: Arc<Stats>,
    /// Places this modality's items in the shared text space (run on the blocking pool).
    pub semantic: Option<Arc<dyn SemanticHook>>,
    /// The runs in flight over every modality's worker (shared).
    pub machine: Arc<RunsOnMachine>,
    /// This model's executor for a run alone on the machine, where every core makes it
    /// sooner ([`super::lone_run`]); `None`: one thread.
    pub lone: Option<Executor>,
}

/// An item's place in the shared space, and what was heard in it.
type Placed = (Option<SemanticItem>, Option<Heard>);

/// What a batch's blocking task hands back.
type Ran = (Vec<Request>, Vec<ItemResult>, Vec<Placed>);

/// A batch on the blocking pool, with what its outcomes need.
struct Running {
    task: tokio::task::JoinHandle<Ran>,
    queue_ms: Vec<f64>,
    /// For the watchdog: when it started (`Stats::busy_since`).
    started: Instant,
}

/// What the worker's loop waits for.
enum Next {
    /// The oldest batch in flight returned.
    Finished(Result<Ran, tokio::task::JoinError>),
    Input(Request),
    RequestsClosed,
    LiveClosed,
}

impl Worker {
    /// Run until both inputs are closed and every batch in flight is answered.
    ///
    /// Up to `runs_in_flight` batches run at once; their outcomes leave in the order the
    /// batches started (a later batch that finishes first waits for the earlier ones), so
    /// fusion's "latest per modality", the stats and the publisher see the same order as with
    /// one batch at a time.
    pub async fn run(mut self) {
        let modality = self.encoder.modality();
        let limit = self.runs_in_flight.max(1);
        let mut requests_open = true;
        let mut live_open = self.live.is_some();
        let mut running: VecDeque<Running> = VecDeque::with_capacity(limit);
        loop {
            let can_take = (requests_open || live_open) && running.len() < limit;
            if !can_take && running.is_empty() {
                break;
            }
            let live = self.live.clone();
            let next = tokio::select! {
                biased;
                // Answer first: it frees a slot and hands results on soonest.
                r = async { Some((&mut running.front_mut()?.task).await) }, if !running.is_empty() => match r {
                    Some(r) => Next::Finished(r),
                    None => continue,
                },
                r = self.requests.recv(), if requests_open && can_take => match r {
                    Some(r) => Next::Input(r),
                    None => Next::RequestsClosed,
                },
                r = async { live.as_ref()?.pop().await }, if live_open && can_take => match r {
                    Some(r) => Next::Input(r),
                    None => Next::LiveClosed,
                },
            };
            match next {
                Next::RequestsClosed => requests_open = false,
                Next::LiveClosed => live_open = false,
                Next::Input(first) => {
                    let run = self.start(first, limit - running.len());
                    if running.is_empty() {
                        self.stats.busy_since(modality, Some(run.started));
                    }
                    running.push_back(run);
                }
                Next::Finished(joined) => {
                    let Some(done) = running.pop_front() else {
                        continue;
                    };
                    self.stats
                        .busy_since(modality, running.front().map(|r| r.started));
                    match joined {
                        Ok((batch, results, semantic)) => {
                            if !self.hand_on(batch, results, done.queue_ms, semantic).await {
                                return;
                            }
                        }
                        // A panic inside an encoder is a bug; it must not take the daemon down.
                        Err(e) => tracing::error!(%modality, "encoder task failed: {e}"),
                    }
                    self.stats.heartbeat();
                }
            }
        }
        tracing::debug!(%modality, "worker finished");
    }

    /// Take more of what is queued and start the batch on the blocking pool. With `free` runs
    /// still to start (this one included), a burst is shared out among them, so it keeps as
    /// many runs busy as it can fill: `ceil(queued / free)` items, at most `max_batch`.
    fn start(&mut self, first: Request, free: usize) -> Running {
        let queued = 1 + self.requests.len() + self.live.as_ref().map_or(0, |q| q.len());
        let size = queued.div_ceil(free.max(1)).clamp(1, self.max_batch.max(1));
        let mut batch = vec![first];
        while batch.len() < size {
            if let Ok(r) = self.requests.try_recv() {
                batch.push(r);
            } else if let Some(r) = self.live.as_ref().and_then(|q| q.try_pop()) {
                batch.push(r);
            } else {
                break;
            }
        }
        let now = Instant::now();
        let queue_ms: Vec<f64> = batch
            .iter()
            .map(|r| now.duration_since(r.received).as_secs_f64() * 1e3)
            .collect();
        // A hook that needs only the inputs runs beside the encoder when this is the only run
        // and nothing else is queued: a core that runs_in_flight would have used sits idle.
        let nothing_waiting =
            self.requests.is_empty() && self.live.as_ref().is_none_or(|q| q.is_empty());
        let beside = free >= self.runs_in_flight.max(1) && free > 1 && nothing_waiting;
        // Alone on the machine with nothing queued behind: the other cores would sit idle.
        let (alone, counted) = self.machine.enter();
        let lone = self.lone.clone().filter(|_| alone && nothing_waiting);
        let encoder = self.encoder.clone();
        let hook = self.semantic.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _counted = counted;
            let ran = catch_unwind(AssertUnwindSafe(|| {
                run_batch(&encoder, hook.as_deref(), &batch, beside, lone)
            }));
            // The guards inside answer a panicking model; this catches what they do not wrap
            // (a hook's `inputs_only`, a thread that cannot start), so no batch is lost
            // unanswered and no ack is released for an input that was never processed.
            let (results, semantic) = ran.unwrap_or_else(|_| {
                tracing::error!(modality = %encoder.modality(), "a batch failed outside the encoder's guard; its items get an error");
                batch
                    .iter()
                    .map(|_| {
                        (
                            Err(InputError::Inference(
                                "internal error: the batch could not be run".into(),
                            )),
                            (None, None),
                        )
                    })
                    .unzip()
            });
            (batch, results, semantic)
        });
        Running {
            task,
            queue_ms,
            started: now,
        }
    }

    /// Record and send on one batch's outcomes, in request order; false once the publisher
    /// is gone.
    async fn hand_on(
        &self,
        batch: Vec<Request>,
        results: Vec<ItemResult>,
        queue_ms: Vec<f64>,
        semantic: Vec<(Option<SemanticItem>, Option<Heard>)>,
    ) -> bool {
        let modality = self.encoder.modality();
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
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
