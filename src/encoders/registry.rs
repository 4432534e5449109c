//! The one registry of loaded encoders, keyed by model [`Role`], used by the CLI commands, the
//! bench, the tests and the daemon.
//!
//! Each encoder module implements [`Encoder`] (its role, its config section, how it loads and
//! when) and has one line in [`ENTRIES`]; everything else — the compiled-model cache, loading
//! one at a time or in parallel, keeping unchanged encoders across a reload, the log of what
//! changed, typed access — is written once here. Adding a model is a `Role` variant, its
//! module and its entry.
//!
//! A reload (SIGHUP) builds the next registry from the previous one: an encoder whose
//! [fingerprint](fingerprint) (settings, manifest entry, file sizes and times) is unchanged is
//! shared, not loaded again.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::{
    AudioEncoder, ClassifierEncoder, LoadedModel, ModelCache, TextEncoder, Transcriber,
    VisionEncoder,
};
use crate::config::{Config, EncodersConfig};
use crate::error::ModelError;
use crate::manifest::Manifest;
use crate::types::Modality;

/// What a model is for. The first three embed a modality; the others serve one (the classifier
/// images, speech recognition audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Text,
    Vision,
    Audio,
    Classifier,
    Speech,
}

impl Role {
    /// Its name in logs and its `[encoders.<name>]` config section.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Text => "text",
            Role::Vision => "vision",
            Role::Audio => "audio",
            Role::Classifier => "classifier",
            Role::Speech => "speech",
        }
    }

    /// The modality this role embeds, `None` for models that serve one.
    pub fn modality(self) -> Option<Modality> {
        Modality::ALL.into_iter().find(|m| Role::from(*m) == self)
    }
}

impl From<Modality> for Role {
    fn from(m: Modality) -> Role {
        match m {
            Modality::Text => Role::Text,
            Modality::Vision => Role::Vision,
            Modality::Audio => Role::Audio,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When an encoder loads relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A lead: when models load in parallel (`encoders.model_loading`), on a thread of its
    /// own beside the other leads (parsing and optimising is single-threaded in tract, so on a
    /// multi-core board that saves start-up time); else one lead after the other.
    Parallel,
    /// Right after that role, on its thread (a model that serves it).
    After(Role),
    /// Alone, after all the others (a model so large its load should overlap nothing).
    Last,
}

/// A model with its preprocessing, loadable from the manifest as the config says.
pub trait Encoder: Send + Sync + Sized + 'static {
    const ROLE: Role;
    const SCHEDULE: Schedule;
    /// The settings that decide what is loaded; a reload keeps the encoder while they (and its
    /// model files) are unchanged.
    type Settings: Debug;

    /// Whether the daemon runs it with this config.
    fn enabled(config: &EncodersConfig) -> bool;
    fn settings(config: &EncodersConfig) -> Self::Settings;
    /// Its key in the manifest's `[models]`.
    fn model_key(settings: &Self::Settings) -> &str;
    fn load(
        manifest: &Manifest,
        settings: &Self::Settings,
        cache: Option<&ModelCache>,
    ) -> Result<Self, ModelError>;
    /// The (main) model it runs.
    fn model(&self) -> &LoadedModel;
}

/// Every encoder edgefuse knows, in load-report order: one line per model.
const ENTRIES: &[Entry] = &[
    entry::<TextEncoder>(),
    entry::<VisionEncoder>(),
    entry::<AudioEncoder>(),
    entry::<ClassifierEncoder>(),
    entry::<Transcriber>(),
];

/// What a load did per role, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Loaded,
    Kept,
    Disabled,
}

/// The loaded encoders, each shared with the workers that run it. Cloning shares them.
#[derive(Clone)]
pub struct Encoders {
    pub manifest: Manifest,
    slots: BTreeMap<Role, Slot>,
}

/// Which encoders a load brings up, and from where.
#[derive(Clone, Copy)]
pub struct Load<'a> {
    /// `Some(roles)`: exactly these, whatever `enabled` says (a command that names its models).
    /// `None`: those the config enables (the daemon).
    pub only: Option<&'a [Role]>,
    pub cache: Option<&'a ModelCache>,
    /// Encoders to keep where nothing they were loaded from changed (a reload).
    pub previous: Option<&'a Encoders>,
}

impl Encoders {
    /// The daemon's load: the encoders the config enables, through its compiled-model cache,
    /// keeping those of `previous` whose fingerprint is unchanged. Blocking (model loading takes
    /// seconds): call off the async runtime.
    pub fn load(
        config: &Config,
        models_dir: &Path,
        previous: Option<&Encoders>,
    ) -> Result<(Encoders, Vec<(Role, Change)>), ModelError> {
        let cache = config.model_cache();
        Encoders::load_with(
            &config.encoders,
            models_dir,
            Load {
                only: None,
                cache: cache.as_ref(),
                previous,
            },
        )
    }

    /// A command's load: exactly `roles`, with the config's settings, without the compiled-model
    /// cache.
    pub fn load_roles(
        config: &Config,
        models_dir: &Path,
        roles: &[Role],
    ) -> Result<Encoders, ModelError> {
        let load = Load {
            only: Some(roles),
            cache: None,
            previous: None,
        };
        Ok(Encoders::load_with(&config.encoders, models_dir, load)?.0)
    }

    /// Load as `how` says; the changes are in [`ENTRIES`] order. The first error (in that
    /// order) wins; the `Last` encoders load only when the others did.
    pub fn load_with(
        config: &EncodersConfig,
        models_dir: &Path,
        how: Load<'_>,
    ) -> Result<(Encoders, Vec<(Role, Change)>), ModelError> {
        let manifest = Manifest::load(&models_dir.join("manifest.toml"))?;
        let ctx = Ctx {
            config,
            manifest: &manifest,
            how,
        };
        // A lead and the encoders that load after it, on one thread.
        let lane = |lead: &Entry| {
            let mut done = vec![(lead.role, (lead.load)(&ctx))];
            for e in ENTRIES {
                if e.schedule == Schedule::After(lead.role) {
                    done.push((e.role, (e.load)(&ctx)));
                }
            }
            done
        };
        let leads = ENTRIES.iter().filter(|e| e.schedule == Schedule::Parallel);
        let mut outcomes: BTreeMap<Role, Outcome> = BTreeMap::new();
        if config.model_loading.sequential(crate::cpu::total_memory()) {
            // One model at a time on this thread, each load's garbage (ONNX bytes, f32 weights
            // before requantizing) handed back before the next: the peak is one load's.
            for lead in leads {
                outcomes.extend(lane(lead));
                crate::cpu::trim_heap();
            }
        } else {
            std::thread::scope(|scope| {
                let lanes: Vec<_> = leads.map(|lead| scope.spawn(move || lane(lead))).collect();
                for lane in lanes {
                    // A panic while loading stays a panic (a bug, not bad input).
                    let done = lane
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    outcomes.extend(done);
                }
            });
        }
        let mut slots = BTreeMap::new();
        let mut changes = Vec::new();
        let mut collect = |role: Role, outcome: Outcome| -> Result<(), ModelError> {
            let (slot, change) = outcome?;
            changes.extend(change.map(|c| (role, c)));
            slots.extend(slot.map(|s| (role, s)));
            Ok(())
        };
        for e in ENTRIES {
            if let Some(outcome) = outcomes.remove(&e.role) {
                collect(e.role, outcome)?;
            }
        }
        for e in ENTRIES.iter().filter(|e| e.schedule == Schedule::Last) {
            collect(e.role, (e.load)(&ctx))?;
        }
        // Back in report order.
        changes.sort_by_key(|(role, _)| entry_index(*role));
        Ok((Encoders { manifest, slots }, changes))
    }

    /// The encoder of `E`'s role, when loaded.
    pub fn get<E: Encoder>(&self) -> Option<&E> {
        let encoder: &(dyn Any + Send + Sync) = &*self.slots.get(&E::ROLE)?.encoder;
        encoder.downcast_ref()
    }

    /// A shared handle on the encoder of `E`'s role, when loaded.
    pub fn shared<E: Encoder>(&self) -> Option<Arc<E>> {
        let encoder: Arc<dyn Any + Send + Sync> = self.slots.get(&E::ROLE)?.encoder.clone();
        encoder.downcast().ok()
    }

    /// The model of a role (or of a modality's encoder), when loaded.
    pub fn model(&self, role: impl Into<Role>) -> Option<&LoadedModel> {
        self.slots.get(&role.into()).map(|s| s.encoder.model())
    }

    pub fn contains(&self, role: impl Into<Role>) -> bool {
        self.slots.contains_key(&role.into())
    }

    /// The loaded roles, in `Role` order.
    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        self.slots.keys().copied()
    }

    /// Take over `other`'s encoders (replacing those of the same role).
    pub fn merge(&mut self, other: Encoders) {
        self.slots.extend(other.slots);
    }
}

/// An encoder behind the registry: any type, with its model.
trait AnyEncoder: Any + Send + Sync {
    fn model(&self) -> &LoadedModel;
}

impl<E: Encoder> AnyEncoder for E {
    fn model(&self) -> &LoadedModel {
        Encoder::model(self)
    }
}

#[derive(Clone)]
struct Slot {
    encoder: Arc<dyn AnyEncoder>,
    fingerprint: String,
}

type Outcome = Result<(Option<Slot>, Option<Change>), ModelError>;

struct Ctx<'a> {
    config: &'a EncodersConfig,
    manifest: &'a Manifest,
    how: Load<'a>,
}

struct Entry {
    role: Role,
    schedule: Schedule,
    load: fn(&Ctx<'_>) -> Outcome,
}

const fn entry<E: Encoder>() -> Entry {
    Entry {
        role: E::ROLE,
        schedule: E::SCHEDULE,
        load: load_one::<E>,
    }
}

fn entry_index(role: Role) -> usize {
    ENTRIES
        .iter()
        .position(|e| e.role == role)
        .unwrap_or(usize::MAX)
}

fn load_one<E: Encoder>(ctx: &Ctx<'_>) -> Outcome {
    let previous = ctx.how.previous.and_then(|p| p.slots.get(&E::ROLE));
    let wanted = match ctx.how.only {
        Some(roles) => roles.contains(&E::ROLE),
        None => E::enabled(ctx.config),
    };
    if !wanted {
        return Ok((None, previous.map(|_| Change::Disabled)));
    }
    let settings = E::settings(ctx.config);
    let fingerprint = fingerprint(&settings, ctx.manifest, E::model_key(&settings));
    if let Some(p) = previous.filter(|p| p.fingerprint == fingerprint) {
        return Ok((Some(p.clone()), Some(Change::Kept)));
    }
    let encoder = Arc::new(E::load(ctx.manifest, &settings, ctx.how.cache)?);
    let slot = Slot {
        encoder,
        fingerprint,
    };
    Ok((Some(slot), Some(Change::Loaded)))
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

    #[test]
    fn every_role_has_one_entry_and_modalities_map_to_their_roles() {
        let mut roles: Vec<Role> = ENTRIES.iter().map(|e| e.role).collect();
        roles.sort();
        roles.dedup();
        assert_eq!(roles.len(), ENTRIES.len(), "a role listed twice");
        for m in Modality::ALL {
            assert_eq!(Role::from(m).modality(), Some(m));
            assert_eq!(Role::from(m).as_str(), m.as_str());
        }
        assert_eq!(Role::Classifier.modality(), None);
        assert_eq!(Role::Speech.modality(), None);
    }

    #[test]
    fn followers_follow_a_parallel_entry() {
        for e in ENTRIES {
            if let Schedule::After(lead) = e.schedule {
                let lead = ENTRIES.iter().find(|l| l.role == lead);
                assert_eq!(
                    lead.map(|l| l.schedule),
                    Some(Schedule::Parallel),
                    "{} would never load",
                    e.role
                );
            }
        }
    }

    #[test]
    fn enabling_follows_the_served_modality() {
        let mut c = Config::from_toml("", "test").unwrap().encoders;
        c.classifier.enabled = true;
        c.speech.enabled = true;
        c.vision.enabled = false;
        c.audio.enabled = false;
        assert!(!ClassifierEncoder::enabled(&c));
        assert!(!Transcriber::enabled(&c));
        c.vision.enabled = true;
        c.audio.enabled = true;
        assert!(ClassifierEncoder::enabled(&c));
        assert!(Transcriber::enabled(&c));
    }

    #[test]
    fn a_missing_manifest_entry_never_matches_a_previous_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.toml"), "schema = 1\n[models]\n").unwrap();
        let manifest = Manifest::load(&dir.path().join("manifest.toml")).unwrap();
        let a = fingerprint(&1, &manifest, "nope");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(a, fingerprint(&1, &manifest, "nope"));
    }
}
