//! `edgefuse bench`'s report: what it measures, as JSON (`--json`) and as the printed table.

use std::io::Write;

use serde::Serialize;

use crate::encoders::{Modality, ModelInfo};

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
    /// With `--profile`: the classifier's time per tract op (batch 1, 1 thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<OpTime>>,
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
    /// A second plan for one item whose weights are the batch plan's (text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_plan: Option<crate::encoders::SharedConstants>,
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

pub(super) fn pct(values: &[f64]) -> Pct {
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

pub(super) fn mb(bytes: u64) -> String {
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

pub(super) fn print_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
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
        if let Some(shared) = mr.single_plan {
            writeln!(
                out,
                "  one item runs on a plan bound to batch 1: {:.1} MB of its weights are the batch plan's, {:.1} MB its own",
                shared.shared_bytes as f64 / 1e6,
                shared.own_bytes as f64 / 1e6
            )?;
        }
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
            print_profile(out, profile)?;
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
        if let Some(profile) = &c.profile {
            print_profile(out, profile)?;
        }
    }
    Ok(())
}

/// The ten op types that take the most time in one model run.
fn print_profile(out: &mut impl Write, profile: &[OpTime]) -> std::io::Result<()> {
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
}
