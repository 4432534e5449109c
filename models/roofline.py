#!/usr/bin/env python3
"""Work and bytes per model run, counted from the ONNX graphs, and a roofline estimate for ARM
boards. On paper only: nothing here runs a model or times anything.

For every model key of manifest.toml whose file is present (variants included), at the input
sizes edgefuse feeds it (text: 16 and 128 tokens; images 224x224; one 100x96 aiSFX block; the
speech encoder one second of 16 kHz audio; one 36 ms VAD chunk), batch 1:

  MACs            multiply-accumulates of MatMul, MatMulInteger, Gemm, Conv (shapes from ONNX
                  shape inference with data propagation); every other op counts as "element"
                  work (one operation per output element, reported beside, not in the roofline)
  weights stored  bytes of the initializers as the file stores them (int8, f16, f32)
  weights in RAM  bytes as tract 0.23 holds them in edgefuse today: every f16/int8 initializer
                  that is decoded to f32 (`Cast`, `DequantizeLinear`) counts 4 bytes an element
                  (src/encoders/runtime.rs folds those chains at load); the int8 weights of
                  `MatMulInteger` stay int8 (1 byte)
  weights read    the weights a run reads: all but lookup tables (Gather), of which a run
                  reads only the rows it looks up (MiniLM's 30522x384 word table)
                  `weights_in_memory = "q4_0"` variants: 2-D matmul weights at 4.5 bits,
                  lookup tables of 1 Mi values or more as f16
  activations     bytes of every intermediate tensor written once (f32 unless the graph says
                  otherwise); a run reads them back once, so the traffic upper bound is
                  weights + 2 x activations

Roofline, per device (peaks below): compute time = MACs / (MACs per cycle x clock x cores),
memory time = weights read / bandwidth (activations assumed to stay in cache; the JSON also
gives weights + 2 x activations, nothing in cache), estimate = the larger; "bound" says which.
These are lower bounds: tract reaches a fraction of peak (docs/performance.md).

Usage: roofline.py [--models DIR] [--only KEY...] [--json] [--markdown]
Needs onnx and numpy (models/.venv).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Devices. MACs per cycle per core for 128-bit NEON with two FMA-capable vector pipes:
# f32 4 lanes x 2 pipes = 8; f16 (ARMv8.2 FP16 FMLA) 8 x 2 = 16; int8 with SDOT (ARMv8.2
# dotprod) 16 x 2 = 32. Without dotprod (A72), int8 goes through widening SMLAL: 8 lanes of
# i16 -> i32 per instruction, counted as 8 per cycle (no faster than f32).
# Sources: Arm Cortex-A72 Software Optimization Guide (UAN 0016A, §3.15: ASIMD FP multiply-
# accumulate Q-form on pipelines F0/F1); Cortex-A76 Software Optimization Guide (§3.17, FMLA and
# SDOT on V0/V1); Cortex-A78 Software Optimization Guide (same pipes as A76; A78AE is the same
# core with lockstep). Clocks and memory: Raspberry Pi 4 Model B product brief (BCM2711,
# 4x A72 at 1.5 GHz, LPDDR4-3200 32-bit = 12.8 GB/s peak), Raspberry Pi 5 product brief
# (BCM2712, 4x A76 at 2.4 GHz, LPDDR4X-4267 32-bit = 17 GB/s peak), NVIDIA Jetson Orin Nano 8GB
# and Orin NX 16GB data sheets (6x A78AE at 1.5 GHz, 68 GB/s; 8x A78AE at 2.0 GHz, 102 GB/s).
# Sustained bandwidth a CPU sees is well below the DRAM peak: the brief of issue 15 assumes
# ~4 GB/s (Pi 4) and ~10 GB/s (Pi 5); for the Orins we assume 1/3 of the DRAM peak for the CPU
# cluster (not measured: the GPU and accelerators share that memory and are meant to use most
# of it). Change them here if you have measured your board.
# ---------------------------------------------------------------------------------------------
DEVICES = {
    "pi4": {
        "label": "Raspberry Pi 4 (4x Cortex-A72 1.5 GHz, ~4 GB/s)",
        "cores": 4, "ghz": 1.5, "gbps": 4.0,
        "mac_per_cycle": {"f32": 8, "f16": None, "int8": 8},
    },
    "pi5": {
        "label": "Raspberry Pi 5 (4x Cortex-A76 2.4 GHz, ~10 GB/s)",
        "cores": 4, "ghz": 2.4, "gbps": 10.0,
        "mac_per_cycle": {"f32": 8, "f16": 16, "int8": 32},
    },
    "orin-nano": {
        "label": "Jetson Orin Nano 8GB CPU (6x Cortex-A78AE 1.5 GHz, ~23 GB/s assumed)",
        "cores": 6, "ghz": 1.5, "gbps": 68.0 / 3,
        "mac_per_cycle": {"f32": 8, "f16": 16, "int8": 32},
    },
    "orin-nx": {
        "label": "Jetson Orin NX 16GB CPU (8x Cortex-A78AE 2.0 GHz, ~34 GB/s assumed)",
        "cores": 8, "ghz": 2.0, "gbps": 102.4 / 3,
        "mac_per_cycle": {"f32": 8, "f16": 16, "int8": 32},
    },
}

# Concrete sizes for the symbolic input dimensions, per modality (one item).
CASES = {
    "text": [("16 tokens", {"batch": 1, "sequence": 16}),
             ("128 tokens", {"batch": 1, "sequence": 128})],
    "vision": [("224x224", {"batch": 1, "batch_size": 1})],
    "classifier": [("224x224", {"batch": 1})],
    "audio": [("1 block (2.3 s)", {"batch": 1})],
    "speech": [("1 s of audio", {"batch_size": 1, "samples": 16000, "num_samples": 16000})],
    "vad": [("1 chunk (36 ms)", {"chunks": 1, "sequence_length": 1})],
}

MATMUL_OPS = {"MatMul", "MatMulInteger", "Gemm", "Conv", "ConvInteger", "QLinearConv",
              "QLinearMatMul"}
DECODE_OPS = {"Cast", "DequantizeLinear"}
NP_DTYPE = {k: np.dtype(helper.tensor_dtype_to_np_dtype(k)) for k in
            (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
             onnx.TensorProto.UINT8, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
             onnx.TensorProto.BOOL, onnx.TensorProto.DOUBLE)}


class RooflineError(Exception):
    pass


def resolve(models: dict, key: str, seen=()) -> dict:
    """A manifest entry with the keys it inherits through `variant_of`."""
    if key in seen:
        raise RooflineError(f"models.{key}: variant_of loops back ({' -> '.join(seen)})")
    m = models[key]
    base = m.get("variant_of")
    if not base:
        return dict(m)
    out = resolve(models, base, seen + (key,))
    out.update(m)
    return out


def _itemsize(elem_type: int) -> int:
    dt = NP_DTYPE.get(elem_type)
    return dt.itemsize if dt is not None else 4


def _shape(vi) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            return None
    return dims


def fix_inputs(model, sizes: dict) -> None:
    """Replace the symbolic dims of the graph inputs by the sizes of the case."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                if d.dim_param not in sizes:
                    raise RooflineError(f"input {inp.name}: no size for dim `{d.dim_param}`")
                d.dim_value = sizes[d.dim_param]


def shapes_by_running(model, names: list) -> dict:
    """Shapes ONNX shape inference cannot settle (computed Reshape targets, interpolated
    position tables): run the graph once on zeros in onnxruntime with those tensors as extra
    outputs. Only the shapes are used; shapes do not depend on the values in these graphs."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for name in names:
        if name not in known:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {}
    inits = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dt = NP_DTYPE[t.elem_type]
        feed[inp.name] = (np.ones if "mask" in inp.name else np.zeros)(shape, dtype=dt)
    outs = sess.run(names, feed)
    types = {np.dtype(v): k for k, v in NP_DTYPE.items()}
    return {n: (list(v.shape), types.get(v.dtype, onnx.TensorProto.FLOAT))
            for n, v in zip(names, outs)}


def count(path: Path, sizes: dict, q4: bool = False) -> dict:
    model = onnx.load(str(path))
    fix_inputs(model, sizes)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    info = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        info[vi.name] = (_shape(vi), vi.type.tensor_type.elem_type)
    missing = [o for n in g.node for o in n.output if o and info.get(o, (None,))[0] is None]
    if missing:
        info.update(shapes_by_running(model, missing))
    inits = {i.name: i for i in g.initializer}
    for name, t in inits.items():
        info[name] = (list(t.dims), t.data_type)
    # Constant nodes are initializers too.
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    info[n.output[0]] = (list(a.t.dims), a.t.data_type)
                    inits[n.output[0]] = a.t

    producer = {o: n for n in g.node for o in n.output}

    def const_chain_root(name: str, depth: int = 0):
        """The initializer a weight comes from through Cast / DequantizeLinear / Transpose /
        Reshape / Identity (what tract folds or sees as a constant), else None."""
        if name in inits:
            return name
        n = producer.get(name)
        if n is None or depth > 6 or n.op_type not in DECODE_OPS | {"Transpose", "Reshape",
                                                                    "Identity", "Unsqueeze"}:
            return None
        return const_chain_root(n.input[0], depth + 1) if n.input else None

    # Nodes whose inputs are all constant are folded at load (tract does the same).
    const = set(inits)
    for n in g.node:
        if n.op_type == "Constant" or all(i in const for i in n.input if i):
            const.update(n.output)

    macs = {"f32": 0, "int8": 0}
    element_ops = 0
    activation_bytes = 0
    unknown = []
    matmul_weights = {}  # initializer name -> "int8-kept" or "decoded" or "plain"
    for n in g.node:
        if n.output and n.output[0] in const:
            continue
        out_shape, out_dt = info.get(n.output[0], (None, 1)) if n.output else (None, 1)
        if out_shape is None:
            unknown.append(f"{n.op_type}:{n.name or n.output[0]}")
            continue
        numel = int(np.prod(out_shape)) if out_shape else 1
        for o in n.output:
            s, dt = info.get(o, (None, 1))
            if s is not None:
                activation_bytes += int(np.prod(s) if s else 1) * _itemsize(dt)
        if n.op_type in MATMUL_OPS:
            kind = "int8" if n.op_type in {"MatMulInteger", "ConvInteger", "QLinearConv",
                                           "QLinearMatMul"} else "f32"
            a_shape = info.get(n.input[0], (None, 0))[0]
            if n.op_type in {"Conv", "ConvInteger", "QLinearConv"}:
                w_name = n.input[3] if n.op_type == "QLinearConv" else n.input[1]
                w_shape = info.get(w_name, (None, 0))[0]
                if w_shape is None:
                    unknown.append(f"{n.op_type}:{n.name} weight shape")
                    continue
                macs[kind] += numel * int(np.prod(w_shape[1:]))
            elif n.op_type == "Gemm":
                trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
                if a_shape is None:
                    unknown.append(f"Gemm:{n.name} input shape")
                    continue
                k = a_shape[0] if trans_a else a_shape[1]
                macs[kind] += numel * k
                w_name = n.input[1]
            else:
                src = n.input[0]
                a_shape = info.get(src, (None, 0))[0]
                if a_shape is None:
                    unknown.append(f"{n.op_type}:{n.name} input shape")
                    continue
                macs[kind] += numel * a_shape[-1]
                w_name = n.input[1] if n.op_type != "QLinearMatMul" else n.input[3]
            root = const_chain_root(w_name)
            if root is not None:
                matmul_weights[root] = kind
        else:
            element_ops += numel

    # Weight bytes: stored vs as held in memory by edgefuse on tract 0.23 today.
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    by_input = {}
    for n in g.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)

    def only_gathered(name: str, depth: int = 0) -> bool:
        """A lookup table: every use is a Gather (through decoding ops); a run reads only the
        rows it looks up, not the table."""
        uses = by_input.get(name, [])
        if not uses or depth > 4:
            return False
        return all(u.op_type == "Gather" and u.input[0] == name
                   or u.op_type in DECODE_OPS and only_gathered(u.output[0], depth + 1)
                   for u in uses)

    stored = ram = streamed_stored = streamed_ram = 0
    for name, t in inits.items():
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        size = _itemsize(t.data_type)
        decoded = t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                                  onnx.TensorProto.UINT8) and any(
            c in DECODE_OPS for c in consumers.get(name, []))
        in_ram = 4 if decoded else size
        if q4 and matmul_weights.get(name) == "f32" and len(t.dims) == 2:
            in_ram = 4.5 / 8  # Q4_0: 32 weights in 16 bytes + an f16 scale
        elif q4 and only_gathered(name) and numel >= 1 << 20:
            in_ram = 2  # lookup tables held as f16
        stored += numel * size
        ram += int(numel * in_ram)
        if not only_gathered(name):
            streamed_stored += numel * size
            streamed_ram += int(numel * in_ram)
    return {
        "weights_streamed_stored": streamed_stored,
        "weights_streamed_ram": streamed_ram,
        "macs_f32": macs["f32"],
        "macs_int8": macs["int8"],
        "element_ops": element_ops,
        "weights_stored": stored,
        "weights_ram": ram,
        "activations": activation_bytes,
        "unknown": unknown,
    }


def precision(spec: dict, c: dict) -> str:
    if c["macs_int8"] > c["macs_f32"]:
        return "int8"
    return "f32"


def roofline(c: dict, dev: dict, compute: str, weights_bytes: int, cores: int) -> dict:
    per_cycle = dev["mac_per_cycle"].get(compute)
    if per_cycle is None:
        return {}
    macs = c["macs_f32"] + c["macs_int8"]
    t_compute = macs / (per_cycle * dev["ghz"] * 1e9 * cores)
    bw = dev["gbps"] * 1e9
    t_mem_lo = weights_bytes / bw
    t_mem_hi = (weights_bytes + 2 * c["activations"]) / bw
    return {
        "compute_ms": t_compute * 1e3,
        "mem_weights_ms": t_mem_lo * 1e3,
        "mem_all_ms": t_mem_hi * 1e3,
        "estimate_ms": max(t_compute, t_mem_lo) * 1e3,
        "bound": "compute" if t_compute >= t_mem_lo else "memory",
        "intensity": macs * 2 / max(weights_bytes + 2 * c["activations"], 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=HERE)
    ap.add_argument("--only", nargs="*", help="manifest keys (default: every model present)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--markdown", action="store_true", help="the tables of docs/arm.md")
    args = ap.parse_args()
    manifest_path = args.models / "manifest.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"roofline: cannot read {manifest_path}: {e}", file=sys.stderr)
        return 2
    models = manifest.get("models", {})
    keys = args.only or list(models)
    rows = []
    for key in keys:
        if key not in models:
            print(f"roofline: no models.{key} in {manifest_path}", file=sys.stderr)
            return 2
        spec = resolve(models, key)
        if spec.get("format", "onnx") != "onnx":
            continue
        path = args.models / spec["file"]
        if not path.exists():
            print(f"roofline: {key}: {path} not present, skipped", file=sys.stderr)
            continue
        if spec.get("modality") == "text" and key == "text-multilingual":
            cases = CASES["text"]
        else:
            cases = CASES.get(spec.get("modality", ""), [])
        crop = spec.get("preprocess", {}).get("crop")
        for label, sizes in cases:
            if crop and label == "224x224":  # the image size this variant is fed
                label = f"{crop}x{crop}"
            try:
                c = count(path, sizes, q4=spec.get("weights_in_memory") == "q4_0")
            except (RooflineError, onnx.onnx_cpp2py_export.shape_inference.InferenceError) as e:
                print(f"roofline: {key} ({label}): {e}", file=sys.stderr)
                continue
            c.update(key=key, case=label, quantization=spec.get("quantization", "fp32"),
                     compute=precision(spec, c))
            c["devices"] = {}
            for dname, dev in DEVICES.items():
                r = {}
                for cores in (1, dev["cores"]):
                    r[f"today_{cores}c"] = roofline(c, dev, c["compute"],
                                                   c["weights_streamed_ram"], cores)
                    # Weights kept as stored (int8/f16 in RAM); f16 storage computed in f16
                    # where the core has FP16 arithmetic.
                    comp = c["compute"]
                    if "f16" in c["quantization"] and dev["mac_per_cycle"]["f16"]:
                        comp = "f16"
                    r[f"kept_{cores}c"] = roofline(c, dev, comp, c["weights_streamed_stored"],
                                                  cores)
                c["devices"][dname] = r
            rows.append(c)
            if c["unknown"]:
                print(f"roofline: {key} ({label}): {len(c['unknown'])} nodes without a shape "
                      f"(not counted): {', '.join(c['unknown'][:5])}", file=sys.stderr)
    if args.json:
        json.dump({"devices": DEVICES, "rows": rows}, sys.stdout, indent=1)
        print()
        return 0
    print_tables(rows)
    return 0


def _mb(b: int) -> str:
    return f"{b / 1e6:.1f}"


def print_tables(rows: list) -> None:
    print("| model | input | computes in | GMAC | element Mops | weights stored MB | weights in "
          "RAM today MB | weights read per run, today MB | activations MB | FLOP/byte |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in rows:
        macs = c["macs_f32"] + c["macs_int8"]
        inten = macs * 2 / max(c["weights_streamed_ram"] + 2 * c["activations"], 1)
        print(f"| `{c['key']}` | {c['case']} | {c['compute']} | {macs / 1e9:.3f} | "
              f"{c['element_ops'] / 1e6:.1f} | {_mb(c['weights_stored'])} | "
              f"{_mb(c['weights_ram'])} | {_mb(c['weights_streamed_ram'])} | "
              f"{_mb(c['activations'])} | {inten:.1f} |")
    for dname, dev in DEVICES.items():
        n = dev["cores"]
        print()
        print(f"**{dev['label']}**, ms per item. *today*: weights as edgefuse holds them now "
              f"(decoded to f32); *kept*: weights as stored (int8/f16), f16 variants computing "
              f"in f16 where the core can.")
        print()
        print(f"| model | input | compute, 1 core | compute, {n} cores | weight reads, today | "
              f"weight reads, kept | estimate 1 core, today | estimate {n} cores, today | "
              f"estimate {n} cores, kept | bound at {n} cores today |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for c in rows:
            r1 = c["devices"][dname]["today_1c"]
            rn = c["devices"][dname][f"today_{n}c"]
            kn = c["devices"][dname][f"kept_{n}c"]
            if not r1:
                continue
            print(f"| `{c['key']}` | {c['case']} | {r1['compute_ms']:.1f} | "
                  f"{rn['compute_ms']:.1f} | {rn['mem_weights_ms']:.1f} | "
                  f"{kn['mem_weights_ms']:.1f} | {r1['estimate_ms']:.1f} | "
                  f"{rn['estimate_ms']:.1f} | {kn['estimate_ms']:.1f} | {rn['bound']} |")


if __name__ == "__main__":
    sys.exit(main())
