//! systemd integration: the sd_notify(3) protocol (`READY=1`, `STATUS=`, `RELOADING=1`,
//! `STOPPING=1`) and a watchdog that pings (`WATCHDOG=1`) only while the pipeline is alive.
//!
//! Everything is a no-op without `NOTIFY_SOCKET`, so `edgefuse run` behaves the same outside
//! systemd. The protocol goes through the pure-Rust `sd-notify` crate (no libsystemd; see
//! docs/service.md).
//!
//! "Alive" means, at each watchdog tick:
//! - every watched task (encoder workers, publisher, MQTT intake) is still running, and
//! - no encoder has been on one batch for longer than `watchdog.max_batch_s`.
//!
//! An idle daemon (no inputs) is alive: nothing is in inference and every task is waiting.
//! A stuck encoder (a batch that never returns from the blocking pool) or a dead task stops the
//! pings, and systemd kills and restarts the service after `WatchdogSec=`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::MissedTickBehavior;

pub use crate::config::WatchdogConfig;
use crate::stats::Stats;
use crate::types::Modality;

/// Where notifications go.
#[derive(Debug, Clone)]
enum Target {
    /// No `NOTIFY_SOCKET`: every call is a no-op.
    Off,
    /// `NOTIFY_SOCKET` from the environment, through `sd_notify::notify`.
    Env,
    /// An explicit socket path (tests, or a supervisor other than systemd).
    Socket(PathBuf),
}

/// Sends sd_notify(3) messages. Failures are logged at debug level, never returned: a missing
/// service manager must not take the daemon down.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Target,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a no-op when it is unset.
    pub fn from_env() -> Notifier {
        let target = match std::env::var_os("NOTIFY_SOCKET") {
            Some(s) if !s.is_empty() => Target::Env,
            _ => Target::Off,
        };
        Notifier { target }
    }

    /// Send to this Unix datagram socket (a file-system path).
    pub fn to_socket(path: impl Into<PathBuf>) -> Notifier {
        Notifier {
            target: Target::Socket(path.into()),
        }
    }

    pub fn disabled() -> Notifier {
        Notifier {
            target: Target::Off,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !matches!(self.target, Target::Off)
    }

    pub fn notify(&self, states: &[NotifyState]) {
        let result = match &self.target {
            Target::Off => Ok(()),
            Target::Env => sd_notify::notify(states),
            Target::Socket(path) => send_to(path, states),
        };
        if let Err(e) = result {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    /// `STATUS=`: one line of free text shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        if self.is_enabled() {
            let line = status.replace(['\n', '\r'], " ");
            self.notify(&[NotifyState::Status(&line)]);
        }
    }
}

/// The same wire format as `sd_notify::notify` (one `KEY=VALUE` per line, one datagram).
fn send_to(path: &std::path::Path, states: &[NotifyState]) -> io::Result<()> {
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sock = UnixDatagram::unbound()?;
    // Never stall the runtime on a receiver that does not read.
    sock.set_nonblocking(true)?;
    sock.send_to(msg.as_bytes(), path)?;
    Ok(())
}

/// What the watchdog checks before each ping.
pub struct Health {
    stats: Arc<Stats>,
    tasks: Vec<(String, AbortHandle)>,
    max_batch: Duration,
    stopping: AtomicBool,
}

impl Health {
    pub fn new(stats: Arc<Stats>, max_batch: Duration) -> Health {
        Health {
            stats,
            tasks: Vec::new(),
            max_batch,
            stopping: AtomicBool::new(false),
        }
    }

    /// Count the pipeline dead if this task ends before shutdown starts.
    pub fn watch<T>(mut self, name: impl Into<String>, task: &JoinHandle<T>) -> Health {
        self.tasks.push((name.into(), task.abort_handle()));
        self
    }

    /// `Ok` while the pipeline is alive; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        // During shutdown tasks end on purpose; only a stuck batch still counts.
        if !self.stopping.load(Ordering::Relaxed) {
            if let Some((name, _)) = self.tasks.iter().find(|(_, t)| t.is_finished()) {
                return Err(format!("the {name} task has ended"));
            }
        }
        for m in Modality::ALL {
            if let Some(busy) = self.stats.busy_for(m) {
                if busy > self.max_batch {
                    return Err(format!(
                        "the {m} encoder has been on one batch for {} s (limit {} s)",
                        busy.as_secs(),
                        self.max_batch.as_secs()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The periodic `STATUS=` line, e.g. `running: 12 items (text 10, vision 2), 0 errors, …`.
    pub fn summary(&self) -> String {
        let per: Vec<String> = Modality::ALL
            .iter()
            .filter(|m| self.stats.items(**m) > 0)
            .map(|m| format!("{m} {}", self.stats.items(*m)))
            .collect();
        let items: u64 = Modality::ALL.iter().map(|m| self.stats.items(*m)).sum();
        let errors: u64 = Modality::ALL.iter().map(|m| self.stats.errors(*m)).sum();
        let mut s = format!("running: {items} items");
        if !per.is_empty() {
            s.push_str(&format!(" ({})", per.join(", ")));
        }
        s.push_str(&format!(", {errors} errors"));
        if items + errors > 0 {
            s.push_str(&format!(
                ", last batch {} s ago",
                self.stats.since_heartbeat().as_secs()
            ));
        }
        s
    }
}

/// The daemon's side of the service manager, before `READY=1`.
pub struct Service {
    notifier: Notifier,
    /// Half of `WATCHDOG_USEC` when the watchdog is on.
    ping_every: Option<Duration>,
    status_every: Duration,
    max_batch: Duration,
}

impl Service {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` (sd_watchdog_enabled(3)).
    pub fn from_env(config: &WatchdogConfig) -> Service {
        let notifier = Notifier::from_env();
        let watchdog = if notifier.is_enabled() {
            sd_notify::watchdog_enabled()
        } else {
            None
        };
        if notifier.is_enabled() {
            tracing::info!(watchdog = ?watchdog, "systemd notification enabled");
        }
        Service::new(notifier, watchdog, config)
    }

    /// `watchdog` is the full `WATCHDOG_USEC` timeout; pings go at half of it.
    pub fn new(notifier: Notifier, watchdog: Option<Duration>, config: &WatchdogConfig) -> Service {
        Service {
            notifier,
            ping_every: watchdog
                .filter(|d| !d.is_zero())
                .map(|d| (d / 2).max(Duration::from_millis(1))),
            status_every: Duration::from_secs(config.status_interval_s.max(1)),
            max_batch: Duration::from_secs(config.max_batch_s),
        }
    }

    pub fn max_batch(&self) -> Duration {
        self.max_batch
    }

    pub fn status(&self, status: &str) {
        self.notifier.status(status);
    }

    /// `STOPPING=1` before `READY=1`: a stop asked during start-up.
    pub fn stopping(&self) {
        self.notifier
            .notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `READY=1`, then watchdog pings and periodic `STATUS=` until the handle is dropped.
    /// Call once the models are loaded and the pipeline is wired.
    pub fn ready(self, health: Health) -> Running {
        let shared = Arc::new(Shared {
            health: RwLock::new(Arc::new(health)),
            note: Mutex::new(None),
        });
        self.notifier
            .notify(&[NotifyState::Ready, NotifyState::Status(&shared.summary())]);
        let task = self.notifier.is_enabled().then(|| {
            tokio::spawn(watchdog(
                self.notifier.clone(),
                Arc::clone(&shared),
                self.ping_every,
                self.status_every,
            ))
        });
        Running {
            notifier: self.notifier,
            shared,
            task,
        }
    }
}

/// What the watchdog task and the daemon share: the pipeline being watched (replaced on a
/// reload) and a note appended to every `STATUS=` (e.g. why the last reload failed).
struct Shared {
    health: RwLock<Arc<Health>>,
    note: Mutex<Option<String>>,
}

impl Shared {
    fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn summary(&self) -> String {
        let mut s = self.health().summary();
        if let Some(note) = &*self.note.lock().unwrap_or_else(PoisonError::into_inner) {
            s.push_str("; ");
            s.push_str(note);
        }
        s
    }
}

/// After `READY=1`: owns the watchdog task (aborted on drop).
pub struct Running {
    notifier: Notifier,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// `STOPPING=1`. Pings go on while the shutdown drains, as long as no batch is stuck.
    pub fn stopping(&self) {
        self.shared.health().stopping.store(true, Ordering::Relaxed);
        self.notifier
            .notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `RELOADING=1` (with `MONOTONIC_USEC=`, which systemd 253+ wants). The current pipeline's
    /// tasks may now end on purpose; pings go on unless a batch is stuck.
    pub fn reloading(&self) {
        self.shared.health().stopping.store(true, Ordering::Relaxed);
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        states.push(NotifyState::Status("reloading the configuration"));
        self.notifier.notify(&states);
    }

    /// `READY=1` after a reload: watch `health` from now on (the same pipeline again when the
    /// reload was refused), with `note` appended to every `STATUS=` until the next reload.
    pub fn reloaded(&self, health: Health, note: Option<String>) {
        *self
            .shared
            .health
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(health);
        *self
            .shared
            .note
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = note;
        self.notifier.notify(&[
            NotifyState::Ready,
            NotifyState::Status(&self.shared.summary()),
        ]);
    }

    pub fn status(&self, status: &str) {
        self.notifier.status(status);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn watchdog(
    notifier: Notifier,
    shared: Arc<Shared>,
    ping_every: Option<Duration>,
    status_every: Duration,
) {
    let mut ping = ping_every.map(|d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let mut status = tokio::time::interval(status_every);
    status.set_missed_tick_behavior(MissedTickBehavior::Delay);
    status.tick().await; // READY=1 carried the first status
    let mut unhealthy: Option<String> = None;
    loop {
        let pinging = ping.is_some();
        tokio::select! {
            _ = async { ping.as_mut().unwrap().tick().await }, if pinging => {
                match shared.health().check() {
                    Ok(()) => {
                        notifier.notify(&[NotifyState::Watchdog]);
                        if let Some(why) = unhealthy.take() {
                            tracing::warn!("watchdog: pipeline alive again (was: {why}); pinging");
                        }
                    }
                    Err(why) => {
                        if unhealthy.as_deref() != Some(why.as_str()) {
                            tracing::error!("watchdog: {why}; no longer pinging systemd");
                            notifier.status(&format!("unhealthy: {why}"));
                        }
                        unhealthy = Some(why);
                    }
                }
            }
            _ = status.tick() => {
                let health = shared.health();
                if health.stopping.load(Ordering::Relaxed) {
                    continue;
                }
                match health.check() {
                    Ok(()) => notifier.status(&shared.summary()),
                    Err(why) => notifier.status(&format!("unhealthy: {why}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `NOTIFY_SOCKET`: a datagram socket bound in a temporary directory.
    struct FakeSystemd {
        sock: UnixDatagram,
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl FakeSystemd {
        fn new() -> FakeSystemd {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_nonblocking(true).unwrap();
            FakeSystemd {
                sock,
                _dir: dir,
                path,
            }
        }

        fn notifier(&self) -> Notifier {
            Notifier::to_socket(&self.path)
        }

        /// Every datagram received so far, one string each.
        fn drain(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.sock.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        }
    }

    fn count(msgs: &[String], line: &str) -> usize {
        msgs.iter().filter(|m| m.lines().any(|l| l == line)).count()
    }

    fn config(max_batch_s: u64) -> WatchdogConfig {
        WatchdogConfig {
            max_batch_s,
            status_interval_s: 10,
        }
    }

    /// A task that runs until the test ends.
    fn forever() -> JoinHandle<()> {
        tokio::spawn(std::future::pending())
    }

    #[test]
    fn without_notify_socket_everything_is_a_no_op() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.notify(&[NotifyState::Ready]);
        n.status("loading models");
    }

    #[tokio::test(start_paused = true)]
    async fn ready_status_watchdog_cadence_and_stopping_reach_the_socket() {
        let fake = FakeSystemd::new();
        let stats = Arc::new(Stats::default());
        let worker = forever();
        let service = Service::new(fake.notifier(), Some(Duration::from_secs(10)), &config(60));
        service.status("loading models");
        let running = service.ready(Health::new(stats.clone(), service_max()).watch("w", &worker));
        // Let the watchdog task take its first (immediate) tick.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let first = fake.drain();
        assert_eq!(first[0], "STATUS=loading models\n");
        assert_eq!(first[1], "READY=1\nSTATUS=running: 0 items, 0 errors\n");
        assert_eq!(count(&first, "WATCHDOG=1"), 1, "{first:?}");

        // WATCHDOG_USEC = 10 s: a ping every 5 s, so 6 more over 30 s; STATUS every 10 s.
        stats.heartbeat();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let later = fake.drain();
        assert_eq!(count(&later, "WATCHDOG=1"), 6, "{later:?}");
        let statuses: Vec<_> = later.iter().filter(|m| m.starts_with("STATUS=")).collect();
        assert_eq!(statuses.len(), 3, "{later:?}");
        assert!(statuses[0].starts_with("STATUS=running: 0 items"));

        running.stopping();
        let stop = fake.drain();
        assert_eq!(stop, vec!["STOPPING=1\nSTATUS=stopping\n".to_owned()]);
        // The worker ends during shutdown: that is not a failure, pings go on.
        worker.abort();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = fake.drain();
        assert_eq!(count(&after, "WATCHDOG=1"), 2, "{after:?}");
        assert!(!after.iter().any(|m| m.starts_with("STATUS=")), "{after:?}");
        drop(running);
    }

    fn service_max() -> Duration {
        Duration::from_secs(60)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pipeline_keeps_pinging() {
        let fake = FakeSystemd::new();
        let stats = Arc::new(Stats::default());
        let worker = forever();
        let service = Service::new(fake.notifier(), Some(Duration::from_secs(2)), &config(5));
        let _running =
            service.ready(Health::new(stats, Duration::from_secs(5)).watch("w", &worker));
        // No batch for an hour: still alive, one ping per second.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut pings = count(&fake.drain(), "WATCHDOG=1");
        // (Drained every 5 s: a Unix datagram queue holds only net.unix.max_dgram_qlen = 10.)
        for _ in 0..720 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            pings += count(&fake.drain(), "WATCHDOG=1");
        }
        assert_eq!(pings, 3601);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stop_while_an_encoder_is_stuck_and_resume_when_it_returns() {
        let fake = FakeSystemd::new();
        let stats = Arc::new(Stats::default());
        let worker = forever();
        let service = Service::new(fake.notifier(), Some(Duration::from_secs(2)), &config(5));
        let _running =
            service.ready(Health::new(stats.clone(), Duration::from_secs(5)).watch("w", &worker));
        tokio::time::sleep(Duration::from_millis(10)).await;
        fake.drain();

        stats.busy_since(Modality::Vision, Some(tokio::time::Instant::now()));
        // Within the bound the batch is merely slow: pings go on.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(count(&fake.drain(), "WATCHDOG=1"), 4);
        // Past it, they stop, and STATUS says why.
        tokio::time::sleep(Duration::from_secs(2)).await;
        fake.drain();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let stuck = fake.drain();
        assert_eq!(count(&stuck, "WATCHDOG=1"), 0, "{stuck:?}");
        assert!(
            stuck.iter().any(
                |m| m.starts_with("STATUS=unhealthy: the vision encoder has been on one batch")
            ),
            "{stuck:?}"
        );

        stats.busy_since(Modality::Vision, None);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(count(&fake.drain(), "WATCHDOG=1") >= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stop_when_a_worker_task_dies() {
        let fake = FakeSystemd::new();
        let stats = Arc::new(Stats::default());
        let worker = forever();
        let other = forever();
        let service = Service::new(fake.notifier(), Some(Duration::from_secs(2)), &config(60));
        let _running = service.ready(
            Health::new(stats, Duration::from_secs(60))
                .watch("text worker", &worker)
                .watch("publisher", &other),
        );
        tokio::time::sleep(Duration::from_millis(5500)).await;
        assert!(count(&fake.drain(), "WATCHDOG=1") >= 5);
        worker.abort();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let msgs = fake.drain();
        assert_eq!(count(&msgs, "WATCHDOG=1"), 0, "{msgs:?}");
        assert!(msgs
            .iter()
            .any(|m| m == "STATUS=unhealthy: the text worker task has ended\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn without_watchdog_usec_there_are_no_pings_but_status_goes_on() {
        let fake = FakeSystemd::new();
        let stats = Arc::new(Stats::default());
        let service = Service::new(fake.notifier(), None, &config(60));
        let _running = service.ready(Health::new(stats, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_secs(25)).await;
        let msgs = fake.drain();
        assert_eq!(count(&msgs, "WATCHDOG=1"), 0);
        assert_eq!(count(&msgs, "READY=1"), 1);
        assert_eq!(msgs.len(), 3, "READY and two STATUS updates: {msgs:?}");
    }

    #[test]
    fn the_summary_counts_items_per_modality() {
        let stats = Arc::new(Stats::default());
        let h = Health::new(stats, Duration::from_secs(1));
        assert_eq!(h.summary(), "running: 0 items, 0 errors");
        assert!(h.check().is_ok());
    }
}
