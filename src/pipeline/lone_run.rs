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
use crate::types::{round_3dp, Modality, Ticket};

/// A model must be at least this much faster on every core to use them: the margin pays for
/// the runs that start during a lone run and share its cores.
pub const MIN_GAIN: f64 = 0.9;

/// Timed runs per thread count, after one warm-up each; alternated so a noisy machine biases
/// neither side.
const ROUNDS: usize = 3;

/// Other processes' CPU use during a measurement (in cores) above which it is not kept as
/// final: a busy machine understates what a second thread gains, so the next start measures
/// again, up to [`MAX_ATTEMPTS`] starts in all.
const BUSY_CORES: f64 = 0.25;
const MAX_ATTEMPTS: u32 = 3;

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
    /// CPU the rest of the machine used meanwhile, in cores (Linux; absent where unknown).
    #[serde(default)]
    pub others_busy_cores: Option<f64>,
    /// Starts that measured this model so far.
    #[serde(default = "one")]
    pub attempts: u32,
}

fn one() -> u32 {
    1
}

impl Measured {
    /// Whether a lone run of this model uses `threads`.
    pub fn gains(&self) -> bool {
        self.threads > 1 && self.all_threads_ms <= MIN_GAIN * self.one_thread_ms
    }

    /// Whether the next start should measure again: the machine was busy this time, and the
    /// attempts are not used up.
    pub fn provisional(&self) -> bool {
        self.others_busy_cores.is_some_and(|c| c > BUSY_CORES) && self.attempts < MAX_ATTEMPTS
    }
}

/// Each modality's executor for a lone run; absent: one thread. (What was measured is in
/// the log and in `<state_dir>/lone-threads.json`.)
#[derive(Clone, Default)]
pub struct LoneRuns {
    pub executors: BTreeMap<Modality, Executor>,
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
    plan_with_cores(
        candidates,
        threads,
        wanted,
        wanted.get(),
        state_dir,
        CpuUse::now,
    )
}

/// Reads the CPU time used so far ([`CpuUse::now`]; tests put in their own).
type CpuProbe = fn() -> Option<CpuUse>;

/// [`plan`] with `n` threads for a lone run (what `wanted` comes to on this machine).
fn plan_with_cores(
    candidates: &[Candidate],
    threads: usize,
    wanted: Cores,
    n: usize,
    state_dir: &Path,
    probe: CpuProbe,
) -> LoneRuns {
    if n <= threads || candidates.is_empty() {
        return LoneRuns::default();
    }
    let mut out = LoneRuns::default();
    if let Cores::Count(_) = wanted {
        let Some(executor) = pool(n) else {
            return out;
        };
        for c in candidates {
            out.executors.insert(c.encoder.modality(), executor.clone());
        }
        return out;
    }
    // Started only when a model measures or uses it: when every kept measurement says one
    // thread, no pool threads are started at all.
    let mut executor: Option<Option<Executor>> = None;
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
        let before = kept.get(&key);
        let measured = match before.filter(|k| !k.provisional()) {
            Some(k) => Some(k.clone()),
            None => match executor.get_or_insert_with(|| pool(n)) {
                None => None,
                Some(pool) => match measure(&c.encoder, pool, n, probe) {
                    Ok(k) => Some(Measured {
                        attempts: before.map_or(1, |b| b.attempts + 1),
                        ..k
                    }),
                    Err(e) => {
                        tracing::warn!(%m, "could not measure a lone run on {n} threads ({e}); one thread");
                        None
                    }
                },
            },
        };
        let Some(measured) = measured else { continue };
        tracing::info!(
            %m,
            "lone run: {:.1} ms at 1 thread, {:.1} ms at {}: {}{}",
            measured.one_thread_ms,
            measured.all_threads_ms,
            measured.threads,
            if measured.gains() {
                "uses every core when alone"
            } else {
                "keeps one thread"
            },
            if measured.provisional() {
                " (other processes were busy: measured again at the next start)"
            } else {
                ""
            }
        );
        if measured.gains() {
            if let Some(pool) = executor.get_or_insert_with(|| pool(n)) {
                out.executors.insert(m, pool.clone());
            }
        }
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
fn measure(
    encoder: &EncoderRef,
    executor: &Executor,
    threads: usize,
    probe: CpuProbe,
) -> Result<Measured, String> {
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
    let cpu_before = probe();
    time(&one)?;
    time(executor)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(time(&one)?);
        b.push(time(executor)?);
    }
    // Whole microseconds: finer digits are timer noise, and a short decimal reads back from
    // the JSON file as the same f64, so an unchanged file compares equal.
    Ok(Measured {
        one_thread_ms: round_3dp(median(&mut a)),
        threads,
        all_threads_ms: round_3dp(median(&mut b)),
        measured: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        others_busy_cores: cpu_before.and_then(|b| b.others_since(probe()?)),
        attempts: 1,
    })
}

/// The CPU time the whole machine and this process have used, and when (Linux).
#[derive(Clone, Copy)]
struct CpuUse {
    machine_s: f64,
    own_s: f64,
    at: Instant,
}

impl CpuUse {
    fn now() -> Option<CpuUse> {
        Some(CpuUse {
            machine_s: machine_cpu_s()?,
            own_s: own_cpu_s()?,
            at: Instant::now(),
        })
    }

    /// Cores the rest of the machine kept busy on average from `self` to `now`.
    fn others_since(self, now: CpuUse) -> Option<f64> {
        let wall = now.at.duration_since(self.at).as_secs_f64();
        (wall > 0.0)
            .then(|| ((now.machine_s - self.machine_s) - (now.own_s - self.own_s)).max(0.0) / wall)
    }
}

/// Busy CPU seconds of every CPU since boot: `/proc/stat`'s user, nice, system, irq, softirq
/// and steal (not idle or iowait).
fn machine_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| busy / ticks as f64)
}

/// This process's user + system CPU seconds.
fn own_cpu_s() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(s(u.ru_utime) + s(u.ru_stime))
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
            others_busy_cores: None,
            attempts: 1,
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
        let given = plan_with_cores(&candidates, 1, wanted, 2, dir.path(), quiet);
        assert!(given.executors.contains_key(&Modality::Vision));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(!dir.path().join("lone-threads.json").exists());

        // "auto" on a 1-core machine, or threads already at the count: nothing to decide.
        let none = plan_with_cores(&candidates, 2, Cores::Count(2), 2, dir.path(), quiet);
        assert!(none.executors.is_empty());

        // "auto": measured (2 warm-ups + 2 × ROUNDS), kept, and read back at the next start.
        let auto = plan_auto(&candidates, dir.path(), 2);
        assert!(auto.executors.contains_key(&Modality::Vision));
        let m = only_kept(dir.path());
        assert!(m.gains() && m.one_thread_ms >= 20.0, "{m:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2 + 2 * ROUNDS);
        let again = plan_auto(&candidates, dir.path(), 2);
        assert!(again.executors.contains_key(&Modality::Vision));
        assert_eq!(only_kept(dir.path()), m);
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
        assert!(out.executors.is_empty());
        assert!(
            !dir.path().join("lone-threads.json").exists(),
            "nothing measured, nothing kept"
        );
    }

    #[test]
    fn a_measurement_on_a_busy_machine_is_taken_again_a_bounded_number_of_times() {
        let m = |busy, attempts| Measured {
            one_thread_ms: 100.0,
            threads: 2,
            all_threads_ms: 100.0,
            measured: String::new(),
            others_busy_cores: busy,
            attempts,
        };
        assert!(!m(None, 1).provisional(), "unknown counts as quiet");
        assert!(!m(Some(0.1), 1).provisional());
        assert!(m(Some(1.3), 1).provisional());
        assert!(m(Some(1.3), MAX_ATTEMPTS - 1).provisional());
        assert!(
            !m(Some(1.3), MAX_ATTEMPTS).provisional(),
            "attempts used up"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn other_processes_cpu_is_measured_apart_from_our_own() {
        let before = CpuUse::now().expect("Linux has /proc/stat and getrusage");
        // Busy on this thread only, until 0.1 CPU s of it is ours (bounded: a loaded test
        // machine may give this thread less than its wall time).
        let t0 = Instant::now();
        let mut x = 0u64;
        while own_cpu_s().unwrap() - before.own_s < 0.1 {
            assert!(
                t0.elapsed().as_secs() < 30,
                "0.1 s of CPU not counted as ours in 30 s"
            );
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let others = before.others_since(CpuUse::now().unwrap()).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!((0.0..=cores).contains(&others), "{others}");
    }

    /// [`plan`] with `"auto"` as if the machine had `cores` CPUs, with nothing else running.
    fn plan_auto(candidates: &[Candidate], dir: &Path, cores: usize) -> LoneRuns {
        plan_with_cores(candidates, 1, Cores::Auto, cores, dir, quiet)
    }

    fn quiet() -> Option<CpuUse> {
        None
    }

    /// The one measurement kept in `dir`.
    fn only_kept(dir: &Path) -> Measured {
        let kept: BTreeMap<String, Measured> =
            serde_json::from_slice(&std::fs::read(dir.join("lone-threads.json")).unwrap()).unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        kept.into_values().next().unwrap()
    }

    #[test]
    fn a_measurement_taken_while_the_machine_was_busy_is_taken_again_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let candidates = [fake(Modality::Audio, calls.clone())];
        plan_auto(&candidates, dir.path(), 2);
        assert_eq!(only_kept(dir.path()).attempts, 1);
        let calls_once = calls.load(Ordering::SeqCst);
        // As if other processes had kept 1.3 cores busy during that first measurement.
        let path = dir.path().join("lone-threads.json");
        let mut kept: BTreeMap<String, Measured> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for m in kept.values_mut() {
            m.others_busy_cores = Some(1.3);
        }
        std::fs::write(&path, serde_json::to_vec(&kept).unwrap()).unwrap();
        plan_auto(&candidates, dir.path(), 2);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 * calls_once,
            "measured again"
        );
        assert_eq!(only_kept(dir.path()).attempts, 2);
        // Quiet this time: kept for good.
        plan_auto(&candidates, dir.path(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2 * calls_once);
    }
}
