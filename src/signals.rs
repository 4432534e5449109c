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
    shutdown: Pin<Box<F>>,
}

impl<F: Future<Output = ()>> Signals<F> {
    /// Listen for SIGHUP now (so one that arrives during start-up is not fatal); `shutdown`
    /// resolves when the daemon should stop ([`shutdown_signal`] in production, the test's own
    /// future in tests).
    pub fn new(shutdown: F) -> anyhow::Result<Signals<F>> {
        Ok(Signals {
            hangup: Hangup::new()?,
            shutdown: Box::pin(shutdown),
        })
    }

    /// The next signal. After [`Signal::Shutdown`] do not call it again.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = &mut self.shutdown => Signal::Shutdown,
            _ = self.hangup.recv() => Signal::Reload,
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

/// Resolve when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_shutdown_future_becomes_signal_shutdown() {
        let mut s = Signals::new(std::future::ready(())).unwrap();
        assert_eq!(s.recv().await, Signal::Shutdown);
    }
}
