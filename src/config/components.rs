//! The component parts of the config that their components re-export (`systemd`,
//! `mqtt::discovery`, `mqtt`, `mqtt::spool`, `semantic`, `shared_space`): defined here, at the
//! bottom of the data flow, so that `config` imports nothing above it. Their checks live here
//! too (`SemanticConfig::problems`, `SpaceConfig::problems`, [`check_words`]).

use serde::{Deserialize, Serialize};

/// `[watchdog]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// A batch in inference for longer than this counts as a stuck encoder.
    pub max_batch_s: u64,
    /// Seconds between `STATUS=` updates while running.
    pub status_interval_s: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            max_batch_s: 120,
            status_interval_s: 10,
        }
    }
}

/// `[homeassistant]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs (on by default: Home Assistant then finds the device on its
    /// own, as it does for Zigbee2MQTT or Tasmota; other subscribers ignore the topics).
    pub enabled: bool,
    /// Home Assistant's `discovery_prefix`.
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// `mqtt://host:port` (port defaults to 1883) or `mqtts://host:port` (TLS, 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<BrokerAddr, String> {
        let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
            (r, true, 8883)
        } else {
            let r = url
                .strip_prefix("mqtt://")
                .ok_or("expected \"embedded\", mqtt://host[:port] or mqtts://host[:port]")?;
            (r, false, 1883)
        };
        let rest = rest.trim_end_matches('/');
        let parse_port = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port {p:?}"));
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or("unclosed '[' in host")?;
            match tail.strip_prefix(':') {
                Some(p) => (h, parse_port(p)?),
                None if tail.is_empty() => (h, default_port),
                None => return Err(format!("unexpected {tail:?} after host")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// `[spool]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Spool results published at QoS 1 or 2 (QoS 0 results are never spooled).
    pub enabled: bool,
    /// Upper bound of the spool on disk; the oldest records are dropped beyond it.
    pub max_bytes: u64,
    /// Records older than this are dropped unsent.
    pub max_age_s: u64,
    /// fsync the spool before an input is acknowledged (power-cut safe); false leaves it to
    /// the OS.
    pub fsync: bool,
    /// Group commit: at most this many results share one fsync.
    pub commit_max_records: usize,
    /// Group commit: at most about this many bytes of results share one fsync (the batch ends
    /// after the result that crosses it).
    pub commit_max_bytes: u64,
    /// Group commit: a batch takes in results already waiting for at most this long after its
    /// first one; it never waits for results that have not arrived.
    pub commit_max_delay_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            max_age_s: 7 * 24 * 3600,
            fsync: true,
            commit_max_records: 64,
            commit_max_bytes: 1024 * 1024,
            commit_max_delay_ms: 5,
        }
    }
}

/// A count that is either given or taken from the machine: `"auto"` or a number in the config
/// (`encoders.threads`, `encoders.runs_in_flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// The CPUs this process may use: [`std::thread::available_parallelism`], which honours
    /// the cgroup CPU quota (containers, systemd `CPUQuota=`) and the affinity mask.
    Auto,
    Count(usize),
}

/// The most either key accepts, and what `"auto"` is capped at.
pub const MAX_CORES: usize = 64;

impl Cores {
    /// The count to use: the number given, or the CPUs available now (at least 1).
    pub fn get(self) -> usize {
        match self {
            Cores::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_CORES),
            Cores::Count(n) => n,
        }
    }
}

impl std::fmt::Display for Cores {
    /// `auto (2)` or `2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cores::Auto => write!(f, "auto ({})", self.get()),
            Cores::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cores, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Cores;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a positive whole number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cores, E> {
                if s == "auto" {
                    Ok(Cores::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(s), &self))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Cores, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Cores, E> {
                // Range problems (0, too many) are reported by validation, with the path.
                Ok(Cores::Count(usize::try_from(n).unwrap_or(usize::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// How the models load, at start and on reload (`encoders.model_loading`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelLoading {
    /// Sequential on a machine with less than [`SMALL_MEMORY_BYTES`] of RAM, parallel otherwise.
    Auto,
    /// One model after the other on one thread, the heap trimmed between: the peak is the
    /// largest single load (a small board's first start: 244 instead of 392 MiB), for a
    /// slower start (docs/performance.md, "Small board").
    Sequential,
    /// Every model at once (text, vision, audio and speech each on a thread of their own): the
    /// quickest start on several cores, for a higher peak.
    Parallel,
}

/// Below this much RAM (`MemTotal`) `"auto"` loads one model at a time: boards of 1 GB and
/// less, where a first start in parallel peaks near 400 MiB.
pub const SMALL_MEMORY_BYTES: u64 = 3 << 29; // 1.5 GiB

impl ModelLoading {
    /// Whether to load one model at a time on a machine with `total_memory` bytes of RAM
    /// (`None`: unknown, then in parallel).
    pub fn sequential(self, total_memory: Option<u64>) -> bool {
        match self {
            ModelLoading::Auto => total_memory.is_some_and(|m| m < SMALL_MEMORY_BYTES),
            ModelLoading::Sequential => true,
            ModelLoading::Parallel => false,
        }
    }
}

impl std::fmt::Display for ModelLoading {
    /// As written in the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelLoading::Auto => "\"auto\"",
            ModelLoading::Sequential => "\"sequential\"",
            ModelLoading::Parallel => "\"parallel\"",
        })
    }
}

/// Longest label text accepted for zero-shot scoring (UTF-8 bytes).
pub const MAX_LABEL_BYTES: usize = 256;

/// Which texts stand for a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelText {
    /// The clean class name only (plain ConSE).
    Name,
    /// The clean name and every synonym, embeddings averaged.
    Synonyms,
    /// Name, synonyms, and "name: description", embeddings averaged.
    Descriptions,
}

impl LabelText {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelText::Name => "name",
            LabelText::Synonyms => "synonyms",
            LabelText::Descriptions => "descriptions",
        }
    }
}

/// `[semantic]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// Give every image a vector in the text space (needs the classifier and the text encoder).
    pub enabled: bool,
    /// Classes (highest probability first) whose name embeddings make up an image's vector.
    pub top_t: usize,
    /// Their probabilities are raised to 1/temperature and renormalised (1 = as classified).
    pub temperature: f32,
    /// Texts embedded per class: "name", "synonyms" or "descriptions".
    pub label_text: LabelText,
    /// Prompt wrapped around every class text and every zero-shot label; `{}` is the text.
    pub template: String,
    /// Hubness correction: this multiple of the mean class-name embedding is subtracted from
    /// every vector (0 = plain ConSE, 1 = full centring).
    pub centre: f32,
    /// Classes named as the reason for a zero-shot score.
    pub reasons: usize,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        SemanticConfig {
            enabled: true,
            top_t: 10,
            temperature: 1.0,
            label_text: LabelText::Synonyms,
            template: "{}".into(),
            centre: 1.0,
            reasons: 3,
        }
    }
}

impl SemanticConfig {
    /// Plain ConSE as published: clean names, no prompt, no correction, T = 10.
    pub fn plain_conse() -> SemanticConfig {
        SemanticConfig {
            enabled: true,
            top_t: 10,
            temperature: 1.0,
            label_text: LabelText::Name,
            template: "{}".into(),
            centre: 0.0,
            reasons: 3,
        }
    }

    /// Every problem, as `(key under [semantic], message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(1..=1000).contains(&self.top_t) {
            p.push((
                "top_t",
                format!("{} is out of range (expected 1 to 1000)", self.top_t),
            ));
        }
        if !(self.temperature >= 0.05 && self.temperature <= 20.0) {
            p.push((
                "temperature",
                format!("{} is out of range (expected 0.05 to 20)", self.temperature),
            ));
        }
        if !(self.centre >= 0.0 && self.centre <= 1.0) {
            p.push((
                "centre",
                format!("{} is out of range (expected 0 to 1)", self.centre),
            ));
        }
        if self.template.matches("{}").count() != 1 || self.template.len() > MAX_LABEL_BYTES {
            p.push((
                "template",
                format!(
                    "{:?} must contain `{{}}` exactly once (and be at most {MAX_LABEL_BYTES} bytes)",
                    self.template
                ),
            ));
        }
        if self.reasons > 20 {
            p.push((
                "reasons",
                format!("{} is out of range (expected 0 to 20)", self.reasons),
            ));
        }
        p
    }

    /// `text` inside the prompt template.
    pub fn prompt(&self, text: &str) -> String {
        self.template.replacen("{}", text, 1)
    }
}

/// `[shared_space]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpaceConfig {
    /// Give items a vector in the text encoder's space (needs the text encoder).
    pub enabled: bool,
    /// Publish that vector as `semantic` in embedding and fused records.
    pub publish: bool,
    /// Novelty of fused records measured in the shared space (when the record has a semantic
    /// mean) instead of on the concatenated vector.
    pub novelty: bool,
    pub index: IndexConfig,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        SpaceConfig {
            enabled: true,
            publish: true,
            novelty: false,
            index: IndexConfig::default(),
        }
    }
}

/// `[shared_space.index]`: the on-device search index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    pub enabled: bool,
    /// Items kept; the oldest is evicted beyond this.
    pub max_items: usize,
    /// Keep the text of text items in the index (and return it with query results). Off by
    /// default: the index then holds ids, times, sources and vectors only.
    pub store_text: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            enabled: true,
            max_items: 5000,
            store_text: false,
        }
    }
}

/// Most items the index may be configured to hold.
pub const MAX_INDEX_ITEMS: usize = 200_000;

impl SpaceConfig {
    /// Problems as `(TOML path, message)`, for `Config::problems`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let n = self.index.max_items;
        if !(1..=MAX_INDEX_ITEMS).contains(&n) {
            out.push((
                "shared_space.index.max_items".into(),
                format!("{n} is out of range (expected 1 to {MAX_INDEX_ITEMS})"),
            ));
        }
        out
    }
}

/// Most zero-shot words in the list (`fusion.zero_shot.words`, `zero_shot/set`).
pub const MAX_WORDS: usize = 256;
/// Longest zero-shot word or phrase, in UTF-8 bytes.
pub const MAX_WORD_BYTES: usize = 128;

/// Problems with a word list, each as `(index, message)`; empty when it is usable.
pub fn check_words(words: &[String]) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    if words.len() > MAX_WORDS {
        out.push((
            None,
            format!("{} words; at most {MAX_WORDS} are allowed", words.len()),
        ));
    }
    for (i, w) in words.iter().enumerate() {
        if w.trim().is_empty() {
            out.push((Some(i), "must not be empty".into()));
        } else if w.len() > MAX_WORD_BYTES {
            out.push((
                Some(i),
                format!("{} bytes; at most {MAX_WORD_BYTES} are allowed", w.len()),
            ));
        } else if w.chars().any(char::is_control) {
            out.push((Some(i), "must not contain control characters".into()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn space_config_defaults_and_bounds() {
        let c = SpaceConfig::default();
        assert!(c.enabled && c.publish && c.index.enabled && !c.index.store_text);
        assert!(c.problems().is_empty());
        let mut bad = c.clone();
        bad.index.max_items = 0;
        assert_eq!(bad.problems()[0].0, "shared_space.index.max_items");
        bad.index.max_items = MAX_INDEX_ITEMS + 1;
        assert_eq!(bad.problems().len(), 1);
    }

    #[test]
    fn semantic_config_validation_names_each_bad_key() {
        let bad = SemanticConfig {
            top_t: 0,
            temperature: 0.0,
            centre: 2.0,
            template: "no placeholder".into(),
            reasons: 50,
            ..SemanticConfig::default()
        };
        let keys: Vec<&str> = bad.problems().iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            ["top_t", "temperature", "centre", "template", "reasons"]
        );
        assert!(SemanticConfig::default().problems().is_empty());
        assert_eq!(
            SemanticConfig {
                template: "a photo of a {}".into(),
                ..SemanticConfig::default()
            }
            .prompt("cat"),
            "a photo of a cat"
        );
    }

    #[test]
    fn check_names_the_bad_word() {
        let p = check_words(&s(&["ok", " ", &"y".repeat(200)]));
        assert_eq!(
            p.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
    }
}
