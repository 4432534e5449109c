//! A model run that is alone on the machine may use every core. tract's intra-op threads make
//! one item sooner for some models (vision, audio: big matrix products) and later for others
//! (text: too small to split), and by how much depends on the CPU, so which models gain is
//! measured once per model and machine at start (`encoders.lone_run_threads = "auto"`), on the
//! built-in samples, and kept in `<state_dir>/lone-threads.json` for the next start.
//!
//! "Alone" is counted across every modality's worker ([`RunsOnMachine`]): a run that starts
//! while another is in flight keeps to one thread, so a burst or two modalities at once still
//! get one core per run and nothing is oversubscribed by more than the tail of a lone run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use super::worker::EncoderRef;
use super::{Body, Purpose, Request};
use crate::config::Cores;
use crate::types::{Modality, Ticket};

/// A model must be at least this much faster on every core to use them: the margin pays for
/// the runs that start during a lone run and share its cores.
pub const MIN_GAIN: f64 = 0.9;

/// Timed runs per thread count, after one warm-up each; alternated so a noisy machine biases
/// neither side.
const ROUNDS: usize = 3;

/// The model runs in flight on the machine, over every modality's worker.
#[derive(Debug, Default)]
pub struct RunsOnMachine(AtomicUsize);

impl RunsOnMachine {
    /// Count a run in until the guard drops; whether it is alone (none was in flight before).
    pub fn enter(self: &Arc<Self>) -> (bool, RunGuard) {
        let before = self.0.fetch_add(1, Ordering::SeqCst);
        (before == 0, RunGuard(Arc::clone(self)))
    }

    pub fn now(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// One run in flight; counted out when dropped (also when the run panics).
#[derive(Debug)]
pub struct RunGuard(Arc<RunsOnMachine>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What was measured for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Median milliseconds of one sample at one thread, and at `threads`.
    pub one_thread_ms: f64,
    pub threads: usize,
    pub all_threads_ms: f64,
    /// When (RFC 3339).
    pub measured: String,
}

impl Measured {
    /// Whether a lone run of this model uses `threads`.
    pub fn gains(&self) -> bool {
        self.threads > 1 && self.all_threads_ms <= MIN_GAIN * self.one_thread_ms
    }
}

/// Each modality's executor for a lone run; absent: one thread.
#[derive(Clone, Default)]
pub struct LoneRuns {
    pub executors: BTreeMap<Modality, Executor>,
    pub measured: BTreeMap<Modality, Measured>,
}

/// A model to decide for: its worker's encoder and what identifies the model's speed on this
/// machine (model sha256 and input shapes; [`plan`] adds the CPU, cores and tract version).
pub struct Candidate {
    pub encoder: EncoderRef,
    pub model_id: String,
}

/// Decide each candidate's lone-run threads (blocking: may run the models). `threads` is
/// `encoders.threads`, `wanted` is `encoders.lone_run_threads`; `state_dir` keeps the
/// measurements. A measurement that fails costs only the gain: that model keeps one thread.
pub fn plan(candidates: &[Candidate], threads: usize, wanted: Cores, state_dir: &Path) -> LoneRuns {
    plan_with_cores(candidates, threads, wanted, wanted.get(), state_dir)
}

/// [`plan`] with `n` threads for a lone run (what `wanted` comes to on this machine).
fn plan_with_cores(
    candidates: &[Candidate],
    threads: usize,
    wanted: Cores,
    n: usize,
    state_dir: &Path,
) -> LoneRuns {
    if n <= threads || candidates.is_empty() {
        return LoneRuns::default();
    }
    let Some(executor) = pool(n) else {
        return LoneRuns::default();
    };
    let mut out = LoneRuns::default();
    if let Cores::Count(_) = wanted {
        for c in candidates {
            out.executors.insert(c.encoder.modality(), executor.clone());
        }
        return out;
    }
    let path = state_dir.join("lone-threads.json");
    let kept: BTreeMap<String, Measured> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // Only the current models' entries are written back, so the file never outgrows them.
    let mut now: BTreeMap<String, Measured> = BTreeMap::new();
    for c in candidates {
        let m = c.encoder.modality();
        let key = machine_key(&c.model_id, n);
        let measured = match kept.get(&key) {
            Some(k) => Some(k.clone()),
            None => match measure(&c.encoder, &executor, n) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(%m, "could not measure a lone run on {n} threads ({e}); one thread");
                    None
                }
            },
        };
        let Some(measured) = measured else { continue };
        tracing::info!(
            %m,
            "lone run: {:.1} ms at 1 thread, {:.1} ms at {}: {}",
            measured.one_thread_ms,
            measured.all_threads_ms,
            measured.threads,
            if measured.gains() {
                "uses every core when alone"
            } else {
                "keeps one thread"
            }
        );
        if measured.gains() {
            out.executors.insert(m, executor.clone());
        }
        out.measured.insert(m, measured.clone());
        now.insert(key, measured);
    }
    if now != kept {
        let written = serde_json::to_vec_pretty(&now)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                std::fs::create_dir_all(state_dir)?;
                crate::atomic_file::write_atomic(&path, &b)
            });
        if let Err(e) = written {
            tracing::warn!(
                "cannot keep the lone-run measurements in {}: {e}",
                path.display()
            );
        }
    }
    out
}

/// An `n`-thread pool for lone runs; `None` (with a warning) if the OS refuses the threads.
fn pool(n: usize) -> Option<Executor> {
    match std::panic::catch_unwind(|| Executor::multithread_with_name(n, "tract-lone")) {
        Ok(e) => Some(e),
        Err(_) => {
            tracing::warn!("cannot start {n} threads for lone runs; every run keeps one thread");
            None
        }
    }
}

/// What a measurement depends on besides the model: the CPU's features, the cores and tract.
fn machine_key(model_id: &str, threads: usize) -> String {
    format!(
        "{model_id} | {} {} | {threads} threads | tract {}",
        crate::cpu::arch(),
        crate::cpu::tract_isa().join(","),
        crate::encoders::compiled::TRACT_VERSION
    )
}

/// Time the modality's built-in sample at one thread and on `executor`, alternating.
fn measure(encoder: &EncoderRef, executor: &Executor, threads: usize) -> Result<Measured, String> {
    let batch = [sample_request(encoder.modality())];
    let time = |ex: &Executor| -> Result<f64, String> {
        let t0 = Instant::now();
        let results = multithread_tract_scope(ex.clone(), || encoder.embed(&batch));
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        match results.first() {
            Some(Ok(_)) => Ok(ms),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no result".into()),
        }
    };
    let one = Executor::SingleThread;
    time(&one)?;
    time(executor)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(time(&one)?);
        b.push(time(executor)?);
    }
    Ok(Measured {
        one_thread_ms: median(&mut a),
        threads,
        all_threads_ms: median(&mut b),
        measured: crate::mqtt::payload::now_rfc3339(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The built-in sample of a modality, as a request.
fn sample_request(modality: Modality) -> Request {
    let body = match modality {
        Modality::Text => Body::Text(crate::samples::TEXT.to_owned()),
        Modality::Vision => Body::Encoded(bytes::Bytes::from_static(crate::samples::IMAGE)),
        Modality::Audio => Body::Encoded(bytes::Bytes::from_static(crate::samples::WAV)),
    };
    Request {
        id: "lone-run-measurement".into(),
        modality,
        purpose: Purpose::Embed,
        body,
        source: "measurement".into(),
        group: String::new(),
        topic: String::new(),
        response_topic: None,
        correlation: None,
        received: tokio::time::Instant::now(),
        ticket: Ticket::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_alone_only_when_none_is_in_flight_and_leaves_when_dropped() {
        let machine = Arc::new(RunsOnMachine::default());
        let (alone, first) = machine.enter();
        assert!(alone);
        let (alone, second) = machine.enter();
        assert!(!alone);
        assert_eq!(machine.now(), 2);
        drop(first);
        drop(second);
        assert_eq!(machine.now(), 0);
        let (alone, _third) = machine.enter();
        assert!(alone);
    }

    #[test]
    fn a_guard_leaves_even_when_its_run_panics() {
        let machine = Arc::new(RunsOnMachine::default());
        let m = machine.clone();
        let r = std::panic::catch_unwind(move || {
            let (_, _guard) = m.enter();
            panic!("a model panicked");
        });
        assert!(r.is_err());
        assert_eq!(machine.now(), 0);
    }

    #[test]
    fn every_core_is_used_only_for_a_clear_gain() {
        let m = |one, all, threads| Measured {
            one_thread_ms: one,
            threads,
            all_threads_ms: all,
            measured: String::new(),
        };
        assert!(m(100.0, 85.0, 2).gains());
        assert!(m(100.0, 90.0, 2).gains());
        assert!(!m(100.0, 95.0, 2).gains(), "within the margin");
        assert!(!m(5.0, 5.5, 2).gains(), "slower");
        assert!(!m(100.0, 50.0, 1).gains(), "one thread is no change");
    }

    fn fake(modality: Modality, calls: Arc<AtomicUsize>) -> Candidate {
        Candidate {
            encoder: EncoderRef::Fake(
                modality,
                Arc::new(move |batch: &[Request]| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Slower on one thread than on the pool, by a margin no noise hides.
                    let pool = matches!(
                        tract_linalg::multithread::current_tract_executor(),
                        Executor::MultiThread(_)
                    );
                    std::thread::sleep(std::time::Duration::from_millis(if pool { 2 } else { 20 }));
                    batch
                        .iter()
                        .map(|_| {
                            Ok(crate::types::Embedding {
                                vector: vec![1.0],
                                blocks: None,
                                timings: Default::default(),
                            })
                        })
                        .collect()
                }),
            ),
            model_id: format!("fake-{modality}"),
        }
    }

    #[test]
    fn auto_measures_once_keeps_the_result_and_picks_what_gains() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let candidates = [fake(Modality::Vision, calls.clone())];
        let wanted = Cores::Count(2);
        // A number is taken as given: no measurement.
        let given = plan(&candidates, 1, wanted, dir.path());
        assert!(given.executors.contains_key(&Modality::Vision));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(!dir.path().join("lone-threads.json").exists());

        // "auto" on a 1-core machine, or threads already at the count: nothing to decide.
        let none = plan(&candidates, 2, Cores::Count(2), dir.path());
        assert!(none.executors.is_empty());

        // "auto": measured (2 warm-ups + 2 × ROUNDS), kept, and read back at the next start.
        let auto = plan_auto(&candidates, dir.path(), 2);
        assert!(auto.executors.contains_key(&Modality::Vision));
        let m = &auto.measured[&Modality::Vision];
        assert!(m.gains() && m.one_thread_ms >= 20.0, "{m:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2 + 2 * ROUNDS);
        let again = plan_auto(&candidates, dir.path(), 2);
        assert_eq!(again.measured, auto.measured);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 + 2 * ROUNDS,
            "read back, not re-run"
        );
    }

    #[test]
    fn a_failed_measurement_keeps_one_thread() {
        let dir = tempfile::tempdir().unwrap();
        let failing = Candidate {
            encoder: EncoderRef::Fake(
                Modality::Audio,
                Arc::new(|batch: &[Request]| {
                    batch
                        .iter()
                        .map(|_| Err(crate::error::InputError::Inference("no".into())))
                        .collect()
                }),
            ),
            model_id: "failing".into(),
        };
        let out = plan_auto(&[failing], dir.path(), 2);
        assert!(out.executors.is_empty() && out.measured.is_empty());
    }

    /// [`plan`] with `"auto"` as if the machine had `cores` CPUs.
    fn plan_auto(candidates: &[Candidate], dir: &Path, cores: usize) -> LoneRuns {
        plan_with_cores(candidates, 1, Cores::Auto, cores, dir)
    }
}
