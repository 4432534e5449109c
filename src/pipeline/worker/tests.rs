//! Unit tests of the worker, with fake encoders and hooks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::pipeline::Purpose;
use crate::types::{Embedding, Ticket, Timings};

fn request(id: &str) -> Request {
    Request {
        id: id.to_owned(),
        modality: Modality::Text,
        purpose: Purpose::Embed,
        body: Body::Text(id.to_owned()),
        source: "test".into(),
        group: "default".into(),
        topic: "in/text".into(),
        response_topic: None,
        correlation: None,
        received: Instant::now(),
        ticket: Ticket::none(),
    }
}

fn embedding() -> ItemResult {
    Ok(Embedding {
        vector: vec![1.0],
        blocks: None,
        timings: Timings::default(),
    })
}

/// Wait (on the blocking thread) until `ready`, for at most 10 s; whether it became so.
fn wait_until(ready: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Queue `ids`, run a worker over them to the end with `runs_in_flight`,
/// and return the ids of its outcomes in the order they left it, and its stats.
async fn run(
    ids: &[&str],
    max_batch: usize,
    runs_in_flight: usize,
    encoder: impl Fn(&[Request]) -> Vec<ItemResult> + Send + Sync + 'static,
) -> (Vec<String>, Arc<Stats>) {
    let (outcomes, stats) = run_with(ids, max_batch, runs_in_flight, encoder, None).await;
    let answered = outcomes
        .into_iter()
        .map(|o| {
            assert!(o.result.is_ok());
            o.request.id
        })
        .collect();
    (answered, stats)
}

/// [`run`] with a semantic hook; every outcome, in the order it left.
async fn run_with(
    ids: &[&str],
    max_batch: usize,
    runs_in_flight: usize,
    encoder: impl Fn(&[Request]) -> Vec<ItemResult> + Send + Sync + 'static,
    semantic: Option<Arc<dyn SemanticHook>>,
) -> (Vec<Outcome>, Arc<Stats>) {
    let machine = Arc::default();
    run_on(
        ids,
        max_batch,
        runs_in_flight,
        encoder,
        semantic,
        machine,
        None,
    )
    .await
}

/// [`run_with`] on a given machine count, with a lone-run executor.
async fn run_on(
    ids: &[&str],
    max_batch: usize,
    runs_in_flight: usize,
    encoder: impl Fn(&[Request]) -> Vec<ItemResult> + Send + Sync + 'static,
    semantic: Option<Arc<dyn SemanticHook>>,
    machine: Arc<RunsOnMachine>,
    lone: Option<Executor>,
) -> (Vec<Outcome>, Arc<Stats>) {
    let (tx, requests) = mpsc::channel(64);
    for id in ids {
        tx.send(request(id)).await.unwrap();
    }
    drop(tx);
    let (events, mut out) = mpsc::channel(64);
    let stats = Arc::new(Stats::default());
    Worker {
        encoder: EncoderRef::Fake(Modality::Text, Arc::new(encoder)),
        requests,
        live: None,
        events,
        max_batch,
        runs_in_flight,
        stats: stats.clone(),
        semantic,
        machine,
        lone,
    }
    .run()
    .await;
    let mut outcomes = Vec::new();
    while let Ok(Event::Embedded(o)) = out.try_recv() {
        outcomes.push(*o);
    }
    (outcomes, stats)
}

/// A fake encoder that counts the batches inside it at once; each waits (bounded) until
/// `overlap` batches have been seen together.
fn counting(
    overlap: usize,
) -> (
    Arc<AtomicUsize>,
    impl Fn(&[Request]) -> Vec<ItemResult> + Send + Sync + 'static,
) {
    let most = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let f = move |batch: &[Request]| {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        seen.fetch_max(n, Ordering::SeqCst);
        wait_until(|| seen.load(Ordering::SeqCst) >= overlap);
        std::thread::sleep(Duration::from_millis(2));
        now.fetch_sub(1, Ordering::SeqCst);
        batch.iter().map(|_| embedding()).collect()
    };
    (most, f)
}

#[tokio::test]
async fn up_to_runs_in_flight_batches_run_at_once_and_every_item_is_answered_in_order() {
    let ids = ["a", "b", "c", "d", "e", "f", "g"];
    let (most, encoder) = counting(3);
    let (answered, stats) = run(&ids, 1, 3, encoder).await;
    assert_eq!(answered, ids);
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "never more than runs_in_flight"
    );
    assert_eq!(stats.items(Modality::Text), 7);
    assert!(stats.busy_for(Modality::Text).is_none(), "idle at the end");
}

#[tokio::test]
async fn one_run_in_flight_runs_batches_one_after_another() {
    let ids = ["a", "b", "c", "d"];
    // Each batch waits up to 10 s for a second one that must never come: allow it 20 ms.
    let most = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let encoder = move |batch: &[Request]| {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        seen.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        now.fetch_sub(1, Ordering::SeqCst);
        batch.iter().map(|_| embedding()).collect()
    };
    let (answered, stats) = run(&ids, 1, 1, encoder).await;
    assert_eq!(answered, ids);
    assert_eq!(most.load(Ordering::SeqCst), 1);
    assert_eq!(stats.items(Modality::Text), 4);
}

#[tokio::test]
async fn a_batch_that_finishes_first_waits_for_the_earlier_ones_before_leaving() {
    // "slow" returns only after "fast" has returned: they complete out of order.
    let fast_done = Arc::new(AtomicBool::new(false));
    let slow_saw_fast = Arc::new(AtomicBool::new(false));
    let (done, saw) = (fast_done.clone(), slow_saw_fast.clone());
    let encoder = move |batch: &[Request]| {
        if batch[0].id == "slow" {
            saw.store(wait_until(|| done.load(Ordering::SeqCst)), Ordering::SeqCst);
        } else if batch[0].id == "fast" {
            done.store(true, Ordering::SeqCst);
        }
        batch.iter().map(|_| embedding()).collect()
    };
    let (answered, stats) = run(&["slow", "fast", "last"], 1, 2, encoder).await;
    assert!(slow_saw_fast.load(Ordering::SeqCst), "fast finished first");
    assert_eq!(answered, ["slow", "fast", "last"]);
    assert_eq!(stats.items(Modality::Text), 3);
}

#[tokio::test]
async fn a_queued_burst_is_shared_out_among_the_free_runs() {
    // 8 queued, max_batch 16, 3 runs: 3 + 3 + 2 rather than one batch of 8.
    let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (most, counting) = counting(3);
    let record = sizes.clone();
    let encoder = move |batch: &[Request]| {
        record.lock().unwrap().push(batch.len());
        counting(batch)
    };
    let (answered, _) = run(&ids, 16, 3, encoder).await;
    assert_eq!(answered, ids);
    // The runs start in order, but their blocking threads may record in any order.
    let mut got = sizes.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, [2, 3, 3]);
    assert_eq!(most.load(Ordering::SeqCst), 3);
    // With one run, the same burst is one batch.
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sizes.clone();
    let encoder = move |batch: &[Request]| {
        record.lock().unwrap().push(batch.len());
        batch.iter().map(|_| embedding()).collect()
    };
    run(&ids, 16, 1, encoder).await;
    assert_eq!(*sizes.lock().unwrap(), [8]);
}

/// A hook that works from the inputs alone (as the image classifier does): it records
/// which entry point ran and whether the encoder was running meanwhile.
struct FromInputs {
    encoder_running: Arc<AtomicBool>,
    hook_running: Arc<AtomicBool>,
    saw_encoder: AtomicBool,
    after_encoder: AtomicUsize,
}

fn item() -> Option<SemanticItem> {
    Some(SemanticItem {
        vector: vec![1.0],
        parts: Vec::new(),
    })
}

impl SemanticHook for FromInputs {
    fn semantic(&self, _: &[Request], results: &[ItemResult]) -> Vec<Option<SemanticItem>> {
        self.after_encoder.fetch_add(1, Ordering::SeqCst);
        results
            .iter()
            .map(|r| r.as_ref().ok().and(item()))
            .collect()
    }

    fn inputs_only(&self) -> Option<&dyn SemanticFromInputs> {
        Some(self)
    }
}

impl SemanticFromInputs for FromInputs {
    fn semantic_from_inputs(&self, batch: &[Request]) -> Vec<Option<SemanticItem>> {
        self.hook_running.store(true, Ordering::SeqCst);
        let saw = wait_until(|| self.encoder_running.load(Ordering::SeqCst));
        self.saw_encoder.store(saw, Ordering::SeqCst);
        batch.iter().map(|_| item()).collect()
    }
}

/// The hook and an encoder that fails item "bad" and waits (bounded) for the hook to start.
fn from_inputs() -> (
    Arc<FromInputs>,
    impl Fn(&[Request]) -> Vec<ItemResult> + Send + Sync + 'static,
) {
    let hook = Arc::new(FromInputs {
        encoder_running: Arc::new(AtomicBool::new(false)),
        hook_running: Arc::new(AtomicBool::new(false)),
        saw_encoder: AtomicBool::new(false),
        after_encoder: AtomicUsize::new(0),
    });
    let (running, hook_running) = (hook.encoder_running.clone(), hook.hook_running.clone());
    let encoder = move |batch: &[Request]| {
        running.store(true, Ordering::SeqCst);
        if batch.len() == 1 {
            // Alone, so a spare core: the hook must be running meanwhile.
            wait_until(|| hook_running.load(Ordering::SeqCst));
        }
        batch
            .iter()
            .map(|r| match r.id.as_str() {
                "bad" => Err(InputError::CorruptImage("not an image".into())),
                _ => embedding(),
            })
            .collect()
    };
    (hook, encoder)
}

#[tokio::test]
async fn with_a_spare_core_a_hook_that_needs_only_the_inputs_runs_beside_the_encoder() {
    let (hook, encoder) = from_inputs();
    let semantic: Arc<dyn SemanticHook> = hook.clone();
    let (outcomes, _) = run_with(&["photo"], 4, 2, encoder, Some(semantic)).await;
    assert!(
        hook.saw_encoder.load(Ordering::SeqCst),
        "ran at the same time"
    );
    assert_eq!(hook.after_encoder.load(Ordering::SeqCst), 0);
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].result.is_ok() && outcomes[0].semantic.is_some());
}

#[tokio::test]
async fn items_that_fail_to_embed_get_no_semantic_vector_from_a_hook_run_beside() {
    let (hook, encoder) = from_inputs();
    let semantic: Arc<dyn SemanticHook> = hook.clone();
    let (outcomes, _) = run_with(&["bad"], 2, 2, encoder, Some(semantic)).await;
    assert!(hook.saw_encoder.load(Ordering::SeqCst), "ran beside");
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].result.is_err() && outcomes[0].semantic.is_none());
}

#[tokio::test]
async fn with_one_run_in_flight_the_hook_runs_after_the_encoder() {
    let (hook, encoder) = from_inputs();
    let semantic: Arc<dyn SemanticHook> = hook.clone();
    let (outcomes, _) = run_with(&["a", "b"], 2, 1, encoder, Some(semantic)).await;
    assert_eq!(hook.after_encoder.load(Ordering::SeqCst), 1);
    assert!(!hook.hook_running.load(Ordering::SeqCst));
    assert!(outcomes.iter().all(|o| o.semantic.is_some()));
}

/// A hook that panics before any guard (in `inputs_only`).
struct PanicsEarly;

impl SemanticHook for PanicsEarly {
    fn semantic(&self, _: &[Request], _: &[ItemResult]) -> Vec<Option<SemanticItem>> {
        Vec::new()
    }

    fn inputs_only(&self) -> Option<&dyn SemanticFromInputs> {
        panic!("a bug outside the guards")
    }
}

#[tokio::test]
async fn a_batch_that_fails_outside_the_guards_is_still_answered_item_by_item() {
    let semantic: Arc<dyn SemanticHook> = Arc::new(PanicsEarly);
    let (outcomes, _) = run_with(
        &["a"],
        4,
        2,
        |b| b.iter().map(|_| embedding()).collect(),
        Some(semantic),
    )
    .await;
    let ids: Vec<&str> = outcomes.iter().map(|o| o.request.id.as_str()).collect();
    assert_eq!(ids, ["a"], "answered, not dropped");
    let err = outcomes[0].result.as_ref().unwrap_err().to_string();
    assert!(err.contains("internal error"), "{err}");
}

/// Per batch, whether it ran on tract's thread pool.
type Seen = Arc<std::sync::Mutex<Vec<bool>>>;

/// An encoder that records, per batch, whether it ran on tract's thread pool; each batch waits
/// (bounded) until `overlap` batches have been seen.
fn pool_recorder(
    overlap: usize,
) -> (
    Seen,
    impl Fn(&[Request]) -> Vec<ItemResult> + Send + Sync + 'static,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let encoder = move |batch: &[Request]| {
        let pool = matches!(
            tract_linalg::multithread::current_tract_executor(),
            Executor::MultiThread(_)
        );
        log.lock().unwrap().push(pool);
        wait_until(|| log.lock().unwrap().len() >= overlap);
        batch.iter().map(|_| embedding()).collect()
    };
    (seen, encoder)
}

#[tokio::test]
async fn a_run_alone_on_the_machine_uses_the_lone_executor() {
    let (seen, encoder) = pool_recorder(1);
    let lone = Some(Executor::multithread(2));
    let (outcomes, _) = run_on(&["a"], 4, 2, encoder, None, Arc::default(), lone).await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(*seen.lock().unwrap(), [true]);
}

#[tokio::test]
async fn a_run_beside_another_modalitys_run_keeps_one_thread() {
    let (seen, encoder) = pool_recorder(1);
    let machine = Arc::new(RunsOnMachine::default());
    // Another worker's run is in flight for the whole test.
    let (_, _other) = machine.enter();
    let lone = Some(Executor::multithread(2));
    run_on(&["a"], 4, 2, encoder, None, machine.clone(), lone).await;
    assert_eq!(*seen.lock().unwrap(), [false]);
    assert_eq!(machine.now(), 1, "the worker's own run was counted out");
}

#[tokio::test]
async fn a_burst_shared_over_runs_keeps_one_thread_per_run() {
    let (seen, encoder) = pool_recorder(2);
    let lone = Some(Executor::multithread(2));
    // Four items over two runs of two: the first sees the rest queued, the second another run.
    run_on(
        &["a", "b", "c", "d"],
        2,
        2,
        encoder,
        None,
        Arc::default(),
        lone,
    )
    .await;
    assert_eq!(*seen.lock().unwrap(), [false, false]);
}

#[tokio::test]
async fn a_lone_photo_runs_its_encoder_on_every_core_with_the_hook_beside() {
    let (hook, encoder) = from_inputs();
    let (seen, recorder) = pool_recorder(1);
    let both = move |batch: &[Request]| {
        recorder(batch);
        encoder(batch)
    };
    let semantic: Arc<dyn SemanticHook> = hook.clone();
    let lone = Some(Executor::multithread(2));
    let (outcomes, _) = run_on(&["photo"], 4, 2, both, Some(semantic), Arc::default(), lone).await;
    assert!(
        hook.saw_encoder.load(Ordering::SeqCst),
        "the hook ran beside"
    );
    assert_eq!(*seen.lock().unwrap(), [true], "the encoder ran on the pool");
    assert!(outcomes[0].result.is_ok() && outcomes[0].semantic.is_some());
}
