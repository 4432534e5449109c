//! `edgefuse bench`: per modality, load time, per-stage latency (p50/p95) and throughput at
//! several batch sizes and tract thread counts, and the process RSS, on real sample inputs.
//!
//! The sample inputs are compiled in (a 448×288 JPEG and a 2.9 s speech WAV from
//! tests/fixtures, plus fixed sentences), so the command works on a device with nothing but the
//! binary and the models; `--image`, `--audio` and `--text` replace them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use super::load_config;
use crate::cli::{BenchArgs, Cli};
use crate::encoders::{
    AudioEncoder, Encoders, ItemResult, Modality, ModelInfo, TextEncoder, VisionEncoder,
};
use crate::pipeline::worker::EncoderRef;
use crate::pipeline::Body;
use crate::stats::rss_bytes;

use crate::samples;

mod measure;
mod report;

use measure::*;
use report::*;

/// Inputs for one modality: bytes (image, WAV) or text, and a description.
enum Sample {
    Text(String),
    Bytes(Vec<u8>),
}

pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if args.batch.contains(&0) || args.threads.contains(&0) || args.in_flight.contains(&0) {
        bail!("--batch, --threads and --in-flight take positive numbers");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut in_flight = if args.in_flight.is_empty() {
        vec![1, cpus]
    } else {
        args.in_flight.clone()
    };
    in_flight.dedup();
    let mut batches = args.batch.clone();
    batches.dedup();
    let mut threads = if args.threads.is_empty() {
        vec![
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ]
    } else {
        args.threads.clone()
    };
    threads.dedup();
    let modalities: Vec<Modality> = if args.modality.is_empty() {
        Modality::ALL.to_vec()
    } else {
        let mut m = args.modality.clone();
        m.sort();
        m.dedup();
        m
    };

    let mut config = load_config(cli)?;
    let models_dir = config.models_dir(cli.models.as_deref());
    // The bursts batch as the daemon would, with the configured sizes.
    let daemon_batch = [
        config.encoders.text.max_batch,
        config.encoders.vision.max_batch,
        config.encoders.audio.max_batch,
    ];
    // Measure exactly the requested batch sizes: the encoders split larger batches.
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let e = &mut config.encoders;
    e.text.max_batch = e.text.max_batch.max(max_batch);
    e.vision.max_batch = e.vision.max_batch.max(max_batch);
    e.audio.max_batch = e.audio.max_batch.max(max_batch);

    let samples = load_samples(args)?;
    let rss_start = rss_bytes();
    let mut rss_per_model = Vec::new();
    let mut set: Option<Encoders> = None;
    // Load one modality at a time so the RSS each model adds can be attributed.
    for &m in &modalities {
        let before = rss_bytes();
        let one = Encoders::load_roles(&config, &models_dir, &[m.into()])
            .with_context(|| format!("loading the {m} encoder"))?;
        match &mut set {
            Some(set) => set.merge(one),
            None => set = Some(one),
        }
        // As the daemon does after loading (see `cpu::trim_heap`).
        crate::cpu::trim_heap();
        rss_per_model.push(rss_bytes().saturating_sub(before));
    }
    let set = set.context("no modality to measure")?;
    // The classifier runs on every image beside the vision encoder (the daemon's default).
    let classifier = if modalities.contains(&Modality::Vision) && config.encoders.classifier.enabled
    {
        let c = &config.encoders.classifier;
        let before = rss_bytes();
        let enc = crate::encoders::ClassifierEncoder::load(
            &set.manifest,
            &c.model,
            None,
            c.top_k,
            1,
            c.max_pixels,
        )
        .context("loading the image classifier (encoders.classifier)")?;
        crate::cpu::trim_heap();
        Some((enc, rss_bytes().saturating_sub(before)))
    } else {
        None
    };
    let rss_loaded = rss_bytes();
    // Every start after the first reads the compiled form: measure that load too, in a
    // throw-away cache so the user's state directory is untouched.
    let compiled_dir = std::env::temp_dir().join(format!("edgefuse-bench-{}", std::process::id()));
    let cache = crate::encoders::ModelCache::new(&compiled_dir);
    let mut load_compiled_ms = Vec::new();
    for &m in &modalities {
        let key = &set.model(m).context("encoder loaded above")?.key;
        let compile = crate::encoders::LoadedModel::load_with(&set.manifest, key, Some(&cache))
            .with_context(|| format!("compiling the {m} model"))?;
        drop(compile);
        let compiled = crate::encoders::LoadedModel::load_with(&set.manifest, key, Some(&cache))
            .with_context(|| format!("loading the compiled {m} model"))?;
        anyhow::ensure!(
            compiled.source == crate::encoders::ModelSource::Compiled,
            "the {m} model was not read from the compiled-model cache"
        );
        load_compiled_ms.push(compiled.load_ms);
    }
    let _ = std::fs::remove_dir_all(&compiled_dir);
    crate::cpu::trim_heap();

    // One executor per thread count, built once: building a pool is not what we measure.
    let executors: Vec<(usize, Executor)> = threads
        .iter()
        .map(|&n| {
            let ex = if n == 1 {
                Executor::SingleThread
            } else {
                Executor::multithread(n)
            };
            (n, ex)
        })
        .collect();

    let mut reports = Vec::new();
    for ((&m, rss_load), load_compiled_ms) in
        modalities.iter().zip(rss_per_model).zip(load_compiled_ms)
    {
        let model = set.model(m).context("encoder loaded above")?;
        let (input, one): (String, Box<dyn Fn(usize) -> Vec<ItemResult> + '_>) = match m {
            Modality::Text => {
                let enc = set.get::<TextEncoder>().context("text encoder")?;
                let Sample::Text(t) = &samples[0] else {
                    unreachable!("samples are in modality order")
                };
                let t = t.clone();
                (
                    format!("{} characters of text", t.chars().count()),
                    Box::new(move |n| enc.embed(&vec![t.as_str(); n])),
                )
            }
            Modality::Vision => {
                let enc = set.get::<VisionEncoder>().context("vision encoder")?;
                let Sample::Bytes(b) = &samples[1] else {
                    unreachable!("samples are in modality order")
                };
                let desc = match ::image::ImageReader::new(std::io::Cursor::new(b))
                    .with_guessed_format()
                    .ok()
                    .and_then(|r| r.into_dimensions().ok())
                {
                    Some((w, h)) => format!("{w}×{h} image ({} bytes)", b.len()),
                    None => format!("image ({} bytes)", b.len()),
                };
                (desc, Box::new(move |n| enc.embed(&vec![b.as_slice(); n])))
            }
            Modality::Audio => {
                let enc = set.get::<AudioEncoder>().context("audio encoder")?;
                let Sample::Bytes(b) = &samples[2] else {
                    unreachable!("samples are in modality order")
                };
                let secs = crate::preprocess::wav::decode(b, f64::MAX)
                    .map(|d| d.samples.len() as f64 / f64::from(d.sample_rate))
                    .unwrap_or(0.0);
                (
                    format!("{secs:.1} s WAV ({} bytes)", b.len()),
                    Box::new(move |n| enc.embed_wavs(&vec![b.as_slice(); n])),
                )
            }
        };
        let mut runs = Vec::new();
        for &batch in &batches {
            for (nthreads, ex) in &executors {
                let r = measure(&*one, batch, args.warmup, args.iterations, ex)
                    .with_context(|| format!("{m}: batch {batch}, {nthreads} thread(s)"))?;
                runs.push(Run {
                    threads: *nthreads,
                    ..r
                });
                if !args.json {
                    eprint!(".");
                }
            }
        }
        let mut bursts = Vec::new();
        if args.burst > 0 {
            let encoder = match m {
                Modality::Text => set.shared::<TextEncoder>().map(EncoderRef::Text),
                Modality::Vision => set.shared::<VisionEncoder>().map(EncoderRef::Vision),
                Modality::Audio => set.shared::<AudioEncoder>().map(EncoderRef::Audio),
            }
            .context("encoder loaded above")?;
            let body = match &samples[m as usize] {
                Sample::Text(t) => Body::Text(t.clone()),
                Sample::Bytes(b) => Body::Encoded(bytes::Bytes::from(b.clone())),
            };
            for (nthreads, ex) in &executors {
                for &runs in &in_flight {
                    let burst = Burst {
                        encoder: &encoder,
                        body: &body,
                        items: args.burst,
                        max_batch: daemon_batch[m as usize],
                        runs_in_flight: runs,
                    };
                    let r = burst
                        .measure(args.warmup, args.iterations, ex)
                        .with_context(|| {
                            format!("{m}: burst, {nthreads} thread(s), {runs} in flight")
                        })?;
                    bursts.push(BurstRun {
                        threads: *nthreads,
                        ..r
                    });
                    if !args.json {
                        eprint!(".");
                    }
                }
            }
        }
        let profile = if args.profile {
            let inputs = model_inputs(&set, m, &samples)
                .with_context(|| format!("{m}: building the profiling inputs"))?;
            Some(profile_plan(model.plan_for_one(), inputs, args.iterations)?)
        } else {
            None
        };
        reports.push(ModalityReport {
            modality: m,
            model: ModelInfo::of(model),
            input,
            load_ms: model.load_ms,
            load_compiled_ms,
            rss_load_bytes: rss_load,
            kernels: model.kernels.clone(),
            single_plan: model.single_plan_constants(),
            runs,
            bursts,
            profile,
        });
    }
    let classifier = match classifier {
        Some((enc, rss_load)) => {
            let vision = set.get::<VisionEncoder>().context("vision encoder")?;
            let Sample::Bytes(image) = &samples[1] else {
                unreachable!("samples are in modality order")
            };
            // The shared space needs the text encoder and the class-name embeddings the daemon
            // or `describe` cached in the state dir: read, never computed or written here.
            let space = match set.get::<TextEncoder>() {
                Some(text)
                    if config.semantic.enabled
                        && crate::semantic::cache::path_for(
                            &config.state_dir,
                            text,
                            &enc,
                            &config.semantic,
                        )
                        .is_file() =>
                {
                    Some(
                        crate::semantic::SemanticSpace::load_or_build(
                            Some(&config.state_dir),
                            text,
                            &enc,
                            &config.semantic,
                        )
                        .context("reading the shared space for the ConSE projection")?,
                    )
                }
                _ => None,
            };
            let mut runs = Vec::new();
            for (nthreads, ex) in &executors {
                runs.push(
                    measure_classifier(vision, &enc, space.as_ref(), image, args, ex)
                        .with_context(|| format!("classifier: {nthreads} thread(s)"))
                        .map(|r| ClassifierRun {
                            threads: *nthreads,
                            ..r
                        })?,
                );
            }
            let profile = if args.profile {
                let inputs = enc
                    .model_inputs(image)
                    .context("classifier: building the profiling inputs")?;
                Some(profile_plan(
                    &enc.image.model.plan,
                    inputs,
                    args.iterations,
                )?)
            } else {
                None
            };
            Some(ClassifierReport {
                model: ModelInfo::of(&enc.image.model),
                load_ms: enc.image.model.load_ms,
                rss_load_bytes: rss_load,
                runs,
                profile,
            })
        }
        None => None,
    };
    if !args.json {
        eprintln!();
    }

    let report = Report {
        schema: 1,
        version: env!("CARGO_PKG_VERSION"),
        machine: machine(),
        settings: Settings {
            iterations: args.iterations,
            warmup: args.warmup,
            batches,
            threads,
            burst: args.burst,
            in_flight,
        },
        rss_bytes: Rss {
            start: rss_start,
            loaded: rss_loaded,
            end: rss_bytes(),
            peak: peak_rss_bytes(),
        },
        modalities: reports,
        classifier,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn load_samples(args: &BenchArgs) -> anyhow::Result<Vec<Sample>> {
    let read = |p: &Option<PathBuf>, builtin: &[u8]| -> anyhow::Result<Vec<u8>> {
        match p {
            Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display())),
            None => Ok(builtin.to_vec()),
        }
    };
    Ok(vec![
        Sample::Text(
            args.text
                .clone()
                .unwrap_or_else(|| samples::TEXT.to_owned()),
        ),
        Sample::Bytes(read(&args.image, samples::IMAGE)?),
        Sample::Bytes(read(&args.audio, samples::WAV)?),
    ])
}
