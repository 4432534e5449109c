//! Configuration: TOML mirrored by serde structs (`deny_unknown_fields`), then validated as a
//! whole so that every problem is reported at once, each with its TOML path and bad value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The built-in default, `configs/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub encoders: EncodersConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    #[serde(default = "default_models_dir")]
    pub dir: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: default_models_dir(),
        }
    }
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("models")
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodersConfig {
    #[serde(default)]
    pub text: TextConfig,
    #[serde(default)]
    pub vision: VisionConfig,
    #[serde(default)]
    pub audio: AudioConfig,
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
fn four() -> usize {
    4
}
fn sixteen() -> usize {
    16
}
fn text_model() -> String {
    "text".into()
}
fn vision_model() -> String {
    "vision".into()
}
fn audio_model() -> String {
    "audio".into()
}
fn default_max_pixels() -> u64 {
    40_000_000
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
            problems: vec![toml_problem(&e, text)],
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
        if e.text.model.trim().is_empty() {
            p.add("encoders.text.model", "must name a model in the manifest");
        }
        if let Some(n) = e.text.max_length {
            p.range("encoders.text.max_length", n, 2, 512);
        }
        p.range("encoders.text.max_batch", e.text.max_batch, 1, 256);
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
        if !(e.text.enabled || e.vision.enabled || e.audio.enabled) {
            p.add("encoders", "every encoder is disabled; enable at least one");
        }
        p.0
    }

    /// `models.dir`, with `--models` taking precedence.
    pub fn models_dir(&self, override_dir: Option<&Path>) -> PathBuf {
        override_dir.map_or_else(|| self.models.dir.clone(), Path::to_owned)
    }
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
            let key = text[start..span.end.min(text.len())].trim();
            let key_like = !key.is_empty()
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
    fn builtin_default_parses_and_is_valid() {
        let c = Config::builtin();
        assert!(c.problems().is_empty());
        assert_eq!(c.models.dir, PathBuf::from("models"));
        assert!(c.encoders.text.enabled && c.encoders.vision.enabled && c.encoders.audio.enabled);
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
    fn models_override_wins() {
        let c = Config::builtin();
        assert_eq!(c.models_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
        assert_eq!(c.models_dir(None), PathBuf::from("models"));
    }
}
