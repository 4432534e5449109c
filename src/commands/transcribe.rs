//! `edgefuse transcribe FILE.wav...`: one JSON object per file (text, segments with times,
//! model, timings). Uses `[encoders.speech]` of the config; `enabled` there is for the daemon,
//! this command always loads the transcriber.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use super::load_config;
use crate::cli::{Cli, TranscribeArgs};
use crate::encoders::registry::Load;
use crate::encoders::speech::Transcript;
use crate::encoders::{Encoders, Role, Transcriber};

#[derive(Serialize)]
struct Line<'a> {
    input: &'a str,
    #[serde(flatten)]
    transcript: &'a Transcript,
}

pub fn run(cli: &Cli, args: &TranscribeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(cli)?;
    let models_dir = config.models_dir(cli.models.as_deref());
    let cache = config.model_cache();
    let load = Load {
        only: Some(&[Role::Speech]),
        cache: cache.as_ref(),
        previous: None,
    };
    let (loaded, _) = Encoders::load_with(&config.encoders, &models_dir, load)?;
    let transcriber = loaded
        .get::<Transcriber>()
        .ok_or_else(|| anyhow::anyhow!("the speech model did not load"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    for path in &args.files {
        let name = path.display().to_string();
        match transcriber.transcribe_file(path) {
            Ok(t) => {
                serde_json::to_writer(
                    &mut out,
                    &Line {
                        input: &name,
                        transcript: &t,
                    },
                )?;
                writeln!(out)?;
                out.flush()?;
            }
            Err(err) => {
                failed += 1;
                eprintln!("error: speech input {name}: {err}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
