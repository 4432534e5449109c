//! Counters and latency percentiles for the `stats` topic, and the pipeline heartbeat.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock (std's outside tests) so paused-clock tests can drive the watchdog.
use tokio::time::Instant;

use serde::Serialize;

use crate::types::{ItemResult, Modality};

const WINDOW: usize = 1024;

#[derive(Default)]
struct Latencies {
    queue: VecDeque<f64>,
    preprocess: VecDeque<f64>,
    inference: VecDeque<f64>,
    postprocess: VecDeque<f64>,
    total: VecDeque<f64>,
}

fn push(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

#[derive(Default)]
struct PerModality {
    items: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Latencies>,
    /// When the batch now in inference started, as ms since start + 1; 0 when idle.
    busy_since_ms: AtomicU64,
}

/// Shared by workers (recording) and the stats publisher (reading).
pub struct Stats {
    started: Instant,
    per: [PerModality; 3],
    heartbeat_ms: AtomicU64,
    /// Fusion state sizes and what its limits did; kept across reloads.
    pub fusion: std::sync::Arc<FusionCounters>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            per: Default::default(),
            heartbeat_ms: AtomicU64::new(0),
            fusion: Default::default(),
        }
    }
}

/// The fusion state keyed by client data (groups, labels) and its limits, for `stats`.
/// Gauges are set by the publisher after each change; counters only grow.
#[derive(Debug, Default)]
pub struct FusionCounters {
    /// Fusion groups held now (at most `fusion.max_groups`).
    pub groups: AtomicU64,
    /// Groups evicted while still inside the window because `fusion.max_groups` was reached.
    pub groups_evicted: AtomicU64,
    /// Labels and examples held now, and the bytes of the label store on disk.
    pub labels: AtomicU64,
    pub label_examples: AtomicU64,
    pub label_store_bytes: AtomicU64,
    /// Enrolls refused by `fusion.max_labels` or the name/id length limit.
    pub enrolls_refused: AtomicU64,
    /// Oldest examples dropped by `fusion.max_examples`.
    pub examples_dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct FusionSnapshot {
    pub groups: u64,
    pub groups_evicted: u64,
    pub labels: u64,
    pub label_examples: u64,
    pub label_store_bytes: u64,
    pub enrolls_refused: u64,
    pub examples_dropped: u64,
}

impl FusionCounters {
    pub fn snapshot(&self) -> FusionSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FusionSnapshot {
            groups: g(&self.groups),
            groups_evicted: g(&self.groups_evicted),
            labels: g(&self.labels),
            label_examples: g(&self.label_examples),
            label_store_bytes: g(&self.label_store_bytes),
            enrolls_refused: g(&self.enrolls_refused),
            examples_dropped: g(&self.examples_dropped),
        }
    }
}

/// Rate limit for a log line about a limit that may act on every message (an attacker's
/// flood must not flood the journal too): the first time, then at most once per `every`,
/// with the number of times it acted in between.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            since: 0,
        }
    }

    /// Count one occurrence; `Some(n)` when a line is due, `n` occurrences since the last one
    /// (this one included).
    pub fn hit(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

fn index(m: Modality) -> usize {
    match m {
        Modality::Text => 0,
        Modality::Vision => 1,
        Modality::Audio => 2,
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    #[serde(serialize_with = "crate::types::round3")]
    pub p50: f64,
    #[serde(serialize_with = "crate::types::round3")]
    pub p95: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModalitySnapshot {
    pub items: u64,
    pub errors: u64,
    pub drops: u64,
    pub queue_depth: usize,
    pub latency_ms: BTreeMap<&'static str, Percentiles>,
}

impl Stats {
    pub fn record(&self, m: Modality, result: &ItemResult, queue_ms: f64, total_ms: f64) {
        let p = &self.per[index(m)];
        match result {
            Ok(e) => {
                p.items.fetch_add(1, Ordering::Relaxed);
                let mut l = p.latencies.lock().unwrap_or_else(|e| e.into_inner());
                push(&mut l.queue, queue_ms);
                push(&mut l.preprocess, e.timings.preprocess_ms);
                push(&mut l.inference, e.timings.inference_ms);
                push(&mut l.postprocess, e.timings.postprocess_ms);
                push(&mut l.total, total_ms);
            }
            Err(_) => {
                p.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Workers call this after every batch; the watchdog reads it.
    pub fn heartbeat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Workers call this when their oldest batch in inference changes: when it started, or
    /// `None` when none is running (the watchdog reads it through `busy_for`).
    pub fn busy_since(&self, m: Modality, oldest: Option<Instant>) {
        let at = oldest.map_or(0, |t| {
            t.saturating_duration_since(self.started).as_millis() as u64 + 1
        });
        self.per[index(m)]
            .busy_since_ms
            .store(at, Ordering::Relaxed);
    }

    /// How long the batch now in inference has been running; `None` when idle.
    pub fn busy_for(&self, m: Modality) -> Option<Duration> {
        let since = self.per[index(m)].busy_since_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        (since > 0).then(|| Duration::from_millis(now.saturating_sub(since)))
    }

    /// Time since the last completed batch (since start when none has completed).
    pub fn since_heartbeat(&self) -> Duration {
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        Duration::from_millis((self.started.elapsed().as_millis() as u64).saturating_sub(beat))
    }

    pub fn errors(&self, m: Modality) -> u64 {
        self.per[index(m)].errors.load(Ordering::Relaxed)
    }

    pub fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn items(&self, m: Modality) -> u64 {
        self.per[index(m)].items.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, m: Modality, drops: u64, queue_depth: usize) -> ModalitySnapshot {
        let p = &self.per[index(m)];
        let l = p.latencies.lock().unwrap_or_else(|e| e.into_inner());
        let mut latency_ms = BTreeMap::new();
        for (name, q) in [
            ("queue", &l.queue),
            ("preprocess", &l.preprocess),
            ("inference", &l.inference),
            ("postprocess", &l.postprocess),
            ("total", &l.total),
        ] {
            latency_ms.insert(name, percentiles(q));
        }
        ModalitySnapshot {
            items: p.items.load(Ordering::Relaxed),
            errors: p.errors.load(Ordering::Relaxed),
            drops,
            queue_depth,
            latency_ms,
        }
    }
}

pub fn percentiles(values: &VecDeque<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles { p50: 0.0, p95: 0.0 };
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[(((v.len() - 1) as f64) * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
    }
}

/// Hand freed heap back to the OS after each busy spell, once no batch has run for `quiet`.
/// glibc keeps a burst's freed activations and im2col buffers in its per-thread arenas
/// (docs/performance.md, "RSS"); trimming between items instead would cost the next item
/// its page faults. Runs for the life of the daemon; one trim per quiet spell.
pub async fn trim_when_quiet(stats: std::sync::Arc<Stats>, quiet: Duration) {
    let mut trimmed_at = stats.heartbeat_ms.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(quiet);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beat = stats.heartbeat_ms.load(Ordering::Relaxed);
        let busy = Modality::ALL.iter().any(|m| stats.busy_for(*m).is_some());
        if should_trim(trimmed_at, beat, busy, stats.since_heartbeat(), quiet) {
            trimmed_at = beat;
            let _ = tokio::task::spawn_blocking(crate::cpu::trim_heap).await;
        }
    }
}

/// Trim when a batch has completed since the last trim (`beat` moved), none runs now, and
/// the last one completed at least `quiet` ago. Pure.
fn should_trim(
    trimmed_at: u64,
    beat: u64,
    busy: bool,
    since_beat: Duration,
    quiet: Duration,
) -> bool {
    beat != trimmed_at && !busy && since_beat >= quiet
}

/// Resident set size of this process in bytes (Linux), 0 where unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_trimmed_once_per_quiet_spell_and_never_while_a_batch_runs() {
        let q = Duration::from_secs(2);
        let long = Duration::from_secs(3);
        // Work done since the last trim, nothing running, quiet long enough: trim.
        assert!(should_trim(0, 500, false, long, q));
        // Nothing done since the last trim (or ever): nothing to give back.
        assert!(!should_trim(500, 500, false, long, q));
        assert!(!should_trim(0, 0, false, long, q));
        // A batch running, or one finished a moment ago (a burst may go on): wait.
        assert!(!should_trim(0, 500, true, long, q));
        assert!(!should_trim(0, 500, false, Duration::from_millis(300), q));
    }

    #[test]
    fn percentiles_of_a_known_series() {
        let v: VecDeque<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&v);
        assert_eq!(p.p50, 51.0);
        assert_eq!(p.p95, 95.0);
        assert_eq!(percentiles(&VecDeque::new()).p50, 0.0);
    }

    #[test]
    fn rss_is_reported_on_linux() {
        assert!(rss_bytes() > 1024 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_logs_the_first_then_once_per_period_with_a_count() {
        let mut t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(t.hit(), Some(3));
    }
}
