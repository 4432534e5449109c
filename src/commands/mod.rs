//! The CLI's subcommands. Each returns `anyhow::Result<ExitCode>`: errors that stop the whole
//! command bubble up; per-input errors are printed and turn the exit code non-zero.

pub mod bench;
pub mod check;
pub mod describe;
pub mod embed;
pub mod run;
pub mod transcribe;

use anyhow::Context;

use crate::cli::Cli;
use crate::config::Config;

pub(crate) fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Config::load(cli.config.as_deref()).context("invalid configuration")
}
