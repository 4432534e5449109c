use std::process::ExitCode;

use clap::Parser;
use edgefuse::cli::{Cli, Command};
use edgefuse::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    edgefuse::logging::init(cli.log_filter(), cli.log_format);
    let result = match &cli.command {
        Command::Run => commands::run::run(&cli),
        Command::Config => commands::run::print_config(&cli),
        Command::Embed(args) => commands::embed::run(&cli, args),
        Command::Check(args) => commands::check::run(&cli, args),
        Command::Bench(args) => commands::bench::run(&cli, args),
        Command::Describe(args) => commands::describe::run(&cli, args),
        Command::Transcribe(args) => commands::transcribe::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes.
            eprintln!("{}error: {e:#}", edgefuse::logging::error_prefix());
            ExitCode::FAILURE
        }
    }
}
