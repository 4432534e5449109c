// Over 600 lines: every section, its defaults and the one all-problems validation (1/5 tests).
//! Configuration: TOML mirrored by serde structs (`deny_unknown_fields`), then validated as a
//! whole so that every problem is reported at once, each with its TOML path and bad value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod components;
mod parse;
pub use components::{
    BrokerAddr, Cores, HomeAssistantConfig, ModelLoading, SpoolConfig, WatchdogConfig,
};

use crate::types::Modality;

/// The built-in default, `configs/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this device in topics; empty means the hostname.
    #[serde(default)]
    pub device_id: String,
    /// Holds persistent state (enrolled labels, spool, compiled models). A relative path is
    /// relative to the working directory; unset, see [`default_state_dir_from`].
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub encoders: EncodersConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub queues: QueuesConfig,
    #[serde(default)]
    pub sources: SourcesConfig,
    #[serde(default)]
    pub fusion: FusionConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    #[serde(default)]
    pub debug: DebugConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub homeassistant: HomeAssistantConfig,
    #[serde(default)]
    pub shared_space: components::SpaceConfig,
    /// The shared text space (ConSE): how images get a vector in the text encoder's space.
    #[serde(default)]
    pub semantic: components::SemanticConfig,
}

fn default_state_dir() -> PathBuf {
    default_state_dir_from(|k| std::env::var_os(k))
}

/// The `state_dir` used when the config sets none, whatever the working directory:
/// systemd's `$STATE_DIRECTORY` (from `StateDirectory=`; its first entry), else
/// `$XDG_STATE_HOME/edgefuse`, else `$HOME/.local/state/edgefuse`, else `state` in the working
/// directory (no home at all). Relative `$XDG_STATE_HOME` or `$HOME` values are ignored, as the
/// XDG Base Directory spec asks.
pub fn default_state_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let absolute = |v: Option<std::ffi::OsString>| {
        v.map(PathBuf::from)
            .filter(|p| p.is_absolute() && !p.as_os_str().is_empty())
    };
    if let Some(dirs) = env("STATE_DIRECTORY") {
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        if let Some(dir) = first {
            return dir;
        }
    }
    if let Some(xdg) = absolute(env("XDG_STATE_HOME")) {
        return xdg.join("edgefuse");
    }
    if let Some(home) = absolute(env("HOME")) {
        return home.join(".local/state/edgefuse");
    }
    PathBuf::from("state")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// JSON with the vector as an array of numbers.
    Json,
    /// Little-endian IEEE f16 vector; metadata in MQTT 5 user properties.
    F16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `embedded` (start rumqttd on `embedded_listen`), `mqtt://host:port` or
    /// `mqtts://host:port` (TLS).
    pub broker: String,
    pub embedded_listen: String,
    pub client_id: String,
    pub topic_prefix: String,
    pub keepalive_s: u64,
    pub qos: u8,
    pub clean_start: bool,
    pub username: String,
    /// File holding the password (e.g. a systemd credential); never the password itself.
    pub password_file: String,
    pub payload: PayloadFormat,
    pub max_payload_bytes: usize,
    /// PEM CA bundle for `mqtts://` (empty: the Mozilla roots).
    pub ca_file: String,
    /// PEM client certificate (chain) and key, for brokers that require one.
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "embedded".into(),
            embedded_listen: "127.0.0.1:1883".into(),
            client_id: String::new(),
            topic_prefix: "edgefuse".into(),
            keepalive_s: 30,
            qos: 1,
            clean_start: true,
            username: String::new(),
            password_file: String::new(),
            payload: PayloadFormat::Json,
            max_payload_bytes: 16 * 1024 * 1024,
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
        }
    }
}

/// Capacity of each modality's request queue (MQTT inputs). When full, intake waits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    pub text: usize,
    pub vision: usize,
    pub audio: usize,
    pub results: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            text: 64,
            vision: 16,
            audio: 16,
            results: 64,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    pub mic: MicConfig,
    pub image_dir: ImageDirConfig,
    pub snapshot: SnapshotConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicConfig {
    pub enabled: bool,
    /// Device name as ALSA/cpal lists it; empty or `default` for the default input.
    pub device: String,
    pub window_s: f64,
    pub hop_s: f64,
    /// Windows quieter than this RMS level (dBFS) are skipped before any model runs.
    pub energy_gate_dbfs: f32,
    /// Also require Silero VAD speech probability ≥ `vad_threshold`.
    pub vad: bool,
    pub vad_model: String,
    pub vad_threshold: f32,
    /// Live windows waiting for the encoder; the oldest is dropped when full.
    pub queue: usize,
    pub group: String,
}

impl Default for MicConfig {
    fn default() -> Self {
        MicConfig {
            enabled: false,
            device: String::new(),
            window_s: 2.32,
            hop_s: 1.16,
            energy_gate_dbfs: -50.0,
            vad: false,
            vad_model: "vad".into(),
            vad_threshold: 0.5,
            queue: 4,
            group: "default".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageDirConfig {
    pub enabled: bool,
    pub path: PathBuf,
    pub poll_ms: u64,
    /// Files waiting for the encoder; when full the watcher waits (files are durable).
    pub queue: usize,
    pub group: String,
}

impl Default for ImageDirConfig {
    fn default() -> Self {
        ImageDirConfig {
            enabled: false,
            path: PathBuf::new(),
            poll_ms: 1000,
            queue: 8,
            group: "default".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    pub enabled: bool,
    pub url: String,
    pub interval_s: f64,
    pub timeout_s: f64,
    /// Snapshots waiting for the encoder; the oldest is dropped when full.
    pub queue: usize,
    pub group: String,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: false,
            url: String::new(),
            interval_s: 10.0,
            timeout_s: 5.0,
            queue: 2,
            group: "default".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FusionConfig {
    /// An embedding joins a fused record while it is at most this old.
    pub window_ms: u64,
    pub weights: ModalityWeights,
    /// Optional linear projection per modality: a JSON file `{"matrix": [[...], ...]}`.
    pub projection: ModalityPaths,
    /// Past fused vectors the novelty score compares against.
    pub novelty_history: usize,
    /// Nearest enrolled examples listed per label and modality.
    pub nearest: usize,
    /// Labels reported per record.
    pub top_k: usize,
    pub zero_shot: ZeroShotConfig,
    /// Fusion groups held at once (a group name is any string a client sends): idle groups
    /// go first, then the least recently updated.
    pub max_groups: usize,
    /// Enrolled labels; an enroll of a new label beyond this is refused on `error`.
    pub max_labels: usize,
    /// Examples kept per label and modality; the oldest goes first.
    pub max_examples: usize,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            window_ms: 5000,
            weights: ModalityWeights::default(),
            projection: ModalityPaths::default(),
            novelty_history: 256,
            nearest: 2,
            top_k: 5,
            zero_shot: ZeroShotConfig::default(),
            max_groups: 1024,
            max_labels: 256,
            max_examples: 32,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModalityWeights {
    pub text: f32,
    pub vision: f32,
    pub audio: f32,
}

impl Default for ModalityWeights {
    fn default() -> Self {
        ModalityWeights {
            text: 1.0,
            vision: 1.0,
            audio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModalityPaths {
    pub text: Option<PathBuf>,
    pub vision: Option<PathBuf>,
    pub audio: Option<PathBuf>,
}

/// Zero-shot labels scored by cosine against the text encoder's embedding of each label, for
/// modalities whose encoder shares the text encoder's space (CLIP/CLAP-style models).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroShotConfig {
    pub labels: Vec<String>,
    /// Checked when the TOML is read: a value other than `text`, `vision` or `audio` is a
    /// parse error naming `[fusion.zero_shot]`; `text` is refused by validation.
    pub modalities: Vec<Modality>,
    /// Plain words scored on every item with a semantic vector (`[shared_space]`); replaced at
    /// run time by a list set over MQTT (`zero_shot/set`).
    pub words: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Seconds between `stats` messages; 0 disables them.
    pub interval_s: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { interval_s: 30 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub timeout_s: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout_s: 10 }
    }
}

/// Privacy: raw audio and images never leave the device unless this is switched on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    pub publish_raw_inputs: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    #[serde(default = "default_models_dir")]
    pub dir: PathBuf,
    /// Keep each model's compiled (typed, decluttered) tract graph for faster starts.
    #[serde(default = "yes")]
    pub compiled_cache: bool,
    /// Where compiled models live; `<state_dir>/compiled` when unset.
    #[serde(default)]
    pub compiled_dir: Option<PathBuf>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: default_models_dir(),
            compiled_cache: true,
            compiled_dir: None,
        }
    }
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("models")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodersConfig {
    /// tract threads per model run (one rayon pool shared by every model); 1 runs on the
    /// calling thread; `"auto"`: the CPUs available. Set at start only.
    #[serde(default = "one_core")]
    pub threads: Cores,
    /// Batches each modality's worker runs at once, each with its own tract state over the one
    /// optimised plan, so a burst keeps every core busy; `"auto"`: the CPUs available.
    #[serde(default = "auto")]
    pub runs_in_flight: Cores,
    /// tract threads for a run alone on the machine (no other modality's run in flight and
    /// nothing queued behind it); `"auto"`: the CPUs available, for each model that a
    /// measurement at first start finds at least 10 % faster so; 1: off.
    #[serde(default = "auto")]
    pub lone_run_threads: Cores,
    /// Load the models one at a time or all at once; `"auto"`: one at a time on a machine
    /// with less than 1.5 GiB of RAM.
    #[serde(default = "auto_loading")]
    pub model_loading: ModelLoading,
    #[serde(default)]
    pub text: TextConfig,
    #[serde(default)]
    pub vision: VisionConfig,
    #[serde(default)]
    pub audio: AudioConfig,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    #[serde(default)]
    pub speech: SpeechConfig,
}

/// `[encoders.classifier]`: ImageNet-1k classes for every image, with nothing enrolled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "classifier_model")]
    pub model: String,
    /// Classes reported per image, most probable first.
    #[serde(default = "five")]
    pub top_k: usize,
    #[serde(default = "four")]
    pub max_batch: usize,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn classifier_model() -> String {
    "classifier".into()
}
fn five() -> usize {
    5
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            enabled: true,
            model: classifier_model(),
            top_k: 5,
            max_batch: 4,
            max_pixels: default_max_pixels(),
        }
    }
}

/// `[encoders.speech]`: speech to text (Moonshine). Off by default: the model is optional
/// (`models/fetch` brings it) and transcribing costs far more CPU than embedding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "speech_model")]
    pub model: String,
    /// How long audio is cut into segments: `"vad"` (Silero VAD, `vad_model`) or `"energy"`
    /// (RMS per 32 ms chunk against `energy_gate_dbfs` only).
    #[serde(default = "speech_segmenter")]
    pub segmenter: String,
    #[serde(default = "vad_model")]
    pub vad_model: String,
    /// Chunks quieter than this are silence without running the VAD.
    #[serde(default = "speech_gate_dbfs")]
    pub energy_gate_dbfs: f32,
    /// VAD probability at which a chunk counts as speech.
    #[serde(default = "half")]
    pub speech_threshold: f32,
    /// A pause at least this long ends a segment.
    #[serde(default = "speech_min_silence_ms")]
    pub min_silence_ms: u32,
    /// Shorter bursts of speech are dropped.
    #[serde(default = "speech_min_speech_ms")]
    pub min_speech_ms: u32,
    /// Audio kept on each side of a segment.
    #[serde(default = "speech_pad_ms")]
    pub pad_ms: u32,
    /// Longer segments are cut at their quietest chunk (Moonshine is trained on short clips).
    #[serde(default = "speech_max_segment_seconds")]
    pub max_segment_seconds: f64,
    /// Longer files are refused before decoding.
    #[serde(default = "speech_max_audio_seconds")]
    pub max_audio_seconds: f64,
    /// Token limit per segment = seconds × this (Moonshine's own code uses 6).
    #[serde(default = "speech_tokens_per_second")]
    pub max_tokens_per_second: f32,
    /// Publish the words of microphone transcripts. Off by default (privacy): microphone
    /// transcripts then carry times, labels and vectors but no text. MQTT `in/audio`
    /// transcripts always carry their text (the sender chose to send the audio).
    #[serde(default)]
    pub publish_mic_text: bool,
}

fn speech_model() -> String {
    "speech".into()
}
fn speech_segmenter() -> String {
    "vad".into()
}
fn vad_model() -> String {
    "vad".into()
}
fn speech_gate_dbfs() -> f32 {
    -50.0
}
fn half() -> f32 {
    0.5
}
fn speech_min_silence_ms() -> u32 {
    400
}
fn speech_min_speech_ms() -> u32 {
    200
}
fn speech_pad_ms() -> u32 {
    300
}
fn speech_max_segment_seconds() -> f64 {
    20.0
}
fn speech_max_audio_seconds() -> f64 {
    1200.0
}
fn speech_tokens_per_second() -> f32 {
    6.0
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig {
            enabled: false,
            model: speech_model(),
            segmenter: speech_segmenter(),
            vad_model: vad_model(),
            energy_gate_dbfs: speech_gate_dbfs(),
            speech_threshold: half(),
            min_silence_ms: speech_min_silence_ms(),
            min_speech_ms: speech_min_speech_ms(),
            pad_ms: speech_pad_ms(),
            max_segment_seconds: speech_max_segment_seconds(),
            max_audio_seconds: speech_max_audio_seconds(),
            max_tokens_per_second: speech_tokens_per_second(),
            publish_mic_text: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "text_model")]
    pub model: String,
    /// Overrides the manifest's `max_length` when set.
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default = "sixteen")]
    pub max_batch: usize,
    /// Longer texts are refused on `error` (the tokenizer truncates to `max_length` tokens
    /// anyway; this bounds the work spent on a huge one).
    #[serde(default = "default_max_text_bytes")]
    pub max_bytes: usize,
    /// A second tract plan bound to one text for a text that runs alone (its weights shared
    /// with the batch plan); off saves its run buffers on a memory-tight board.
    #[serde(default = "yes")]
    pub single_text_plan: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "vision_model")]
    pub model: String,
    #[serde(default = "four")]
    pub max_batch: usize,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "audio_model")]
    pub model: String,
    #[serde(default = "sixteen")]
    pub max_batch: usize,
    #[serde(default = "default_max_seconds")]
    pub max_seconds: f64,
}

fn yes() -> bool {
    true
}
fn one_core() -> Cores {
    Cores::Count(1)
}
fn auto() -> Cores {
    Cores::Auto
}
fn auto_loading() -> ModelLoading {
    ModelLoading::Auto
}

impl Default for EncodersConfig {
    fn default() -> Self {
        EncodersConfig {
            threads: Cores::Count(1),
            runs_in_flight: Cores::Auto,
            lone_run_threads: Cores::Auto,
            model_loading: ModelLoading::Auto,
            text: TextConfig::default(),
            vision: VisionConfig::default(),
            audio: AudioConfig::default(),
            classifier: ClassifierConfig::default(),
            speech: SpeechConfig::default(),
        }
    }
}
fn four() -> usize {
    4
}
fn sixteen() -> usize {
    16
}
// Defaults chosen by the numbers of docs/models.md (models/report); keep in step with
// configs/default.toml. The fp32 originals are "text", "vision", "audio".
fn text_model() -> String {
    "text-w8".into()
}
fn vision_model() -> String {
    "vision-tokens200-w8".into()
}
fn audio_model() -> String {
    "audio-pruned75".into()
}
fn default_max_pixels() -> u64 {
    40_000_000
}
fn default_max_text_bytes() -> usize {
    64 * 1024
}
fn default_max_seconds() -> f64 {
    600.0
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            enabled: true,
            model: text_model(),
            max_length: None,
            max_batch: 16,
            max_bytes: default_max_text_bytes(),
            single_text_plan: true,
        }
    }
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            enabled: true,
            model: vision_model(),
            max_batch: 4,
            max_pixels: default_max_pixels(),
        }
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            enabled: true,
            model: audio_model(),
            max_batch: 16,
            max_seconds: default_max_seconds(),
        }
    }
}

/// One problem in a config file: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

/// Collects problems with their TOML paths.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, v: T, lo: T, hi: T) {
        if !(v >= lo && v <= hi) {
            self.add(path, format!("{v} is out of range (expected {lo} to {hi})"));
        }
    }
}

fn speech_problems(s: &SpeechConfig, p: &mut Problems) {
    if s.model.trim().is_empty() {
        p.add("encoders.speech.model", "must name a model in the manifest");
    }
    match s.segmenter.as_str() {
        "vad" if s.vad_model.trim().is_empty() => p.add(
            "encoders.speech.vad_model",
            "must name a model in the manifest",
        ),
        "vad" | "energy" => {}
        other => p.add(
            "encoders.speech.segmenter",
            format!("`{other}` is not a segmenter (expected \"vad\" or \"energy\")"),
        ),
    }
    p.range(
        "encoders.speech.energy_gate_dbfs",
        s.energy_gate_dbfs,
        -120.0,
        0.0,
    );
    p.range(
        "encoders.speech.speech_threshold",
        s.speech_threshold,
        0.01,
        0.99,
    );
    p.range(
        "encoders.speech.min_silence_ms",
        s.min_silence_ms,
        32,
        10_000,
    );
    p.range("encoders.speech.min_speech_ms", s.min_speech_ms, 0, 10_000);
    p.range("encoders.speech.pad_ms", s.pad_ms, 0, 2_000);
    p.range(
        "encoders.speech.max_segment_seconds",
        s.max_segment_seconds,
        1.0,
        30.0,
    );
    p.range(
        "encoders.speech.max_audio_seconds",
        s.max_audio_seconds,
        1.0,
        86_400.0,
    );
    p.range(
        "encoders.speech.max_tokens_per_second",
        s.max_tokens_per_second,
        1.0,
        30.0,
    );
}

impl Config {
    /// The compiled-in default configuration.
    pub fn builtin() -> Config {
        // The default is tested to parse; a failure here is a build defect, not bad input.
        Config::from_toml(DEFAULT_TOML, "built-in default").expect("configs/default.toml is valid")
    }

    /// Load from a file, or the built-in default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::builtin()),
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    problems: vec![ConfigProblem {
                        path: "(file)".into(),
                        message: format!("cannot read: {e}"),
                    }],
                })?;
                Config::from_toml(&text, &name)
            }
        }
    }

    pub fn from_toml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            source_name: source_name.to_owned(),
            problems: parse::problems(text, &e),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                source_name: source_name.to_owned(),
                problems,
            })
        }
    }

    /// Every semantic problem; empty when the config is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        let e = &self.encoders;
        for (path, v) in [
            ("encoders.threads", e.threads),
            ("encoders.runs_in_flight", e.runs_in_flight),
            ("encoders.lone_run_threads", e.lone_run_threads),
        ] {
            if let Cores::Count(n) = v {
                p.range(path, n, 1, components::MAX_CORES);
            }
        }
        if e.text.model.trim().is_empty() {
            p.add("encoders.text.model", "must name a model in the manifest");
        }
        if let Some(n) = e.text.max_length {
            p.range("encoders.text.max_length", n, 2, 512);
        }
        p.range("encoders.text.max_batch", e.text.max_batch, 1, 256);
        p.range(
            "encoders.text.max_bytes",
            e.text.max_bytes,
            1,
            16 * 1024 * 1024,
        );
        if e.vision.model.trim().is_empty() {
            p.add("encoders.vision.model", "must name a model in the manifest");
        }
        p.range("encoders.vision.max_batch", e.vision.max_batch, 1, 64);
        p.range(
            "encoders.vision.max_pixels",
            e.vision.max_pixels,
            50_176,
            1_000_000_000,
        );
        if e.audio.model.trim().is_empty() {
            p.add("encoders.audio.model", "must name a model in the manifest");
        }
        p.range("encoders.audio.max_batch", e.audio.max_batch, 1, 256);
        p.range(
            "encoders.audio.max_seconds",
            e.audio.max_seconds,
            0.1,
            86_400.0,
        );
        if e.classifier.model.trim().is_empty() {
            p.add(
                "encoders.classifier.model",
                "must name a model in the manifest",
            );
        }
        p.range("encoders.classifier.top_k", e.classifier.top_k, 1, 1000);
        p.range(
            "encoders.classifier.max_batch",
            e.classifier.max_batch,
            1,
            64,
        );
        p.range(
            "encoders.classifier.max_pixels",
            e.classifier.max_pixels,
            50_176,
            1_000_000_000,
        );
        for (key, message) in self.semantic.problems() {
            p.add(&format!("semantic.{key}"), message);
        }
        speech_problems(&e.speech, &mut p);
        if !(e.text.enabled || e.vision.enabled || e.audio.enabled) {
            p.add("encoders", "every encoder is disabled; enable at least one");
        }
        self.mqtt_problems(&mut p);
        self.reliability_problems(&mut p);
        self.source_problems(&mut p);
        self.fusion_problems(&mut p);
        p.range("queues.text", self.queues.text, 1, 100_000);
        p.range("queues.vision", self.queues.vision, 1, 100_000);
        p.range("queues.audio", self.queues.audio, 1, 100_000);
        p.range("queues.results", self.queues.results, 1, 100_000);
        p.range("shutdown.timeout_s", self.shutdown.timeout_s, 1, 3600);
        p.range("watchdog.max_batch_s", self.watchdog.max_batch_s, 1, 86_400);
        p.range(
            "watchdog.status_interval_s",
            self.watchdog.status_interval_s,
            1,
            86_400,
        );
        if !valid_topic_level(&self.device_id) && !self.device_id.is_empty() {
            p.add(
                "device_id",
                format!(
                    "{:?} cannot be a topic level (no '/', '+', '#')",
                    self.device_id
                ),
            );
        }
        p.0
    }

    fn mqtt_problems(&self, p: &mut Problems) {
        let m = &self.mqtt;
        if m.broker != "embedded" {
            if let Err(e) = BrokerAddr::parse(&m.broker) {
                p.add("mqtt.broker", format!("{:?}: {e}", m.broker));
            }
        } else if m.embedded_listen.parse::<std::net::SocketAddr>().is_err() {
            p.add(
                "mqtt.embedded_listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:1883",
                    m.embedded_listen
                ),
            );
        }
        if m.broker == "embedded" && m.payload == PayloadFormat::F16 {
            p.add(
                "mqtt.payload",
                "\"f16\" puts its metadata in MQTT 5 user properties, which the embedded broker \
                 cannot pass to MQTT 3.1.1 clients; use an MQTT 5 broker (mqtt.broker = \
                 \"mqtt://host:1883\", e.g. mosquitto) or payload = \"json\"",
            );
        }
        p.range("mqtt.qos", m.qos, 0, 2);
        p.range("mqtt.keepalive_s", m.keepalive_s, 5, 3600);
        p.range(
            "mqtt.max_payload_bytes",
            m.max_payload_bytes,
            1024,
            256 * 1024 * 1024,
        );
        if m.topic_prefix.is_empty() || m.topic_prefix.contains(['+', '#']) {
            p.add(
                "mqtt.topic_prefix",
                format!("{:?} must be non-empty without '+' or '#'", m.topic_prefix),
            );
        }
        if !m.password_file.is_empty() && m.username.is_empty() {
            p.add("mqtt.password_file", "is set but mqtt.username is empty");
        }
        let tls = m.broker.starts_with("mqtts://");
        for (key, value) in [
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.client_cert_file", &m.client_cert_file),
            ("mqtt.client_key_file", &m.client_key_file),
        ] {
            if !value.is_empty() && !tls {
                p.add(key, "is set but mqtt.broker is not mqtts://host[:port]");
            }
        }
        if m.client_cert_file.is_empty() != m.client_key_file.is_empty() {
            p.add(
                "mqtt.client_key_file",
                "mqtt.client_cert_file and mqtt.client_key_file go together",
            );
        }
    }

    fn reliability_problems(&self, p: &mut Problems) {
        let s = &self.spool;
        p.range("spool.max_bytes", s.max_bytes, 64 * 1024, 1 << 40);
        p.range("spool.max_age_s", s.max_age_s, 1, 10 * 365 * 86_400);
        p.range("spool.commit_max_records", s.commit_max_records, 1, 4096);
        p.range("spool.commit_max_bytes", s.commit_max_bytes, 1, 64 << 20);
        p.range("spool.commit_max_delay_ms", s.commit_max_delay_ms, 0, 1000);
        let ha = &self.homeassistant.discovery_prefix;
        if ha.trim_matches('/').is_empty() || ha.contains(['+', '#']) {
            p.add(
                "homeassistant.discovery_prefix",
                format!("{ha:?} must be non-empty without '+' or '#'"),
            );
        }
    }

    fn source_problems(&self, p: &mut Problems) {
        let s = &self.sources;
        if s.mic.enabled {
            p.range("sources.mic.window_s", s.mic.window_s, 0.1, 60.0);
            p.range("sources.mic.hop_s", s.mic.hop_s, 0.05, 60.0);
            p.range(
                "sources.mic.energy_gate_dbfs",
                s.mic.energy_gate_dbfs,
                -120.0,
                0.0,
            );
            p.range("sources.mic.vad_threshold", s.mic.vad_threshold, 0.0, 1.0);
            p.range("sources.mic.queue", s.mic.queue, 1, 1000);
            if !self.encoders.audio.enabled {
                p.add(
                    "sources.mic.enabled",
                    "true needs encoders.audio.enabled = true",
                );
            }
        }
        if s.image_dir.enabled {
            if s.image_dir.path.as_os_str().is_empty() {
                p.add(
                    "sources.image_dir.path",
                    "must be set when the source is enabled",
                );
            }
            p.range(
                "sources.image_dir.poll_ms",
                s.image_dir.poll_ms,
                50,
                3_600_000,
            );
            p.range("sources.image_dir.queue", s.image_dir.queue, 1, 1000);
            if !self.encoders.vision.enabled {
                p.add(
                    "sources.image_dir.enabled",
                    "true needs encoders.vision.enabled = true",
                );
            }
        }
        if s.snapshot.enabled {
            if !(s.snapshot.url.starts_with("http://") || s.snapshot.url.starts_with("https://")) {
                p.add(
                    "sources.snapshot.url",
                    format!("{:?} is not an http(s) URL", s.snapshot.url),
                );
            }
            p.range(
                "sources.snapshot.interval_s",
                s.snapshot.interval_s,
                0.1,
                86_400.0,
            );
            p.range(
                "sources.snapshot.timeout_s",
                s.snapshot.timeout_s,
                0.1,
                600.0,
            );
            p.range("sources.snapshot.queue", s.snapshot.queue, 1, 1000);
            if !self.encoders.vision.enabled {
                p.add(
                    "sources.snapshot.enabled",
                    "true needs encoders.vision.enabled = true",
                );
            }
        }
        for (path, group) in [
            ("sources.mic.group", &s.mic.group),
            ("sources.image_dir.group", &s.image_dir.group),
            ("sources.snapshot.group", &s.snapshot.group),
        ] {
            if !valid_topic_level(group) {
                p.add(
                    path,
                    format!("{group:?} must be a non-empty name without '/', '+', '#'"),
                );
            }
        }
    }

    fn fusion_problems(&self, p: &mut Problems) {
        let f = &self.fusion;
        p.range("fusion.window_ms", f.window_ms, 1, 86_400_000);
        p.range("fusion.novelty_history", f.novelty_history, 1, 100_000);
        p.range("fusion.nearest", f.nearest, 0, 100);
        p.range("fusion.top_k", f.top_k, 1, 1000);
        p.range("fusion.max_groups", f.max_groups, 1, 1_000_000);
        p.range("fusion.max_labels", f.max_labels, 1, 100_000);
        p.range("fusion.max_examples", f.max_examples, 1, 10_000);
        for (name, w) in [
            ("text", f.weights.text),
            ("vision", f.weights.vision),
            ("audio", f.weights.audio),
        ] {
            p.range(&format!("fusion.weights.{name}"), w, 0.0, 1000.0);
        }
        for (i, m) in f.zero_shot.modalities.iter().enumerate() {
            if *m == Modality::Text {
                p.add(
                    &format!("fusion.zero_shot.modalities[{i}]"),
                    format!(
                        "{:?} must be \"vision\" or \"audio\" (text is the label space itself)",
                        m.as_str()
                    ),
                );
            }
        }
        if !f.zero_shot.modalities.is_empty() && f.zero_shot.labels.is_empty() {
            p.add(
                "fusion.zero_shot.labels",
                "is empty but zero_shot.modalities is set",
            );
        }
        for (i, l) in f.zero_shot.labels.iter().enumerate() {
            if l.trim().is_empty() {
                p.add(
                    &format!("fusion.zero_shot.labels[{i}]"),
                    "must not be empty",
                );
            }
        }
        for (i, m) in components::check_words(&f.zero_shot.words) {
            let path = i.map_or("fusion.zero_shot.words".into(), |i| {
                format!("fusion.zero_shot.words[{i}]")
            });
            p.add(&path, m);
        }
        for (path, m) in self.shared_space.problems() {
            p.add(&path, m);
        }
    }

    /// The device id in force: the configured one or the hostname.
    pub fn device_id(&self) -> String {
        if !self.device_id.is_empty() {
            return self.device_id.clone();
        }
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let cleaned: String = host
            .chars()
            .map(|c| {
                if matches!(c, '/' | '+' | '#') || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        if cleaned.is_empty() {
            "edgefuse".into()
        } else {
            cleaned
        }
    }

    /// `models.dir`, with `--models` taking precedence.
    pub fn models_dir(&self, override_dir: Option<&Path>) -> PathBuf {
        override_dir.map_or_else(|| self.models.dir.clone(), Path::to_owned)
    }
}

fn valid_topic_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#']) && !s.contains(char::is_whitespace)
}

/// Turn a serde/TOML error into a problem located by TOML path (table + key) and line.
fn toml_problem(e: &toml::de::Error, text: &str) -> ConfigProblem {
    let location = e
        .span()
        .map(|span| {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let table = text[..start]
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('[') && l.ends_with(']'))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
            let end = span.end.clamp(start, text.len());
            let key = text[start..end].trim();
            // A key is followed by `=` (or `.` in a dotted key); a value such as `-2` is not.
            let after = text[end..].trim_start_matches([' ', '\t']);
            let key_like = !key.is_empty()
                && (after.starts_with('=') || after.starts_with('.'))
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            match (table, key_like) {
                (Some(t), true) if !t.is_empty() => format!("{t}.{key} (line {line})"),
                (None, true) => format!("{key} (line {line})"),
                (Some(t), false) if !t.is_empty() => format!("{t} (line {line})"),
                _ => format!("line {line}"),
            }
        })
        .unwrap_or_else(|| "(document)".into());
    ConfigProblem {
        path: location,
        message: e.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "expected the default and the Pi example");
    }

    /// Defaults live in the `Default` impls and serde default functions; `configs/default.toml`
    /// spells them out for users and must say the same.
    #[test]
    fn configs_default_toml_says_what_the_code_defaults_are() {
        let shipped = format!("{:#?}", Config::builtin());
        let coded = format!("{:#?}", Config::from_toml("", "empty").unwrap());
        assert_eq!(shipped, coded);
    }

    #[test]
    fn builtin_default_parses_and_is_valid() {
        let c = Config::builtin();
        assert!(c.problems().is_empty());
        assert_eq!(c.models.dir, PathBuf::from("models"));
        assert!(c.encoders.text.enabled && c.encoders.vision.enabled && c.encoders.audio.enabled);
        assert!(!c.encoders.speech.enabled);
    }

    #[test]
    fn every_problem_is_reported_with_its_path_and_value() {
        let err = Config::from_toml(
            "[encoders.text]\nmax_length = 0\nmax_batch = 0\n[encoders.vision]\nmax_pixels = 5\n",
            "t.toml",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "encoders.text.max_length",
                "encoders.text.max_batch",
                "encoders.vision.max_pixels"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("3 problems") && text.contains("0 is out of range"),
            "{text}"
        );
        assert!(text.contains("5 is out of range"), "{text}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = Config::from_toml("[encoders.text]\nmax_lenght = 3\n", "t.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("encoders.text.max_lenght (line 2)"), "{text}");
    }

    #[test]
    fn all_encoders_disabled_is_a_problem() {
        let toml = "[encoders.text]\nenabled=false\n[encoders.vision]\nenabled=false\n\
                    [encoders.audio]\nenabled=false\n";
        let err = Config::from_toml(toml, "t").unwrap_err();
        assert_eq!(err.problems[0].path, "encoders");
    }

    #[test]
    fn speech_section_reports_each_problem_with_its_path() {
        let toml = "[encoders.speech]\nenabled = true\nsegmenter = \"webrtc\"\n\
                    max_segment_seconds = 90\nspeech_threshold = 1.5\nmodel = \"\"\n";
        let err = Config::from_toml(toml, "t").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "encoders.speech.segmenter",
            "encoders.speech.max_segment_seconds",
            "encoders.speech.speech_threshold",
            "encoders.speech.model",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        let ok = Config::from_toml(
            "[encoders.speech]\nenabled = true\nsegmenter = \"energy\"\n",
            "t",
        )
        .unwrap();
        assert!(ok.encoders.speech.enabled && ok.encoders.speech.segmenter == "energy");
    }

    #[test]
    fn daemon_sections_report_each_problem() {
        let toml = r#"
device_id = "a/b"
[mqtt]
broker = "tcp://nowhere"
qos = 3
[sources.mic]
enabled = true
hop_s = 0
[sources.snapshot]
enabled = true
url = "ftp://cam"
[fusion.zero_shot]
modalities = ["text"]
"#;
        let err = Config::from_toml(toml, "t").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "device_id",
            "mqtt.broker",
            "mqtt.qos",
            "sources.mic.hop_s",
            "sources.snapshot.url",
            "fusion.zero_shot.modalities[0]",
            "fusion.zero_shot.labels",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn an_unknown_zero_shot_modality_is_an_error_naming_its_table_not_dropped() {
        let toml = "[fusion.zero_shot]\nlabels = [\"cat\"]\nmodalities = [\"vision\", \"smell\"]\n";
        let err = Config::from_toml(toml, "t").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].path, "fusion.zero_shot (line 3)", "{err}");
        assert!(err.problems[0].message.contains("smell"), "{err}");
        let ok = "[fusion.zero_shot]\nlabels = [\"cat\"]\nmodalities = [\"audio\", \"vision\"]\n";
        let c = Config::from_toml(ok, "t").unwrap();
        assert_eq!(
            c.fusion.zero_shot.modalities,
            [Modality::Audio, Modality::Vision]
        );
    }

    #[test]
    fn spool_and_discovery_keys_are_validated_with_their_paths() {
        let c = Config::builtin();
        assert!(c.spool.enabled && c.spool.fsync && c.homeassistant.enabled);
        let toml =
            "[spool]\nmax_bytes = 10\nmax_age_s = 0\n[homeassistant]\ndiscovery_prefix = \"#\"\n";
        let err = Config::from_toml(toml, "t").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spool.max_bytes",
                "spool.max_age_s",
                "homeassistant.discovery_prefix"
            ]
        );
        let err = Config::from_toml("[spool]\nmax_byte = 1\n", "t").unwrap_err();
        assert!(err.to_string().contains("spool.max_byte"), "{err}");
    }

    #[test]
    fn device_id_defaults_to_a_topic_safe_hostname() {
        let id = Config::builtin().device_id();
        assert!(!id.is_empty() && valid_topic_level(&id), "{id}");
    }

    #[test]
    fn models_override_wins() {
        let c = Config::builtin();
        assert_eq!(c.models_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
        assert_eq!(c.models_dir(None), PathBuf::from("models"));
    }

    #[test]
    fn classifier_and_semantic_keys_default_on_and_are_validated_with_their_paths() {
        let c = Config::builtin();
        assert!(c.encoders.classifier.enabled && c.semantic.enabled);
        assert_eq!(c.encoders.classifier.model, "classifier");
        assert_eq!(c.encoders.classifier.top_k, 5);
        let toml = "[encoders.classifier]\ntop_k = 0\nmax_batch = 0\n\
                    [semantic]\ntop_t = 0\ncentre = 3.0\ntemplate = \"a photo\"\n";
        let err = Config::from_toml(toml, "t.toml").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "encoders.classifier.top_k",
                "encoders.classifier.max_batch",
                "semantic.top_t",
                "semantic.centre",
                "semantic.template"
            ]
        );
        let err = Config::from_toml("[semantic]\nlabel_text = \"poems\"\n", "t").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("semantic (line 2)") && text.contains("`poems`"),
            "{text}"
        );
        let err = Config::from_toml("[encoders.classifier]\ntopk = 3\n", "t").unwrap_err();
        assert!(
            err.to_string().contains("encoders.classifier.topk"),
            "{err}"
        );
    }

    #[test]
    fn spool_group_commit_bounds_are_range_checked() {
        let c = Config::builtin();
        assert_eq!(c.spool.commit_max_records, 64);
        let err = Config::from_toml(
            "[spool]\ncommit_max_records = 0\ncommit_max_bytes = 0\ncommit_max_delay_ms = 5000\n",
            "t.toml",
        )
        .unwrap_err();
        let msg = err.to_string();
        for key in [
            "spool.commit_max_records",
            "spool.commit_max_bytes",
            "spool.commit_max_delay_ms",
        ] {
            assert!(msg.contains(key), "{key} in {msg}");
        }
    }

    #[test]
    fn models_load_one_at_a_time_on_a_small_board_or_when_asked() {
        assert_eq!(Config::builtin().encoders.model_loading, ModelLoading::Auto);
        let (small, large) = (Some(445_000_000), Some(4 << 30));
        assert!(ModelLoading::Auto.sequential(small));
        assert!(!ModelLoading::Auto.sequential(large));
        assert!(!ModelLoading::Auto.sequential(None), "unknown: in parallel");
        assert!(ModelLoading::Sequential.sequential(large));
        assert!(!ModelLoading::Parallel.sequential(small));
        for (v, want) in [
            ("auto", ModelLoading::Auto),
            ("sequential", ModelLoading::Sequential),
            ("parallel", ModelLoading::Parallel),
        ] {
            let c = Config::from_toml(&format!("[encoders]\nmodel_loading = \"{v}\"\n"), "t.toml")
                .unwrap();
            assert_eq!(c.encoders.model_loading, want);
            assert_eq!(want.to_string(), format!("\"{v}\""));
        }
        let err = Config::from_toml("[encoders]\nmodel_loading = \"lazy\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encoders (line 2)") && err.contains("sequential"),
            "{err}"
        );
    }

    #[test]
    fn threads_default_to_one_runs_in_flight_to_auto_take_numbers_and_are_range_checked() {
        let e = Config::builtin().encoders;
        assert_eq!(
            (e.threads, e.runs_in_flight),
            (Cores::Count(1), Cores::Auto)
        );
        // `auto` is what the machine offers, never 0.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Cores::Auto.get(), cpus.min(components::MAX_CORES));
        let c = Config::from_toml(
            "[encoders]\nthreads = 4\nruns_in_flight = \"auto\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.encoders.threads, Cores::Count(4));
        assert_eq!(c.encoders.threads.get(), 4);
        assert_eq!(c.encoders.runs_in_flight, Cores::Auto);
        let err = Config::from_toml("[encoders]\nthreads = 0\nruns_in_flight = 65\n", "t.toml")
            .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["encoders.threads", "encoders.runs_in_flight"]);
        // A value of the wrong kind names the table and line (as every TOML value error does).
        for bad in ["threads = \"many\"", "runs_in_flight = -2", "threads = 1.5"] {
            let err = Config::from_toml(&format!("[encoders]\n{bad}\n"), "t.toml").unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("encoders (line 2)") && text.contains("\"auto\" or a positive"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn default_state_dir_follows_systemd_then_xdg_then_home() {
        use std::ffi::OsString;
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        }
        let all = [
            ("STATE_DIRECTORY", "/var/lib/edgefuse:/var/lib/other"),
            ("XDG_STATE_HOME", "/home/u/.state"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_state_dir_from(env(&all)),
            Path::new("/var/lib/edgefuse")
        );
        assert_eq!(
            default_state_dir_from(env(&all[1..])),
            Path::new("/home/u/.state/edgefuse")
        );
        assert_eq!(
            default_state_dir_from(env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/home/u")])),
            Path::new("/home/u/.local/state/edgefuse")
        );
        assert_eq!(default_state_dir_from(env(&[])), Path::new("state"));
        // The built-in config sets no state_dir, so it gets this default.
        assert_eq!(Config::builtin().state_dir, default_state_dir());
    }
}
