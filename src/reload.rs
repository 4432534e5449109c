//! Config reload (SIGHUP): read and validate the new file, keep what a running daemon cannot
//! change, and load only the encoders whose model files or settings changed.
//!
//! A running pipeline is replaced, not patched: the next one is built first (an invalid config or
//! a model that fails to load leaves the current one untouched), then the current one drains.
//! What can be reused across that swap is the loaded encoders, which is what takes seconds:
//! [`Encoders::load`] with the previous registry keeps every encoder whose fingerprint is
//! unchanged.

use std::fmt::Debug;
use std::path::PathBuf;

use crate::config::Config;
/// The encoders, with what a reload keeps, live in the one registry.
pub use crate::encoders::registry::{Change, Encoders};

/// Where the running config came from, so a reload reads the same place.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config FILE`; `None` runs on the compiled-in default, which a reload cannot change.
    pub path: Option<PathBuf>,
    /// `--models DIR`, which overrides `models.dir` in every config read.
    pub models_override: Option<PathBuf>,
}

impl ConfigSource {
    /// Read and validate; the error lists every problem with its TOML path, on one line.
    pub fn load(&self) -> Result<Config, String> {
        Config::load(self.path.as_deref()).map_err(|e| e.to_string().replace('\n', "; "))
    }

    pub fn models_dir(&self, config: &Config) -> PathBuf {
        config.models_dir(self.models_override.as_deref())
    }
}

/// Settings tied to the MQTT session, the device's identity or its state, which only a restart
/// applies. Returns their TOML names where `new` differs from `old`, and puts the running values
/// back into `new` so the reload applies everything else.
pub fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if !same(&old.device_id, &new.device_id) {
        changed.push("device_id");
        new.device_id.clone_from(&old.device_id);
    }
    if !same(&old.state_dir, &new.state_dir) {
        changed.push("state_dir");
        new.state_dir.clone_from(&old.state_dir);
    }
    if !same(&old.mqtt, &new.mqtt) {
        changed.push("mqtt");
        new.mqtt = old.mqtt.clone();
    }
    if !same(&old.watchdog, &new.watchdog) {
        changed.push("watchdog");
        new.watchdog = old.watchdog.clone();
    }
    // Both belong to the MQTT connection, which a reload keeps.
    if !same(&old.spool, &new.spool) {
        changed.push("spool");
        new.spool = old.spool.clone();
    }
    if !same(&old.homeassistant, &new.homeassistant) {
        changed.push("homeassistant");
        new.homeassistant = old.homeassistant.clone();
    }
    // tract's thread pool is installed once, at start. (`runs_in_flight` is not here: the
    // workers are rebuilt on reload, so a new value applies.)
    if old.encoders.threads != new.encoders.threads {
        changed.push("encoders.threads");
        new.encoders.threads = old.encoders.threads;
    }
    changed
}

/// Equality by the full `Debug` form: every field counts, including ones added later, without
/// requiring `PartialEq` on every config type.
fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(extra, "test").unwrap()
    }

    #[test]
    fn restart_only_sections_keep_their_running_values() {
        let old = config("device_id = \"a\"\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1883\"\n");
        let mut new = config(
            "device_id = \"b\"\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1884\"\n\
             [encoders.text]\nmax_batch = 3\n",
        );
        let changed = keep_restart_only(&old, &mut new);
        assert_eq!(changed, ["device_id", "mqtt"]);
        assert_eq!(new.device_id, "a");
        assert_eq!(new.mqtt.broker, "mqtt://127.0.0.1:1883");
        // Everything else is the new file's.
        assert_eq!(new.encoders.text.max_batch, 3);
    }

    #[test]
    fn threads_wait_for_a_restart_but_runs_in_flight_apply_on_reload() {
        let old = config("[encoders]\nthreads = 1\nruns_in_flight = 1\n");
        let mut new = config("[encoders]\nthreads = \"auto\"\nruns_in_flight = 3\n");
        assert_eq!(keep_restart_only(&old, &mut new), ["encoders.threads"]);
        assert_eq!(new.encoders.threads, crate::config::Cores::Count(1));
        assert_eq!(new.encoders.runs_in_flight, crate::config::Cores::Count(3));
    }

    #[test]
    fn an_identical_config_changes_nothing() {
        let old = config("[encoders.text]\nmax_batch = 3\n");
        let mut new = old.clone();
        assert!(keep_restart_only(&old, &mut new).is_empty());
    }

    #[test]
    fn a_missing_config_file_is_reported_not_panicked() {
        let source = ConfigSource {
            path: Some(PathBuf::from("/nonexistent/edgefuse.toml")),
            models_override: None,
        };
        let err = source.load().unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}
