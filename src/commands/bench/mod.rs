//! `edgefuse bench`: per modality, load time, per-stage latency (p50/p95) and throughput at
//! several batch sizes and tract thread counts, and the process RSS, on real sample inputs.
//!
//! The sample inputs are compiled in (a 448×288 JPEG and a 2.9 s speech WAV from
//! tests/fixtures, plus fixed sentences), so the command works on a device with nothing but the
//! binary and the models; `--image`, `--audio` and `--text` replace them.
//!
//! Measuring is here; the report, its JSON form and its table are in [`report`].

pub mod report;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::load_config;
use crate::cli::{BenchArgs, Cli};
use crate::cpu;
use crate::encoders::{
    AudioEncoder, Encoders, ItemResult, Modality, ModelInfo, TextEncoder, TextRole, Timings,
    VisionEncoder,
};
use crate::stats::rss_bytes;
use report::{pct, print_table};
pub use report::{
    ClassifierReport, ClassifierRun, Machine, ModalityReport, OpTime, Pct, Report, Rss, Run,
    Settings,
};

const SAMPLE_IMAGE: &[u8] = include_bytes!("../../../tests/fixtures/images/chelsea.jpg");
const SAMPLE_WAV: &[u8] = include_bytes!("../../../tests/fixtures/audio/speech_fox.wav");
const SAMPLE_TEXT: &str = "A man is playing a guitar on the stage.";

/// Inputs for one modality: bytes (image, WAV) or text, and a description.
enum Sample {
    Text(String),
    Bytes(Vec<u8>),
}

pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if args.batch.contains(&0) || args.threads.contains(&0) {
        bail!("--batch and --threads take positive numbers");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_at_least_the_current_rss() {
        let now = rss_bytes();
        assert!(peak_rss_bytes() >= now, "VmHWM below statm RSS");
    }
}
