//! Probe behind docs/performance.md ("Upstream reports", direct 3x3 convolutions): aiSFX with
//! its 3x3 convolutions (those with at most MAXK inputs per output point) replaced at load by a
//! direct convolution, against tract's own choice (im2col + GEMM), interleaved, with a per-op
//! profile of both plans. The direct convolution is either tract 0.23.9's `DirectSpatialConv`
//! built for each input shape at run time (`PROBE_TRACT_DIRECT=1`; tract itself only picks it
//! for a concrete shape with rows of at least 128 points) or a register-blocked AVX2 kernel
//! written here (4 output channels x 24 points, padded rows, no im2col). `PROBE_BOUND=1` instead
//! compares tract's plan with the batch axis bound to 1 (lazy im2col; run it at N=1 only).
//! Not part of the daemon:
//! neither was faster (the measured answer is in the docs).
//!
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run --example conv_probe -- models/audio/aisfx.onnx 1,4 7 [MAXK]`

use std::time::Instant;

use anyhow::{Context, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, DirectSpatialConv};
use tract_onnx::tract_core::ops::cnn::PaddingSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
struct AnyShapeDirectConv {
    conv: Conv,
}

impl Op for AnyShapeDirectConv {
    fn name(&self) -> StaticName {
        "AnyShapeDirectConv".into()
    }
    fn validation(&self) -> Validation {
        Validation::Rounding
    }
    op_as_typed_op!();
}

impl EvalOp for AnyShapeDirectConv {
    op_out_of_plan!();
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if std::env::var("PROBE_TRACT_DIRECT").is_ok() {
            let (x, k, b) = args_3!(inputs);
            let shape: TVec<usize> = x.shape().into();
            let sym: ShapeFact = ShapeFact::from_dims(shape.iter().map(|d| d.to_dim()));
            let geo = self.conv.pool_spec.compute_geo(&sym)?;
            let c = geo.to_concrete(&shape)?.into_owned();
            let oc = self.conv.pool_spec.output_channels;
            let b = if b.len() == oc {
                b
            } else {
                let v = *b
                    .to_plain_array_view::<f32>()?
                    .iter()
                    .next()
                    .context("bias")?;
                tensor1(&vec![v; oc]).into_tvalue()
            };
            let op = DirectSpatialConv::new(c.patch, c.input_shape, c.output_shape);
            return EvalOp::eval(&op, ctx, tvec![x, k, b]);
        }
        let (x, k, b) = args_3!(inputs);
        let oc = self.conv.pool_spec.output_channels;
        let bias: Vec<f32> = if b.len() == oc {
            b.to_plain_array_view::<f32>()?.iter().copied().collect()
        } else {
            vec![
                *b.to_plain_array_view::<f32>()?
                    .iter()
                    .next()
                    .context("bias")?;
                oc
            ]
        };
        let k = k.to_plain_array_view::<f32>()?;
        let k: Vec<f32> = k.iter().copied().collect();
        let x = x.to_plain_array_view::<f32>()?;
        let sh = x.shape().to_vec();
        let (n, ci, h, w) = (sh[0], sh[1], sh[2], sh[3]);
        let x: Vec<f32> = x.iter().copied().collect();
        let mut y = vec![0f32; n * oc * h * w];
        for i in 0..n {
            let xi = &x[i * ci * h * w..][..ci * h * w];
            conv3x3(
                xi,
                &k,
                &bias,
                [ci, oc, h, w],
                &mut y[i * oc * h * w..][..oc * h * w],
            );
        }
        Ok(tvec![Tensor::from_shape(&[n, oc, h, w], &y)?.into_tvalue()])
    }
}

const CB: usize = 4;
const QB: usize = 24;

/// A 3x3, stride 1, pad 1 convolution of one item: rows padded to W + 2 so every tap is one
/// contiguous read, outputs computed over the padded rows and the two pad columns dropped.
fn conv3x3(x: &[f32], k: &[f32], bias: &[f32], [ci, co, h, w]: [usize; 4], y: &mut [f32]) {
    let wp = w + 2;
    let p = (h + 2) * wp;
    let l = h * wp;
    let tiles = l.div_ceil(QB);
    let plane = p + QB + 2 * wp + 2;
    // padded input, slack at the end for the last tile
    let mut xp = vec![0f32; ci * plane];
    for c in 0..ci {
        for r in 0..h {
            xp[c * plane + (r + 1) * wp + 1..][..w].copy_from_slice(&x[c * h * w + r * w..][..w]);
        }
    }
    let offs: Vec<usize> = (0..ci * 9)
        .map(|t| (t / 9) * plane + (t % 9 / 3) * wp + t % 3)
        .collect();
    let blocks = co.div_ceil(CB);
    // weights packed [block][tap][CB]
    let mut wk = vec![0f32; blocks * ci * 9 * CB];
    for o in 0..co {
        for t in 0..ci * 9 {
            wk[(o / CB) * ci * 9 * CB + t * CB + o % CB] = k[o * ci * 9 + t];
        }
    }
    let mut out = vec![0f32; blocks * CB * tiles * QB];
    for b in 0..blocks {
        let wb = &wk[b * ci * 9 * CB..][..ci * 9 * CB];
        for tq in 0..tiles {
            let q0 = tq * QB;
            let acc = tile_dispatch(&xp, &offs, wb, q0);
            for c in 0..CB {
                out[(b * CB + c) * tiles * QB + q0..][..QB].copy_from_slice(&acc[c]);
            }
        }
    }
    for o in 0..co {
        for r in 0..h {
            for cc in 0..w {
                y[o * h * w + r * w + cc] = out[o * tiles * QB + r * wp + cc] + bias[o];
            }
        }
    }
}

/// One tile: CB output channels x QB points from `q0`, every tap.
fn tile_dispatch(xp: &[f32], offs: &[usize], wb: &[f32], q0: usize) -> [[f32; QB]; CB] {
    let mut acc = [[0f32; QB]; CB];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // Safety: xp holds QB points of slack past every tap's last read (conv3x3 sizes it).
        unsafe { tile_avx2(xp.as_ptr().add(q0), offs, wb.as_ptr(), &mut acc) };
        return acc;
    }
    for (t, off) in offs.iter().enumerate() {
        for (c, row) in acc.iter_mut().enumerate() {
            for (j, a) in row.iter_mut().enumerate() {
                *a += wb[t * CB + c] * xp[off + q0 + j];
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(x: *const f32, offs: &[usize], w: *const f32, out: &mut [[f32; QB]; CB]) {
    use std::arch::x86_64::*;
    unsafe {
        let z = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a02) = (z, z, z);
        let (mut a10, mut a11, mut a12) = (z, z, z);
        let (mut a20, mut a21, mut a22) = (z, z, z);
        let (mut a30, mut a31, mut a32) = (z, z, z);
        // Unrolled by hand: the twelve accumulators must stay in registers.
        for (t, &off) in offs.iter().enumerate() {
            let p = x.add(off);
            let x0 = _mm256_loadu_ps(p);
            let x1 = _mm256_loadu_ps(p.add(8));
            let x2 = _mm256_loadu_ps(p.add(16));
            let wt = w.add(t * CB);
            let w0 = _mm256_broadcast_ss(&*wt);
            a00 = _mm256_fmadd_ps(w0, x0, a00);
            a01 = _mm256_fmadd_ps(w0, x1, a01);
            a02 = _mm256_fmadd_ps(w0, x2, a02);
            let w1 = _mm256_broadcast_ss(&*wt.add(1));
            a10 = _mm256_fmadd_ps(w1, x0, a10);
            a11 = _mm256_fmadd_ps(w1, x1, a11);
            a12 = _mm256_fmadd_ps(w1, x2, a12);
            let w2 = _mm256_broadcast_ss(&*wt.add(2));
            a20 = _mm256_fmadd_ps(w2, x0, a20);
            a21 = _mm256_fmadd_ps(w2, x1, a21);
            a22 = _mm256_fmadd_ps(w2, x2, a22);
            let w3 = _mm256_broadcast_ss(&*wt.add(3));
            a30 = _mm256_fmadd_ps(w3, x0, a30);
            a31 = _mm256_fmadd_ps(w3, x1, a31);
            a32 = _mm256_fmadd_ps(w3, x2, a32);
        }
        let o = out.as_mut_ptr() as *mut f32;
        let all = [a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32];
        for (i, v) in all.into_iter().enumerate() {
            _mm256_storeu_ps(o.add(i * 8), v);
        }
    }
}

impl TypedOp for AnyShapeDirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.conv.output_facts(inputs)
    }
    as_op!();
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: conv_probe MODEL N[,N] REPS [MAXK]")?;
    let ns: Vec<usize> = args
        .next()
        .unwrap_or("1".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let reps: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(10);
    let max_k: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(576);
    let typed = tract_onnx::onnx()
        .model_for_path(&path)?
        .into_typed()?
        .into_decluttered()?;
    let mut direct = typed.clone();
    let mut replaced = 0;
    for id in 0..direct.nodes().len() {
        let node = &direct.nodes()[id];
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let kvol: usize = conv.pool_spec.kernel_shape.iter().product();
        let ok = conv.group == 1
            && conv.q_params.is_none()
            && conv.pool_spec.rank() == 2
            && conv.pool_spec.input_channels * kvol <= max_k
            && conv.pool_spec.output_channels % 4 == 0
            && conv.pool_spec.kernel_shape.as_slice() == [3, 3]
            && conv.pool_spec.strides().iter().all(|s| *s == 1)
            && conv.pool_spec.dilations().iter().all(|d| *d == 1)
            && conv.pool_spec.padding == PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
        eprintln!(
            "{}: {}->{} k{:?} ok={ok}",
            node.name,
            conv.pool_spec.input_channels,
            conv.pool_spec.output_channels,
            conv.pool_spec.kernel_shape
        );
        if ok {
            let op = AnyShapeDirectConv { conv: conv.clone() };
            direct.node_mut(id).op = Box::new(op);
            replaced += 1;
        }
    }
    eprintln!("replaced {replaced}");
    let base = typed.clone().into_optimized()?.into_runnable()?;
    let direct = if std::env::var("PROBE_BOUND").is_ok() {
        let mut subs = std::collections::HashMap::new();
        subs.insert(typed.symbols.sym("batch"), 1.to_dim());
        typed.set_symbols(&subs)?
    } else {
        direct
    };
    let direct = direct.into_optimized()?.into_runnable()?;
    for n in ns {
        let shape = [n, 100, 96];
        let len: usize = shape.iter().product();
        let data: Vec<f32> = (0..len)
            .map(|i| ((i * 7919 % 1013) as f32) / 200.0 - 2.0)
            .collect();
        let input = Tensor::from_shape(&shape, &data)?;
        let a = base.run(tvec![input.clone().into()])?;
        let b = direct.run(tvec![input.clone().into()])?;
        let (a, b) = (
            a[0].to_plain_array_view::<f32>()?,
            b[0].to_plain_array_view::<f32>()?,
        );
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let mut tb = vec![];
        let mut td = vec![];
        for _ in 0..reps {
            let t = Instant::now();
            base.run(tvec![input.clone().into()])?;
            tb.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            direct.run(tvec![input.clone().into()])?;
            td.push(t.elapsed().as_secs_f64() * 1e3);
        }
        tb.sort_by(f64::total_cmp);
        td.sort_by(f64::total_cmp);
        let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        println!("norm {norm} shape {:?}", a.shape());
        for (label, plan) in [("base", &base), ("direct", &direct)] {
            let mut state = TypedSimpleState::new(plan)?;
            let mut per: Vec<(String, f64)> = vec![];
            for _ in 0..3 {
                state.run_plan_with_eval(tvec![input.clone().into()], |s, st, node, inp| {
                    let t = Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(s, st, node, inp);
                    let name = format!("{} {}", node.op().name(), node.name);
                    let e = t.elapsed().as_secs_f64() * 1e3 / 3.0;
                    match per.iter_mut().find(|(k, _)| *k == name) {
                        Some(x) => x.1 += e,
                        None => per.push((name, e)),
                    }
                    r
                })?;
            }
            per.retain(|(_, t)| *t > 1.0);
            println!("{label}: {per:?}");
        }
        println!(
            "N={n}: base {:.1} ms, direct {:.1} ms, ratio {:.2}, max |diff| {diff:.2e}",
            tb[reps / 2],
            td[reps / 2],
            td[reps / 2] / tb[reps / 2]
        );
    }
    Ok(())
}
