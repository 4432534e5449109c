#!/usr/bin/env python3
"""Minimal reproductions of the tract kernels that hold edgefuse back (docs/performance.md,
"Upstream reports"), as one would attach them to a tract issue: one-op-family ONNX graphs
with random weights and the real layer shapes, timed in onnxruntime (1 thread) here and in
tract by `cargo run --example kernel_repro -- DIR` (models/kernel_repro.rs), interleaved by
the wrapper `models/kernel_repro`.

  conv3x3.onnx     aiSFX's second convolution: Conv 64->64, 3x3, pad 1, on [1,64,100,96],
                   then Relu (354 M MACs; tract lowers it to Im2col + a GEMM)
  conv3x3_concat.onnx, conv3x3_sum.onnx
                   the same layer without a 3x3 kernel (pad, nine shifted slices, then one 1x1
                   convolution over their concatenation, or nine summed): a load-time rewrite
                   that would route it to tract's plain GEMM, timed against the original
  layernorm.onnx   a decomposed LayerNorm as exported by PyTorch (ReduceMean, Sub, Pow,
                   ReduceMean, Add, Sqrt, Div, Mul, Add) on DINOv2's [1,257,384]
  softmax.onnx     Softmax over the last axis of DINOv2's attention scores [1,6,257,257]
  relu6.onnx       Clip(0, 6) (ReLU6, min/max as constant inputs as PyTorch exports it) on
                   EfficientNet-Lite0's first activation [1,32,112,112]

Usage: kernel_repro.py OUT_DIR [--reps N]   (writes the graphs, prints ORT medians as JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def conv3x3() -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(64, np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 100, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 100, 96])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "x": [1, 64, 100, 96]}


def _conv3x3_rewritten(name: str, summed: bool) -> tuple[onnx.ModelProto, dict]:
    """conv3x3's layer (same weights) without a 3x3 kernel: zero-pad, nine shifted slices, then
    either one 1x1 convolution over their concatenation (an explicit im2col, K = 9 * 64) or nine
    1x1 convolutions summed. A possible load-time workaround, timed against the original."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    h, wd = 100, 96
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"])]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    shifted = []
    for kh in range(3):
        for kw in range(3):
            k = f"{kh}{kw}"
            inits += [numpy_helper.from_array(np.array([kh, kw], np.int64), f"st{k}"),
                      numpy_helper.from_array(np.array([kh + h, kw + wd], np.int64), f"en{k}")]
            nodes.append(helper.make_node("Slice", ["xp", f"st{k}", f"en{k}", "axes"], [f"s{k}"]))
            shifted.append((k, w[:, :, kh, kw]))
    if summed:
        for k, wk in shifted:
            inits.append(numpy_helper.from_array(wk.reshape(64, 64, 1, 1).copy(), f"w{k}"))
            nodes.append(helper.make_node("Conv", [f"s{k}", f"w{k}"], [f"c{k}"]))
        nodes.append(helper.make_node("Sum", [f"c{k}" for k, _ in shifted], ["c"]))
    else:
        nodes.append(helper.make_node("Concat", [f"s{k}" for k, _ in shifted], ["cat"], axis=1))
        wcat = np.concatenate([wk for _, wk in shifted], axis=1).reshape(64, 9 * 64, 1, 1)
        inits.append(numpy_helper.from_array(wcat.astype(np.float32), "wcat"))
        nodes.append(helper.make_node("Conv", ["cat", "wcat"], ["c"]))
    nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, h, wd])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, h, wd])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "x": [1, 64, h, wd]}


def conv3x3_concat() -> tuple[onnx.ModelProto, dict]:
    return _conv3x3_rewritten("conv3x3_concat", summed=False)


def conv3x3_sum() -> tuple[onnx.ModelProto, dict]:
    return _conv3x3_rewritten("conv3x3_sum", summed=True)


def layernorm() -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(1)
    gamma = rng.standard_normal(384).astype(np.float32)
    beta = rng.standard_normal(384).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["s"]),
        helper.make_node("Add", ["s", "beta"], ["y"]),
    ]
    # ReduceMean takes `axes` as an attribute up to opset 17.
    g = helper.make_graph(
        nodes, "layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 257, 384])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 257, 384])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
         numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "x": [1, 257, 384]}


def softmax() -> tuple[onnx.ModelProto, dict]:
    g = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 257, 257])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 257, 257])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "x": [1, 6, 257, 257]}


def relu6() -> tuple[onnx.ModelProto, dict]:
    g = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "relu6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 112, 112])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
         numpy_helper.from_array(np.array(6.0, np.float32), "hi")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "x": [1, 32, 112, 112]}


GRAPHS = {"conv3x3": conv3x3, "conv3x3_concat": conv3x3_concat, "conv3x3_sum": conv3x3_sum,
          "layernorm": layernorm, "softmax": softmax, "relu6": relu6}


def ort_median_ms(path: Path, shapes: dict, reps: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    feed = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    sess.run(None, feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=list(GRAPHS))
    ap.add_argument("--write-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in args.only:
        if name not in GRAPHS:
            print(f"kernel_repro: unknown graph {name} (have {', '.join(GRAPHS)})",
                  file=sys.stderr)
            return 2
        model, shapes = GRAPHS[name]()
        onnx.checker.check_model(model)
        path = args.out / f"{name}.onnx"
        onnx.save(model, path)
        if not args.write_only:
            out[name] = {"ort_1t_ms": ort_median_ms(path, shapes, args.reps),
                         "shape": shapes["x"]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
