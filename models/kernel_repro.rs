//! tract side of the kernel reproductions of models/kernel_repro.py: loads each one-op-family
//! ONNX graph with a concrete input fact, optimises it, and prints the median run time and the
//! time per op type of the optimised plan (one thread), as JSON, plus the optimised nodes.
//!
//! `cargo run --example kernel_repro -- DIR [REPS]` after `models/kernel_repro.py DIR`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use tract_onnx::prelude::*;

const GRAPHS: [(&str, &[usize]); 6] = [
    ("conv3x3", &[1, 64, 100, 96]),
    ("conv3x3_concat", &[1, 64, 100, 96]),
    ("conv3x3_sum", &[1, 64, 100, 96]),
    ("layernorm", &[1, 257, 384]),
    ("softmax", &[1, 6, 257, 257]),
    ("relu6", &[1, 32, 112, 112]),
];

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().context("usage: kernel_repro DIR [REPS]")?);
    let reps: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20);
    let mut report = serde_json::Map::new();
    for (name, shape) in GRAPHS {
        let path = dir.join(format!("{name}.onnx"));
        let model = tract_onnx::onnx()
            .model_for_path(&path)
            .with_context(|| format!("{}", path.display()))?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()?;
        let nodes: Vec<String> = model
            .eval_order()?
            .iter()
            .map(|&id| {
                let n = model.node(id);
                format!("{} ({})", n.op().name(), n.name)
            })
            .collect();
        let plan = model.into_runnable()?;
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i * 7 % 17) as f32 - 8.0) / 8.0).collect();
        let input = Tensor::from_shape(shape, &data)?;
        let mut state = TypedSimpleState::new(&plan)?;
        state.run(tvec![input.clone().into()])?;
        let mut times = Vec::with_capacity(reps);
        let mut per_op: BTreeMap<String, f64> = BTreeMap::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            state.run(tvec![input.clone().into()])?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            state.run_plan_with_eval(tvec![input.clone().into()], |s, st, node, inp| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(s, st, node, inp);
                *per_op.entry(node.op().name().to_string()).or_default() +=
                    t.elapsed().as_secs_f64() * 1e3;
                r
            })?;
        }
        times.sort_by(f64::total_cmp);
        let ops: serde_json::Map<String, serde_json::Value> = per_op
            .into_iter()
            .map(|(k, v)| (k, serde_json::json!(v / reps as f64)))
            .collect();
        report.insert(
            name.to_owned(),
            serde_json::json!({
                "tract_1t_ms": times[times.len() / 2],
                "ops_ms": ops,
                "plan": nodes,
            }),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}
