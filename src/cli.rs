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

    /// Log filter, e.g. `info`, `debug`, `edgefuse=debug,tract=warn`.
    #[arg(long, global = true, env = "EDGEFUSE_LOG", default_value = "warn")]
    pub log: String,

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
