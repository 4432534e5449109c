use std::process::ExitCode;

use clap::Parser;
use edgefuse::cli::{Cli, Command};
use edgefuse::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result = match &cli.command {
        Command::Run => commands::run::run(&cli),
        Command::Config => commands::run::print_config(&cli),
        Command::Embed(args) => commands::embed::run(&cli, args),
        Command::Check(args) => commands::check::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
