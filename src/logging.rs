//! Log output: human text, journald-friendly lines, or JSON, always on stderr.
//!
//! Under systemd, stderr goes to the journal, which adds its own timestamp and reads a
//! `<N>` syslog priority prefix per line (sd-daemon(3)). `auto` picks that format when
//! `JOURNAL_STREAM` names our stderr, and plain text otherwise.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `journal` when stderr is connected to the journal (`JOURNAL_STREAM`), else `text`.
    Auto,
    /// Timestamped human-readable lines.
    Text,
    /// `<N>` syslog priority prefix, no timestamp (journald adds its own).
    Journal,
    /// One JSON object per line.
    Json,
}

static JOURNAL: AtomicBool = AtomicBool::new(false);

/// `<3>` (err) when logging in the journal format, for errors printed outside tracing.
pub fn error_prefix() -> &'static str {
    if JOURNAL.load(Ordering::Relaxed) {
        "<3>"
    } else {
        ""
    }
}

/// rumqttd logs every client that goes away without a DISCONNECT (each `mosquitto_pub`, a
/// sleeping laptop) at ERROR from these modules: with the embedded broker the journal would fill
/// with errors nobody can act on. The broker's real failures (e.g. its port in use) are reported
/// by edgefuse itself. A filter that names `rumqttd` keeps full control.
const QUIET_BROKER: [&str; 2] = [
    "rumqttd::server::broker=off",
    "rumqttd::router::routing=off",
];

fn with_quiet_broker(filter: &str) -> String {
    if filter.contains("rumqttd") {
        filter.to_owned()
    } else {
        format!("{filter},{}", QUIET_BROKER.join(","))
    }
}

/// Install the global subscriber. An invalid filter falls back to `warn`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(with_quiet_broker(filter))
        .unwrap_or_else(|_| EnvFilter::new(with_quiet_broker("warn")));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    JOURNAL.store(format == LogFormat::Journal, Ordering::Relaxed);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Journal => builder.with_ansi(false).event_format(Journal).init(),
        // Colours only on a terminal: not in a file, a pipe or `docker logs`.
        LogFormat::Auto | LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` of the journal stream; it is ours only if our
/// stderr is that very socket (not, say, redirected by a child's caller).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

/// The syslog priority of a tracing level: err, warning, info, debug.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `<N>target: message key=value` — one journal entry per event.
pub struct Journal;

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "<{}>{}: ", priority(*meta.level()), meta.target())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}: ", span.name())?;
            }
        }
        // Plain fields (no ANSI colours), on one line: journald starts an entry per line.
        let mut fields = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut fields), event)?;
        writeln!(writer, "{}", fields.replace('\n', "\\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_disconnect_noise_of_the_embedded_broker_is_off_unless_asked_for() {
        let f = with_quiet_broker("warn");
        assert_eq!(
            f,
            "warn,rumqttd::server::broker=off,rumqttd::router::routing=off"
        );
        assert!(EnvFilter::try_new(&f).is_ok());
        assert_eq!(
            with_quiet_broker("info,rumqttd=debug"),
            "info,rumqttd=debug"
        );
        assert!(EnvFilter::try_new(with_quiet_broker("edgefuse=debug")).is_ok());
    }

    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_a_priority_and_no_timestamp() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("debug"))
            .with_writer(move || out.clone())
            .event_format(Journal)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("broken");
            tracing::warn!(port = 1883, "slow");
            tracing::info!("ready");
            tracing::debug!("two\nlines");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let target = module_path!();
        assert_eq!(
            text,
            format!(
                "<3>{target}: broken\n<4>{target}: slow port=1883\n<6>{target}: ready\n<7>{target}: two\\nlines\n"
            )
        );
    }
}
