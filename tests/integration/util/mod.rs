//! What the integration tests share: paths and fixtures, the golden references
//! ([`golden`]), config files, the spawned `edgefuse` ([`daemon`]), mosquitto brokers and
//! subscribers ([`mqtt`]), the [`Harness`] that starts broker, subscriber and daemon together,
//! and seeded mutations ([`mutate`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub mod daemon;
pub mod golden;
pub mod harness;
pub mod mqtt;
pub mod mutate;

pub use daemon::{edgefuse_cmd, run_edgefuse, stderr, Daemon};
pub use harness::Harness;
pub use mqtt::{free_port, publish, wait_port, Broker, Msg, Sub};

/// How long a test waits for something the daemon does (start, answer, stop).
pub const T: Duration = Duration::from_secs(60);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fetched models: `EDGEFUSE_MODELS` or the repository's `models/`. Tests that need them
/// fail (not skip) without them, naming the fix.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("EDGEFUSE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let probe = dir.join("text/all-minilm-l6-v2.onnx");
    assert!(
        probe.exists(),
        "{} is missing: run `models/fetch` first (or set EDGEFUSE_MODELS)",
        probe.display()
    );
    dir
}

/// The model manifest of [`models_dir`], read once.
pub fn manifest() -> &'static edgefuse::manifest::Manifest {
    static M: std::sync::OnceLock<edgefuse::manifest::Manifest> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        edgefuse::manifest::Manifest::load(&models_dir().join("manifest.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The built-in config with every encoder on its fp32 original: the golden tests compare those
/// with onnxruntime, whatever compressed variant the defaults select (`variants` covers the
/// variants).
pub fn fp32_config() -> edgefuse::config::Config {
    let mut c = edgefuse::config::Config::builtin();
    c.encoders.text.model = "text".into();
    c.encoders.vision.model = "vision".into();
    c.encoders.audio.model = "audio".into();
    c
}

pub fn fixture(rel: &str) -> Vec<u8> {
    let p = repo().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// The absolute path of a repository file, as a string for a command line.
pub fn fixture_path(rel: &str) -> String {
    repo().join(rel).display().to_string()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    edgefuse::encoders::cosine(a, b)
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// A transcript's words for comparison: lower case, no punctuation, single spaces.
pub fn plain_words(t: &str) -> String {
    t.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Vision and audio off: the cheapest daemon (text inputs alone).
pub const TEXT_ONLY: &str =
    "[encoders.vision]\nenabled = false\n[encoders.audio]\nenabled = false\n";

/// Write `dir/edgefuse.toml` for `device_id = device`, its state in `dir/state` and its models
/// from [`models_dir`]; `rest` follows (tables such as `[mqtt]`).
pub fn write_config(dir: &Path, device: &str, rest: &str) -> PathBuf {
    let p = dir.join("edgefuse.toml");
    std::fs::write(
        &p,
        format!(
            "device_id = \"{device}\"\nstate_dir = \"{}\"\n[models]\ndir = \"{}\"\n{rest}",
            dir.join("state").display(),
            models_dir().display()
        ),
    )
    .unwrap();
    p
}

/// A config for the daemon's own embedded broker on a free loopback port (`rest` comes before
/// the `[mqtt]` table); its port and the config file.
pub fn write_embedded_config(dir: &Path, rest: &str) -> (u16, PathBuf) {
    let port = free_port();
    let config = write_config(
        dir,
        "test",
        &format!("{rest}[mqtt]\nbroker = \"embedded\"\nembedded_listen = \"127.0.0.1:{port}\"\n"),
    );
    (port, config)
}

/// Wait until `ready` gives a value, checking every `every`; panic naming `what` after
/// `timeout`.
pub fn wait_for<R>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Option<R>,
) -> R {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = ready() {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(every);
    }
}

/// Tests that push thousands of inputs against deadlines or restart brokers hold this for
/// their whole run, so that on a 2-core host they do not starve each other (they used to run
/// one at a time in a binary of their own).
pub fn exclusive() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}
