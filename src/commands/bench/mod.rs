// Over 600 lines: the bench command, its report types and table printing in one file (the split into report.rs was undone when runs in flight landed; split again).
//! `edgefuse bench`: per modality, load time, per-stage latency (p50/p95) and throughput at
//! several batch sizes and tract thread counts, and the process RSS, on real sample inputs.
//!
//! The sample inputs are compiled in (a 448×288 JPEG and a 2.9 s speech WAV from
//! tests/fixtures, plus fixed sentences), so the command works on a device with nothing but the
//! binary and the models; `--image`, `--audio` and `--text` replace them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::load_config;
use crate::cli::{BenchArgs, Cli};
use crate::cpu;
use crate::encoders::{
    AudioEncoder, Encoders, ItemResult, Modality, ModelInfo, TextEncoder, TextRole, Timings,
    VisionEncoder,
};
use crate::pipeline::worker::{EncoderRef, Worker};
use crate::pipeline::{Body, Event, Purpose, Request};
use crate::stats::rss_bytes;
use crate::types::Ticket;

const SAMPLE_IMAGE: &[u8] = include_bytes!("../../../tests/fixtures/images/chelsea.jpg");
const SAMPLE_WAV: &[u8] = include_bytes!("../../../tests/fixtures/audio/speech_fox.wav");
const SAMPLE_TEXT: &str = "A man is playing a guitar on the stage.";

#[derive(Serialize)]
pub struct Report {
    pub schema: u32,
    pub version: &'static str,
    pub machine: Machine,
    pub settings: Settings,
    pub rss_bytes: Rss,
    pub modalities: Vec<ModalityReport>,
    /// With vision measured and `encoders.classifier.enabled`: what the image classifier (and
    /// the ConSE projection into the shared space) adds to each image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierReport>,
}

#[derive(Serialize)]
pub struct ClassifierReport {
    pub model: ModelInfo,
    pub load_ms: f64,
    /// RSS growth while the classifier loaded.
    pub rss_load_bytes: u64,
    /// Per thread count, batch 1: the vision encoder alone, the classifier and the ConSE
    /// projection, timed in turn on the same image in one loop, so load changes hit all three.
    pub runs: Vec<ClassifierRun>,
}

#[derive(Serialize)]
pub struct ClassifierRun {
    pub threads: usize,
    pub iterations: usize,
    /// `embed` of the vision encoder (decode, preprocess, inference), per image.
    pub vision_ms: Pct,
    /// `classify` (its own decode and preprocessing, inference, softmax, top classes).
    pub classifier_ms: Pct,
    /// Of which the model run alone.
    pub classifier_inference_ms: Pct,
    /// The image's vector in the shared space from its probabilities (`semantic.top_t`
    /// classes); absent without the text encoder or without the class-name cache in the state
    /// dir (the daemon and `edgefuse describe` write it at their first start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conse_ms: Option<Pct>,
    /// Mean (vision + classifier + projection) / mean vision alone.
    pub ratio: f64,
}

#[derive(Serialize)]
pub struct Machine {
    pub arch: &'static str,
    pub cpus: usize,
    pub cpu_model: String,
    pub simd: Vec<&'static str>,
    pub tract_isa: Vec<&'static str>,
    pub load_average: Option<[f64; 3]>,
}

#[derive(Serialize)]
pub struct Settings {
    pub iterations: usize,
    pub warmup: usize,
    pub batches: Vec<usize>,
    pub threads: Vec<usize>,
    /// Items per burst (0: no burst rows).
    pub burst: usize,
    pub in_flight: Vec<usize>,
}

#[derive(Serialize)]
pub struct Rss {
    /// Before any model is loaded.
    pub start: u64,
    /// With every selected model loaded, before the first inference.
    pub loaded: u64,
    /// At the end of the run.
    pub end: u64,
    /// High-water mark of the process (VmHWM), 0 where unknown.
    pub peak: u64,
}

#[derive(Serialize)]
pub struct ModalityReport {
    pub modality: Modality,
    pub model: ModelInfo,
    /// What one item is, e.g. `448×288 JPEG (33336 bytes)`.
    pub input: String,
    /// Load from the verified ONNX file (a first start).
    pub load_ms: f64,
    /// Load from the compiled-model cache (every later start; see `models.compiled_cache`).
    pub load_compiled_ms: f64,
    /// RSS growth while this model loaded.
    pub rss_load_bytes: u64,
    pub kernels: Vec<String>,
    /// One row per (batch, threads) combination, in the order measured.
    pub runs: Vec<Run>,
    /// One row per (threads, runs in flight): a burst through the daemon's worker.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bursts: Vec<BurstRun>,
    /// With `--profile`: time per tract op type at batch 1, 1 thread, largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<OpTime>>,
}

#[derive(Serialize)]
pub struct OpTime {
    /// tract op name, e.g. `OptMatMul`, `Conv`, `Softmax`.
    pub op: String,
    /// Nodes of this op type in the optimised plan.
    pub nodes: usize,
    /// Mean per model run, milliseconds.
    pub ms: f64,
    pub percent: f64,
}

#[derive(Serialize, Clone, Copy)]
pub struct Pct {
    pub p50: f64,
    pub p95: f64,
    pub mean: f64,
}

#[derive(Serialize)]
pub struct Run {
    pub batch: usize,
    pub threads: usize,
    pub iterations: usize,
    /// Per item, milliseconds: batched stages are shared equally among the batch's items.
    pub preprocess_ms: Pct,
    pub inference_ms: Pct,
    pub postprocess_ms: Pct,
    /// Wall time of one whole call with `batch` items.
    pub call_ms: Pct,
    /// `batch` × 1000 / mean call time.
    pub items_per_s: f64,
}

/// `--burst N` items queued at once on the daemon's worker for this modality (its
/// `max_batch`, `runs_in_flight` batches at a time), timed to the last answer.
#[derive(Serialize)]
pub struct BurstRun {
    pub threads: usize,
    pub runs_in_flight: usize,
    pub items: usize,
    /// The modality's `max_batch` from the config, as the daemon uses it.
    pub max_batch: usize,
    pub rounds: usize,
    /// From queueing the burst to its last answer.
    pub wall_ms: Pct,
    /// Per item, from queued to answered.
    pub item_ms: Pct,
    /// `items` × 1000 / median wall time.
    pub items_per_s: f64,
}

fn pct(values: &[f64]) -> Pct {
    if values.is_empty() {
        return Pct {
            p50: 0.0,
            p95: 0.0,
            mean: 0.0,
        };
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[(((v.len() - 1) as f64) * q).round() as usize];
    Pct {
        p50: at(0.5),
        p95: at(0.95),
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

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
        // As the daemon does after loading (see `stats::trim_heap`).
        crate::stats::trim_heap();
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
        crate::stats::trim_heap();
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
    crate::stats::trim_heap();

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
            Some(profile_plan(&model.plan, inputs, args.iterations)?)
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
            Some(ClassifierReport {
                model: ModelInfo::of(&enc.model),
                load_ms: enc.model.load_ms,
                rss_load_bytes: rss_load,
                runs,
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
        Sample::Text(args.text.clone().unwrap_or_else(|| SAMPLE_TEXT.to_owned())),
        Sample::Bytes(read(&args.image, SAMPLE_IMAGE)?),
        Sample::Bytes(read(&args.audio, SAMPLE_WAV)?),
    ])
}

/// Time `warmup + iterations` calls of `call(batch)` under `executor`.
fn measure(
    call: &dyn Fn(usize) -> Vec<ItemResult>,
    batch: usize,
    warmup: usize,
    iterations: usize,
    executor: &Executor,
) -> anyhow::Result<Run> {
    let mut pre = Vec::with_capacity(iterations);
    let mut inf = Vec::with_capacity(iterations);
    let mut post = Vec::with_capacity(iterations);
    let mut wall = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let t0 = Instant::now();
        let results = multithread_tract_scope(executor.clone(), || call(batch));
        let call_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut sum = Timings::default();
        for r in &results {
            let e = r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            sum.preprocess_ms += e.timings.preprocess_ms;
            sum.inference_ms += e.timings.inference_ms;
            sum.postprocess_ms += e.timings.postprocess_ms;
        }
        if i < warmup {
            continue;
        }
        let n = results.len().max(1) as f64;
        pre.push(sum.preprocess_ms / n);
        inf.push(sum.inference_ms / n);
        post.push(sum.postprocess_ms / n);
        wall.push(call_ms);
    }
    let call_ms = pct(&wall);
    Ok(Run {
        batch,
        threads: 1,
        iterations,
        preprocess_ms: pct(&pre),
        inference_ms: pct(&inf),
        postprocess_ms: pct(&post),
        call_ms,
        items_per_s: if call_ms.mean > 0.0 {
            batch as f64 * 1e3 / call_ms.mean
        } else {
            0.0
        },
    })
}

/// A burst of one sample, queued at once on a worker as the daemon runs it.
struct Burst<'a> {
    encoder: &'a EncoderRef,
    body: &'a Body,
    items: usize,
    max_batch: usize,
    runs_in_flight: usize,
}

impl Burst<'_> {
    /// `warmup + rounds` bursts with `executor` as tract's default (the worker's runs happen on
    /// the blocking pool's threads, as in the daemon), then back to one thread.
    fn measure(
        &self,
        warmup: usize,
        rounds: usize,
        executor: &Executor,
    ) -> anyhow::Result<BurstRun> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("starting a runtime for the burst")?;
        tract_linalg::multithread::set_default_executor(executor.clone());
        let timed = (0..warmup + rounds)
            .map(|_| rt.block_on(self.once()))
            .collect::<anyhow::Result<Vec<_>>>();
        tract_linalg::multithread::set_default_executor(Executor::SingleThread);
        let timed = timed?;
        let wall: Vec<f64> = timed[warmup..].iter().map(|(w, _)| *w).collect();
        let items: Vec<f64> = timed[warmup..]
            .iter()
            .flat_map(|(_, i)| i.iter().copied())
            .collect();
        let wall_ms = pct(&wall);
        Ok(BurstRun {
            threads: 1,
            runs_in_flight: self.runs_in_flight,
            items: self.items,
            max_batch: self.max_batch,
            rounds,
            wall_ms,
            item_ms: pct(&items),
            items_per_s: if wall_ms.p50 > 0.0 {
                self.items as f64 * 1e3 / wall_ms.p50
            } else {
                0.0
            },
        })
    }

    /// One burst: its wall time and each item's time, in ms.
    async fn once(&self) -> anyhow::Result<(f64, Vec<f64>)> {
        let (tx, requests) = tokio::sync::mpsc::channel(self.items);
        let (events, mut out) = tokio::sync::mpsc::channel(self.items);
        let t0 = Instant::now();
        for i in 0..self.items {
            tx.try_send(Request {
                id: format!("burst-{i}"),
                modality: self.encoder.modality(),
                purpose: Purpose::Embed,
                body: self.body.clone(),
                source: "bench".into(),
                group: "bench".into(),
                topic: "bench".into(),
                response_topic: None,
                correlation: None,
                received: tokio::time::Instant::now(),
                ticket: Ticket::none(),
            })
            .map_err(|_| anyhow::anyhow!("the burst queue is full"))?;
        }
        drop(tx);
        let worker = Worker {
            encoder: self.encoder.clone(),
            requests,
            live: None,
            events,
            max_batch: self.max_batch,
            runs_in_flight: self.runs_in_flight,
            stats: std::sync::Arc::new(crate::stats::Stats::default()),
            semantic: None,
        };
        let worker = tokio::spawn(worker.run());
        let mut item_ms = Vec::with_capacity(self.items);
        while let Some(event) = out.recv().await {
            if let Event::Embedded(o) = event {
                o.result.map_err(|e| anyhow::anyhow!("{e}"))?;
                item_ms.push(o.total_ms);
            }
        }
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        worker.await.context("the worker failed")?;
        anyhow::ensure!(
            item_ms.len() == self.items,
            "{} answers for {} items",
            item_ms.len(),
            self.items
        );
        Ok((wall, item_ms))
    }
}

/// Vision alone, then the classifier, then the ConSE projection, on one image per call, in
/// turn for `warmup + iterations` rounds under `executor`.
fn measure_classifier(
    vision: &crate::encoders::VisionEncoder,
    classifier: &crate::encoders::ClassifierEncoder,
    space: Option<&crate::semantic::SemanticSpace>,
    image: &[u8],
    args: &BenchArgs,
    executor: &Executor,
) -> anyhow::Result<ClassifierRun> {
    let (mut v, mut c, mut p, mut ci) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.warmup + args.iterations {
        let t0 = Instant::now();
        let e = multithread_tract_scope(executor.clone(), || vision.embed(&[image]));
        let t1 = Instant::now();
        let k = multithread_tract_scope(executor.clone(), || classifier.classify(&[image]));
        let t2 = Instant::now();
        let (probabilities, inference_ms) = match (e.into_iter().next(), k.into_iter().next()) {
            (Some(Ok(_)), Some(Ok(k))) => (k.probabilities, k.timings.inference_ms),
            (Some(Err(err)), _) | (_, Some(Err(err))) => anyhow::bail!("{err}"),
            _ => anyhow::bail!("no result"),
        };
        let projected = space.map(|s| s.image_vector(&probabilities).vector.len());
        let t3 = Instant::now();
        anyhow::ensure!(projected != Some(0), "empty ConSE vector");
        if i < args.warmup {
            continue;
        }
        v.push((t1 - t0).as_secs_f64() * 1e3);
        c.push((t2 - t1).as_secs_f64() * 1e3);
        p.push((t3 - t2).as_secs_f64() * 1e3);
        ci.push(inference_ms);
    }
    let (vision_ms, classifier_ms, conse_ms) = (pct(&v), pct(&c), pct(&p));
    Ok(ClassifierRun {
        threads: 1,
        iterations: args.iterations,
        vision_ms,
        classifier_ms,
        classifier_inference_ms: pct(&ci),
        conse_ms: space.map(|_| conse_ms),
        ratio: if vision_ms.mean > 0.0 {
            (vision_ms.mean + classifier_ms.mean + space.map_or(0.0, |_| conse_ms.mean))
                / vision_ms.mean
        } else {
            0.0
        },
    })
}

/// The model inputs for one item of `m`, built by the encoder's own preprocessing.
fn model_inputs(set: &Encoders, m: Modality, samples: &[Sample]) -> anyhow::Result<TVec<TValue>> {
    let inputs = match (m, &samples[m as usize]) {
        (Modality::Text, Sample::Text(t)) => set
            .get::<TextEncoder>()
            .context("text encoder")?
            .model_inputs(t, TextRole::Passage)?,
        (Modality::Vision, Sample::Bytes(b)) => set
            .get::<VisionEncoder>()
            .context("vision encoder")?
            .model_inputs(b)?,
        (Modality::Audio, Sample::Bytes(b)) => set
            .get::<AudioEncoder>()
            .context("audio encoder")?
            .model_inputs(b)?,
        _ => bail!("no sample for {m}"),
    };
    Ok(inputs)
}

/// Run the plan `iterations` times timing every node, and sum the time per op type.
fn profile_plan(
    plan: &std::sync::Arc<TypedRunnableModel>,
    inputs: TVec<TValue>,
    iterations: usize,
) -> anyhow::Result<Vec<OpTime>> {
    use std::collections::BTreeMap;
    let mut per_op: BTreeMap<String, (std::collections::BTreeSet<usize>, f64)> = BTreeMap::new();
    let mut state = TypedSimpleState::new(plan)?;
    // One untimed run first, as in the latency measurements.
    state.run(inputs.clone())?;
    for _ in 0..iterations {
        state.run_plan_with_eval(inputs.clone(), |session, op_state, node, input| {
            let t0 = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(session, op_state, node, input);
            let e = per_op.entry(node.op().name().to_string()).or_default();
            e.0.insert(node.id);
            e.1 += t0.elapsed().as_secs_f64() * 1e3;
            r
        })?;
    }
    let total: f64 = per_op.values().map(|(_, ms)| ms).sum();
    let n = iterations.max(1) as f64;
    let mut ops: Vec<OpTime> = per_op
        .into_iter()
        .map(|(op, (nodes, ms))| OpTime {
            op,
            nodes: nodes.len(),
            ms: ms / n,
            percent: if total > 0.0 { ms / total * 100.0 } else { 0.0 },
        })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(ops)
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // x86 names it `model name`; ARM boards often only have `Model` or `Hardware`.
    let cpu_model = ["model name", "Model", "Hardware"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == *key).then(|| v.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let load_average = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        let v: Vec<f64> = s
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 3).then(|| [v[0], v[1], v[2]])
    });
    Machine {
        arch: cpu::arch(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        simd: cpu::simd_features(),
        tract_isa: cpu::tract_isa(),
        load_average,
    }
}

/// VmHWM of /proc/self/status in bytes (Linux), 0 where unknown.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

fn p(x: Pct) -> String {
    let f = |v: f64| {
        if v < 1.0 {
            format!("{v:.3}")
        } else if v < 100.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.1}")
        }
    };
    format!("{} / {}", f(x.p50), f(x.p95))
}

fn print_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    let m = &r.machine;
    writeln!(
        out,
        "edgefuse {} bench: {} ({}), {} CPUs, simd {}, tract isa {}",
        r.version,
        m.arch,
        if m.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            &m.cpu_model
        },
        m.cpus,
        m.simd.join(" "),
        m.tract_isa.join(" ")
    )?;
    if let Some(l) = m.load_average {
        writeln!(out, "load average {:.2} {:.2} {:.2}", l[0], l[1], l[2])?;
    }
    writeln!(
        out,
        "{} iterations after {} warm-up; times in ms as p50 / p95, per item unless `call`",
        r.settings.iterations, r.settings.warmup
    )?;
    writeln!(
        out,
        "RSS: {} at start, {} with models loaded, {} peak",
        mb(r.rss_bytes.start),
        mb(r.rss_bytes.loaded),
        mb(r.rss_bytes.peak)
    )?;
    for mr in &r.modalities {
        writeln!(out)?;
        writeln!(
            out,
            "{} — {} ({}), input {}; load {:.0} ms ({:.0} ms compiled), +{} RSS; kernels {}",
            mr.modality,
            mr.model.name,
            mr.model.quantization,
            mr.input,
            mr.load_ms,
            mr.load_compiled_ms,
            mb(mr.rss_load_bytes),
            mr.kernels.join(" ")
        )?;
        writeln!(
            out,
            "  {:>5} {:>7} {:>17} {:>17} {:>17} {:>19} {:>9}",
            "batch", "threads", "preprocess", "inference", "postprocess", "call", "items/s"
        )?;
        for run in &mr.runs {
            writeln!(
                out,
                "  {:>5} {:>7} {:>17} {:>17} {:>17} {:>19} {:>9.2}",
                run.batch,
                run.threads,
                p(run.preprocess_ms),
                p(run.inference_ms),
                p(run.postprocess_ms),
                p(run.call_ms),
                run.items_per_s
            )?;
        }
        if let Some(first) = mr.bursts.first() {
            writeln!(
                out,
                "  burst of {} queued at once through the daemon's worker (max_batch {}):",
                first.items, first.max_batch
            )?;
            writeln!(
                out,
                "  {:>7} {:>9} {:>19} {:>19} {:>9}",
                "threads", "in flight", "burst", "per item", "items/s"
            )?;
            for b in &mr.bursts {
                writeln!(
                    out,
                    "  {:>7} {:>9} {:>19} {:>19} {:>9.2}",
                    b.threads,
                    b.runs_in_flight,
                    p(b.wall_ms),
                    p(b.item_ms),
                    b.items_per_s
                )?;
            }
        }
        if let Some(profile) = &mr.profile {
            writeln!(
                out,
                "  profile (batch 1, 1 thread), time per model run by tract op:"
            )?;
            for op in profile.iter().take(10) {
                writeln!(
                    out,
                    "    {:<28} {:>4} nodes {:>10.3} ms {:>5.1} %",
                    op.op, op.nodes, op.ms, op.percent
                )?;
            }
        }
    }
    if let Some(c) = &r.classifier {
        writeln!(out)?;
        writeln!(
            out,
            "image classifier — {} ({}), beside the vision encoder on the same image; load {:.0} ms, +{} RSS",
            c.model.name,
            c.model.quantization,
            c.load_ms,
            mb(c.rss_load_bytes)
        )?;
        writeln!(
            out,
            "  {:>7} {:>17} {:>17} {:>17} {:>17} {:>24}",
            "threads",
            "vision",
            "classifier",
            "(its inference)",
            "ConSE",
            "(vision+classifier+ConSE)/vision"
        )?;
        for run in &c.runs {
            writeln!(
                out,
                "  {:>7} {:>17} {:>17} {:>17} {:>17} {:>24.2}",
                run.threads,
                p(run.vision_ms),
                p(run.classifier_ms),
                p(run.classifier_inference_ms),
                run.conse_ms.map_or_else(|| "—".to_owned(), p),
                run.ratio
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_mean_and_empty_input() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let p = pct(&v);
        assert_eq!(p.p50, 11.0);
        assert_eq!(p.p95, 19.0);
        assert_eq!(p.mean, 10.5);
        assert_eq!(pct(&[]).p50, 0.0);
    }

    #[test]
    fn peak_rss_is_at_least_the_current_rss() {
        let now = rss_bytes();
        assert!(peak_rss_bytes() >= now, "VmHWM below statm RSS");
    }
}
