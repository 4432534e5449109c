//! `edgefuse bench`'s measurements: timed calls at a batch size and thread count, bursts
//! through the daemon's own worker, the image classifier beside vision, per-op profiles, and
//! what the machine and the process are.

use std::time::Instant;

use anyhow::{bail, Context};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::report::{pct, BurstRun, ClassifierRun, Machine, OpTime, Run};
use super::Sample;
use crate::cli::BenchArgs;
use crate::cpu;
use crate::encoders::{
    AudioEncoder, Encoders, ItemResult, Modality, TextEncoder, TextRole, Timings, VisionEncoder,
};
use crate::pipeline::worker::{EncoderRef, Worker};
use crate::pipeline::{Body, Event, Purpose, Request};
use crate::types::Ticket;

/// Time `warmup + iterations` calls of `call(batch)` under `executor`.
pub(super) fn measure(
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
pub(super) struct Burst<'a> {
    pub(super) encoder: &'a EncoderRef,
    pub(super) body: &'a Body,
    pub(super) items: usize,
    pub(super) max_batch: usize,
    pub(super) runs_in_flight: usize,
}

impl Burst<'_> {
    /// `warmup + rounds` bursts with `executor` as tract's default (the worker's runs happen on
    /// the blocking pool's threads, as in the daemon), then back to one thread.
    pub(super) fn measure(
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
            machine: Default::default(),
            // The burst's threads are the executor's under test.
            lone: None,
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
pub(super) fn measure_classifier(
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
pub(super) fn model_inputs(
    set: &Encoders,
    m: Modality,
    samples: &[Sample],
) -> anyhow::Result<TVec<TValue>> {
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
pub(super) fn profile_plan(
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

pub(super) fn machine() -> Machine {
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
pub(super) fn peak_rss_bytes() -> u64 {
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
    use crate::stats::rss_bytes;

    #[test]
    fn peak_rss_is_at_least_the_current_rss() {
        let now = rss_bytes();
        assert!(peak_rss_bytes() >= now, "VmHWM below statm RSS");
    }
}
