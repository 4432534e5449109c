//! Config reload (SIGHUP): read and validate the new file, keep what a running daemon cannot
//! change, and load only the encoders whose model files or settings changed.
//!
//! A running pipeline is replaced, not patched: the next one is built first (an invalid config or
//! a model that fails to load leaves the current one untouched), then the current one drains.
//! What can be reused across that swap is the loaded encoders, which is what takes seconds.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::encoders::{
    AudioEncoder, ClassifierEncoder, Modality, TextEncoder, Transcriber, VisionEncoder,
};
use crate::error::ModelError;
use crate::manifest::Manifest;

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
    // tract's thread pool is installed once, at start.
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

/// An encoder together with what it was loaded from. Equal fingerprints mean a reload may keep
/// the encoder as it is.
pub struct Loaded<E> {
    pub encoder: Arc<E>,
    fingerprint: String,
}

impl<E> Clone for Loaded<E> {
    fn clone(&self) -> Self {
        Loaded {
            encoder: Arc::clone(&self.encoder),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// The encoders a config enables, each shared with the workers that run it.
#[derive(Clone)]
pub struct Encoders {
    pub manifest: Manifest,
    pub text: Option<Loaded<TextEncoder>>,
    pub vision: Option<Loaded<VisionEncoder>>,
    pub audio: Option<Loaded<AudioEncoder>>,
    /// `[encoders.speech]` (with the audio encoder only: transcripts ride on the audio worker).
    pub speech: Option<Loaded<Transcriber>>,
    /// The ImageNet classifier (`encoders.classifier`, with vision on): image classes and the
    /// ConSE shared space.
    pub classifier: Option<Loaded<ClassifierEncoder>>,
}

/// What a load did per modality, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Loaded,
    Kept,
    Disabled,
}

impl Encoders {
    /// Load the enabled encoders, keeping those of `previous` whose fingerprint is unchanged.
    /// Blocking (model loading takes seconds): call off the async runtime.
    pub fn load(
        config: &Config,
        models_dir: &Path,
        previous: Option<&Encoders>,
    ) -> Result<(Encoders, Vec<(Modality, Change)>), ModelError> {
        let manifest = Manifest::load(&models_dir.join("manifest.toml"))?;
        let e = &config.encoders;
        let cache = config.model_cache();
        let cache = cache.as_ref();
        let manifest_ref = &manifest;
        // The three models load on their own threads: parsing and optimising is single-threaded
        // in tract, so on a multi-core board this is most of the start-up time saved.
        let loaded = std::thread::scope(|scope| {
            let text = scope.spawn(|| {
                let mut changes = Vec::new();
                let loaded = load_one(
                    Modality::Text,
                    e.text.enabled,
                    fingerprint(&e.text, manifest_ref, &e.text.model),
                    previous.and_then(|p| p.text.as_ref()),
                    &mut changes,
                    || {
                        TextEncoder::load(
                            manifest_ref,
                            &e.text.model,
                            cache,
                            e.text.max_length,
                            e.text.max_batch,
                        )
                    },
                );
                (loaded, changes)
            });
            let vision = scope.spawn(|| {
                let mut changes = Vec::new();
                let loaded = load_one(
                    Modality::Vision,
                    e.vision.enabled,
                    fingerprint(&e.vision, manifest_ref, &e.vision.model),
                    previous.and_then(|p| p.vision.as_ref()),
                    &mut changes,
                    || {
                        VisionEncoder::load(
                            manifest_ref,
                            &e.vision.model,
                            cache,
                            e.vision.max_batch,
                            e.vision.max_pixels,
                        )
                    },
                );
                // The classifier serves images only; its load is not a modality change.
                let classifier = load_one(
                    Modality::Vision,
                    e.vision.enabled && e.classifier.enabled,
                    fingerprint(&e.classifier, manifest_ref, &e.classifier.model),
                    previous.and_then(|p| p.classifier.as_ref()),
                    &mut Vec::new(),
                    || {
                        ClassifierEncoder::load(
                            manifest_ref,
                            &e.classifier.model,
                            cache,
                            e.classifier.top_k,
                            e.classifier.max_batch,
                            e.classifier.max_pixels,
                        )
                    },
                );
                ((loaded, changes), classifier)
            });
            let mut changes = Vec::new();
            let audio = load_one(
                Modality::Audio,
                e.audio.enabled,
                fingerprint(&e.audio, manifest_ref, &e.audio.model),
                previous.and_then(|p| p.audio.as_ref()),
                &mut changes,
                || {
                    AudioEncoder::load(
                        manifest_ref,
                        &e.audio.model,
                        cache,
                        e.audio.max_batch,
                        e.audio.max_seconds,
                    )
                },
            );
            let (vision, classifier) = vision
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (joined(text), vision, classifier, (audio, changes))
        });
        let (text, vision, classifier, audio) = loaded;
        let mut changes = Vec::new();
        let text = take(text, &mut changes)?;
        let vision = take(vision, &mut changes)?;
        let classifier = classifier?;
        let audio = take(audio, &mut changes)?;
        // Speech after the others (its ~770 MiB load need not overlap theirs). Its change is
        // logged here: it is not a modality of its own.
        let mut speech_changes = Vec::new();
        let speech_settings = crate::config::SpeechConfig {
            // Read per item by the hook; flipping it needs no model load.
            publish_mic_text: false,
            ..e.speech.clone()
        };
        let speech = load_one(
            Modality::Audio,
            e.speech.enabled && e.audio.enabled,
            fingerprint(&speech_settings, manifest_ref, &e.speech.model),
            previous.and_then(|p| p.speech.as_ref()),
            &mut speech_changes,
            || Transcriber::load(manifest_ref, &e.speech, cache),
        )?;
        if let Some((_, c)) = speech_changes.first() {
            tracing::info!(change = ?c, "speech model (encoders.speech)");
        }
        Ok((
            Encoders {
                manifest,
                text,
                vision,
                audio,
                speech,
                classifier,
            },
            changes,
        ))
    }

    pub fn model(&self, modality: Modality) -> Option<&crate::encoders::LoadedModel> {
        match modality {
            Modality::Text => self.text.as_ref().map(|e| &e.encoder.model),
            Modality::Vision => self.vision.as_ref().map(|e| &e.encoder.model),
            Modality::Audio => self.audio.as_ref().map(|e| &e.encoder.model),
        }
    }
}

type LoadOutcome<E> = (
    Result<Option<Loaded<E>>, ModelError>,
    Vec<(Modality, Change)>,
);

/// A loader thread's outcome; a panic while loading stays a panic (a bug, not bad input).
fn joined<E>(handle: std::thread::ScopedJoinHandle<'_, LoadOutcome<E>>) -> LoadOutcome<E> {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn take<E>(
    (loaded, c): LoadOutcome<E>,
    changes: &mut Vec<(Modality, Change)>,
) -> Result<Option<Loaded<E>>, ModelError> {
    changes.extend(c);
    loaded
}

fn load_one<E>(
    modality: Modality,
    enabled: bool,
    fingerprint: String,
    previous: Option<&Loaded<E>>,
    changes: &mut Vec<(Modality, Change)>,
    load: impl FnOnce() -> Result<E, ModelError>,
) -> Result<Option<Loaded<E>>, ModelError> {
    if !enabled {
        if previous.is_some() {
            changes.push((modality, Change::Disabled));
        }
        return Ok(None);
    }
    if let Some(p) = previous.filter(|p| p.fingerprint == fingerprint) {
        changes.push((modality, Change::Kept));
        return Ok(Some(p.clone()));
    }
    let encoder = Arc::new(load()?);
    changes.push((modality, Change::Loaded));
    Ok(Some(Loaded {
        encoder,
        fingerprint,
    }))
}

/// The encoder's settings, its manifest entry, and the size and modification time of every file
/// that entry names (so a model file replaced in place is loaded, and verified, again).
fn fingerprint(settings: &impl Debug, manifest: &Manifest, key: &str) -> String {
    let Ok(spec) = manifest.model(key) else {
        // Loading will fail with the real error; never match a previous encoder.
        return format!("missing model {key:?} {}", unique());
    };
    let mut files = vec![manifest.path_of(&spec.file)];
    // Preprocessing files (e.g. the tokenizer) are named by relative paths in `preprocess`.
    for v in spec.preprocess.values() {
        if let Some(p) = v.as_str().map(|rel| manifest.path_of(rel)) {
            if p.is_file() {
                files.push(p);
            }
        }
    }
    let meta: Vec<String> = files
        .iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => format!("{} {} {:?}", f.display(), m.len(), m.modified().ok()),
            Err(e) => format!("{} {e}", f.display()),
        })
        .collect();
    format!("{settings:?}\n{spec:?}\n{meta:?}")
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
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
