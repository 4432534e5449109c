//! OS signals as one domain enum (vector's habit): SIGHUP asks for a reload; SIGTERM, SIGINT
//! or the caller's own shutdown future ask for a shutdown.

use std::future::Future;
use std::pin::Pin;

use anyhow::Context;

/// What the daemon is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Re-read the configuration (SIGHUP).
    Reload,
    /// Stop gracefully (SIGTERM, SIGINT, or the shutdown future given to [`Signals::new`]).
    Shutdown,
}

/// The daemon's signals, as a stream of [`Signal`]s.
pub struct Signals<F> {
    hangup: Hangup,
    /// `None` once it resolved: a finished future must not be polled again.
    shutdown: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = ()>> Signals<F> {
    /// Listen for SIGHUP now (so one that arrives during start-up is not fatal); `shutdown`
    /// resolves when the daemon should stop ([`shutdown_signal`] in production, the test's own
    /// future in tests).
    pub fn new(shutdown: F) -> anyhow::Result<Signals<F>> {
        Ok(Signals {
            hangup: Hangup::new()?,
            shutdown: Some(Box::pin(shutdown)),
        })
    }

    /// The next signal; [`Signal::Shutdown`] again at once after the first.
    pub async fn recv(&mut self) -> Signal {
        let Some(shutdown) = self.shutdown.as_mut() else {
            return Signal::Shutdown;
        };
        tokio::select! {
            _ = shutdown => {
                self.shutdown = None;
                Signal::Shutdown
            }
            _ = self.hangup.recv() => Signal::Reload,
        }
    }

    /// `work`'s output, or `None` if a shutdown is asked first (then `work` is dropped). A
    /// SIGHUP meanwhile stays pending for [`Signals::recv`].
    pub async fn unless_shutdown<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let shutdown = self.shutdown.as_mut()?;
        tokio::select! {
            biased;
            _ = shutdown => {
                self.shutdown = None;
                None
            }
            out = work => Some(out),
        }
    }
}

/// SIGHUP as a stream (never fires where there are no Unix signals).
struct Hangup(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangup {
    fn new() -> anyhow::Result<Hangup> {
        #[cfg(unix)]
        {
            let s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP")?;
            Ok(Hangup(s))
        }
        #[cfg(not(unix))]
        Ok(Hangup())
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if self.0.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// A future that resolves when SIGTERM or SIGINT arrives. The handlers are installed by this
/// call, not at the first poll: a SIGTERM during start-up (model loading takes seconds, minutes
/// on a small board) would otherwise hit the default action and kill the process uncleanly.
/// Call it inside the runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// A future that resolves at Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_shutdown_future_becomes_signal_shutdown() {
        let mut s = Signals::new(std::future::ready(())).unwrap();
        assert_eq!(s.recv().await, Signal::Shutdown);
        // Asked again (the future is spent and not polled again): still a shutdown.
        assert_eq!(s.recv().await, Signal::Shutdown);
    }

    #[tokio::test]
    async fn work_runs_to_its_end_unless_a_shutdown_comes_first() {
        let mut quiet = Signals::new(std::future::pending::<()>()).unwrap();
        assert_eq!(quiet.unless_shutdown(async { 7 }).await, Some(7));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut asked = Signals::new(async {
            let _ = rx.await;
        })
        .unwrap();
        tx.send(()).unwrap();
        let never = std::future::pending::<u32>();
        assert_eq!(asked.unless_shutdown(never).await, None);
        assert_eq!(
            asked.unless_shutdown(async { 7 }).await,
            None,
            "still shutting down"
        );
        assert_eq!(asked.recv().await, Signal::Shutdown);
    }

    /// The handler is in place before the returned future is first polled: a SIGTERM sent
    /// right after the call is caught (the process would die of it otherwise) and delivered.
    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_before_the_first_poll_is_caught() {
        let shutdown = shutdown_signal().unwrap();
        // SAFETY: kill(2) on our own pid with a signal whose handler is installed.
        let rc = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(rc, 0);
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown)
            .await
            .expect("the SIGTERM is delivered");
    }
}
