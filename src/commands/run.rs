//! `edgefuse run` and `edgefuse config`.

use std::process::ExitCode;

use anyhow::Context;

use super::load_config;
use crate::cli::Cli;

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(cli)?;
    let source = crate::reload::ConfigSource {
        path: cli.config.clone(),
        models_override: cli.models.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgefuse")
        .build()
        .context("cannot start the async runtime")?;
    let ran = runtime.block_on(async {
        let shutdown = crate::signals::shutdown_signal()?;
        crate::app::run(config, source, shutdown).await
    });
    // A model load abandoned by a shutdown during start-up is still running on a blocking
    // thread; do not wait for it (it has no side effects).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ran?;
    Ok(ExitCode::SUCCESS)
}

pub fn print_config(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(cli)?;
    println!("# valid; device_id in force: {}", config.device_id());
    println!("{config:#?}");
    Ok(ExitCode::SUCCESS)
}
