//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "edgefuse",
    version,
    about = "Text, vision and audio embeddings on edge devices, fused and published over MQTT"
)]
pub struct Cli {
    /// Config file (TOML). Without it the built-in default (configs/default.toml) is used.
    #[arg(long, short = 'c', global = true, env = "EDGEFUSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Models directory (holding manifest.toml); overrides `models.dir` of the config.
    #[arg(long, global = true, env = "EDGEFUSE_MODELS")]
    pub models: Option<PathBuf>,

    /// Log filter, e.g. `info`, `debug`, `edgefuse=debug,tract=warn`. Default: `warn`, and for
    /// `run` also edgefuse's own `info` lines (what it runs, where to publish, when it is ready).
    #[arg(long, global = true, env = "EDGEFUSE_LOG")]
    pub log: Option<String>,

    /// Log format: `auto` is `journal` when stderr is the systemd journal, else `text`.
    #[arg(
        long,
        global = true,
        env = "EDGEFUSE_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    pub log_format: crate::logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter in force: `--log`/`EDGEFUSE_LOG`, else the command's default.
    pub fn log_filter(&self) -> &str {
        match (&self.log, &self.command) {
            (Some(f), _) => f,
            (None, Command::Run) => DAEMON_LOG,
            (None, _) => "warn",
        }
    }
}

/// `edgefuse run`'s default filter: a start-up summary, a line when ready, then one line per
/// problem (warnings and errors of every crate, refused inputs).
pub const DAEMON_LOG: &str = "warn,edgefuse=info";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: MQTT in and out, live sources, fusion (until SIGTERM/SIGINT).
    Run,
    /// Validate the configuration and print it with defaults filled in.
    Config,
    /// Embed inputs and print one JSON object per input, one per line.
    Embed(EmbedArgs),
    /// Print the config, each model (path, sha256, format, input facts, kernels) and the CPU.
    Check(CheckArgs),
    /// Measure load time, per-stage latency, throughput and RSS on sample inputs.
    Bench(BenchArgs),
    /// Say what images and texts show, in words: ImageNet classes and zero-shot labels
    /// scored in the shared text space. One JSON object per input, one per line.
    Describe(DescribeArgs),
    /// Transcribe WAV files (speech, English) and print one JSON object per file, one per line.
    Transcribe(TranscribeArgs),
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Image files (JPEG, PNG, WebP) and WAV files (transcribed with `[encoders.speech]`'s
    /// model; their zero-shot labels are scored on the transcript's text).
    pub files: Vec<PathBuf>,
    /// A text to describe (repeatable); texts are printed before files.
    #[arg(long = "text", short = 't', value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Zero-shot labels, comma-separated, e.g. "cat,dog,coffee". Default: the daemon's
    /// zero-shot words (the list set over MQTT, saved in the state dir, else the config's
    /// `fusion.zero_shot.words`), else `fusion.zero_shot.labels`.
    #[arg(long, short = 'l', value_delimiter = ',', value_name = "W1,W2,...")]
    pub labels: Vec<String>,
    /// Also print each input's unit vector in the shared space under "semantic".
    #[arg(long)]
    pub vector: bool,
}

#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// WAV files (PCM 8/16/24/32-bit or 32-bit float, any rate and channel count).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(subcommand)]
    pub what: EmbedWhat,
}

#[derive(Debug, Subcommand)]
pub enum EmbedWhat {
    /// Embed each argument as one text.
    Text {
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Embed image files (any format the `image` crate decodes: JPEG, PNG, WebP, …).
    Image {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Embed WAV files (PCM 8/16/24/32-bit or 32-bit float, any rate and channel count).
    Audio {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also print the embedding of each 2.3 s block under "blocks".
        #[arg(long)]
        blocks: bool,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Modalities to measure (repeatable or comma-separated): text, vision, audio. Default: all.
    #[arg(long, short = 'm', value_delimiter = ',', value_parser = parse_modality)]
    pub modality: Vec<crate::encoders::Modality>,
    /// Timed calls per batch size and thread count.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub iterations: usize,
    /// Untimed calls before each measurement.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Batch sizes (items per call), comma-separated.
    #[arg(long, short = 'b', value_delimiter = ',', default_values_t = [1, 4])]
    pub batch: Vec<usize>,
    /// tract thread counts, comma-separated. Default: 1 and the number of CPUs.
    #[arg(long, short = 't', value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Items queued at once for the burst rows, which run through the daemon's own worker
    /// (its batching and runs in flight); 0 skips them.
    #[arg(long, default_value_t = 8)]
    pub burst: usize,
    /// Runs in flight per modality for the burst rows, comma-separated. Default: 1 and the
    /// number of CPUs.
    #[arg(long, short = 'j', value_delimiter = ',')]
    pub in_flight: Vec<usize>,
    /// Text to embed instead of the built-in sentence.
    #[arg(long)]
    pub text: Option<String>,
    /// Image file instead of the built-in 448×288 JPEG (tests/fixtures/images/chelsea.jpg).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// WAV file instead of the built-in 2.9 s speech (tests/fixtures/audio/speech_fox.wav).
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Also time every tract op (batch 1, 1 thread) and report the time per op type.
    #[arg(long)]
    pub profile: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_modality(s: &str) -> Result<crate::encoders::Modality, String> {
    crate::encoders::Modality::ALL
        .into_iter()
        .find(|m| m.as_str() == s || (s == "image" && *m == crate::encoders::Modality::Vision))
        .ok_or_else(|| format!("unknown modality `{s}` (text, vision, audio)"))
}
