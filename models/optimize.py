#!/usr/bin/env python3
"""Write the compressed variants named in manifest.toml beside their originals.

A manifest model with `variant_of = "KEY"` and an `optimize = { method = ..., ... }` table is
produced here from the model KEY (itself possibly a variant). Methods:

  int8-dynamic    onnxruntime quantize_dynamic, per-channel int8 MatMul/Gemm weights
                  (MatMulInteger; activations quantized at run time)
  int8-weights    weight-only int8: per-channel symmetric int8 initializers + DequantizeLinear
                  (tract folds them back to f32 at load: 4x smaller file, fp32 speed)
  int8-static     static QDQ for convolutions: activation ranges calibrated on generated sounds,
                  per-channel int8 weights, uint8 activations
  f16             f16 initializers + Cast (2x smaller file)
  prune-bert      MiniLM: drop FFN neurons and attention heads ranked by importance on
                  calibration sentences, then refit each pruned layer's output projection by
                  ridge least squares against the unpruned teacher (layer-wise distillation)
  prune-cnn       aiSFX: drop the inner channels of each conv block (conv1 outputs) ranked by
                  importance on calibration sounds, refit conv2 by least squares
  vit-resize      DINOv2 at a lower input `size` (fewer patch tokens): the position table
                  resampled bicubic to the new grid once (as the graph does at run time),
                  baked as a constant, input shape fixed; preprocess crop set to match
  vit-token-prune DINOv2: after an early block keep the class token and the `keep` patch tokens
                  it attends to most (TopK + GatherElements in the graph); optionally the last
                  block for the class token only (`cls_last`, exact). No weight changes

Only standard ONNX ops are written (tract 0.23 does not run Microsoft contrib ops). The output
must hash to the manifest's sha256 (deterministic: fixed seeds, float64 fits, weights rounded to
a grid). Calibration inputs are generated here (sentences below, synthetic sounds); the
evaluation inputs in tests/ and docs/models.md are different ones.

Usage: optimize.py [--out DIR] [--only KEY...] [--check] [--update-manifest]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from convert import (  # noqa: E402
    PRODUCER, ConvertError, log, set_manifest_sha, sha256_bytes, sha256_file, write_atomic)

np = onnx = helper = numpy_helper = TensorProto = None


def _import_heavy() -> None:
    global np, onnx, helper, numpy_helper, TensorProto
    # One BLAS thread: reductions in a fixed order (same bytes every run), and no spinning
    # threads fighting for a small shared CPU.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import numpy as np  # noqa: F811
    import onnx  # noqa: F811
    from onnx import TensorProto, helper, numpy_helper  # noqa: F811


# ---------------------------------------------------------------------------------------------
# Manifest: a variant inherits every key of the model it derives from unless it sets it.
# ---------------------------------------------------------------------------------------------
def resolve(models: dict, key: str, seen=()) -> dict:
    cfg = models[key]
    base = cfg.get("variant_of")
    if not base:
        return dict(cfg)
    if base in seen or base not in models:
        raise ConvertError(f"models.{key}.variant_of = {base!r}: unknown or cyclic")
    merged = resolve(models, base, seen + (key,))
    merged.update(cfg)
    return merged


def finish(m) -> bytes:
    """Fixed producer fields, checked, serialized: byte-identical run to run."""
    m.producer_name, m.producer_version = PRODUCER
    onnx.checker.check_model(m)
    return m.SerializeToString()


def round_grid(w, bits: int = 14):
    """Round to `bits` mantissa bits, so float64 noise from another BLAS rarely changes a byte."""
    w = np.asarray(w, np.float64)
    m, e = np.frexp(w)
    return np.ldexp(np.round(m * (1 << bits)) / (1 << bits), e).astype(np.float32)


def inits(m) -> dict:
    return {i.name: i for i in m.graph.initializer}


def set_init(m, name: str, array) -> None:
    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array),
                                                                   name))
            return
    m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))


# ---------------------------------------------------------------------------------------------
# f16 and weight-only int8 (graph rewrites of constant initializers)
# ---------------------------------------------------------------------------------------------
MIN_ELEMS = 1024  # small vectors (biases, norms) stay f32: no size to gain, precision to lose


def _weight_consumers(m) -> dict:
    """initializer name -> [(node, input index)]"""
    uses: dict = {}
    for n in m.graph.node:
        for ix, name in enumerate(n.input):
            uses.setdefault(name, []).append((n, ix))
    return uses


def to_f16(src: bytes, opts: dict) -> bytes:
    m = onnx.load_from_string(src)
    new_nodes = []
    for t in list(m.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32 or a.size < MIN_ELEMS:
            continue
        half = t.name + ".f16"
        set_init(m, t.name, np.zeros(0, np.float32))  # placeholder, removed below
        m.graph.initializer.append(numpy_helper.from_array(a.astype(np.float16), half))
        new_nodes.append(helper.make_node("Cast", [half], [t.name], name=t.name + "/cast",
                                          to=TensorProto.FLOAT))
    _drop_replaced(m, {n.output[0] for n in new_nodes})
    _prepend_nodes(m, new_nodes)
    return finish(m)


def to_int8_weights(src: bytes, opts: dict) -> bytes:
    """Per-channel symmetric int8 of every large float weight, dequantized in the graph."""
    m = onnx.load_from_string(src)
    uses = _weight_consumers(m)
    new_nodes = []
    for t in list(m.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32 or a.size < MIN_ELEMS or a.ndim < 2:
            continue
        ops = {n.op_type for n, _ in uses.get(t.name, [])}
        # The channel axis: output features of a MatMul weight [K, N] are the columns; a Gather
        # table [V, D] and a Conv kernel [O, I, kh, kw] are per row / output channel.
        if ops <= {"MatMul"} and a.ndim == 2:
            axis = 1
        elif ops <= {"Gather", "Conv"}:
            axis = 0
        else:
            continue
        red = tuple(i for i in range(a.ndim) if i != axis)
        amax = np.max(np.abs(a.astype(np.float64)), axis=red)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = -1
        q = np.clip(np.round(a.astype(np.float64) / scale.reshape(shape)), -127, 127)
        set_init(m, t.name, np.zeros(0, np.float32))
        m.graph.initializer.append(numpy_helper.from_array(q.astype(np.int8), t.name + ".q"))
        m.graph.initializer.append(numpy_helper.from_array(scale, t.name + ".scale"))
        m.graph.initializer.append(
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), t.name + ".zp"))
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [t.name + ".q", t.name + ".scale", t.name + ".zp"], [t.name],
            name=t.name + "/dq", axis=axis))
    _drop_replaced(m, {n.output[0] for n in new_nodes})
    _prepend_nodes(m, new_nodes)
    return finish(m)


def _drop_replaced(m, names: set) -> None:
    keep = [t for t in m.graph.initializer if t.name not in names]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)


def _prepend_nodes(m, nodes: list) -> None:
    rest = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + rest)


# ---------------------------------------------------------------------------------------------
# int8 dynamic: onnxruntime's quantizer (MatMulInteger, standard ops only)
# ---------------------------------------------------------------------------------------------
def to_int8_dynamic(src: bytes, opts: dict) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        fin, fout = Path(d) / "in.onnx", Path(d) / "out.onnx"
        fin.write_bytes(src)
        quantize_dynamic(fin, fout, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
        m = onnx.load(fout)
    ops = {n.domain for n in m.graph.node} - {"", "ai.onnx"}
    if ops:
        raise ConvertError(f"int8-dynamic produced non-standard op domains {ops}")
    return finish(m)


# ---------------------------------------------------------------------------------------------
# Calibration inputs (distinct from the evaluation fixtures in tests/)
# ---------------------------------------------------------------------------------------------
CALIB_SENTENCES = [
    "Turn off the lights in the kitchen when you leave.",
    "The train to the airport leaves every twenty minutes.",
    "She planted tomatoes and basil along the south fence.",
    "Our router keeps dropping the connection after midnight.",
    "Please send me the invoice for last month's repairs.",
    "The museum opens late on Thursdays during the summer.",
    "A heavy storm knocked down power lines across the valley.",
    "He practised the violin for two hours before dinner.",
    "The battery level of the sensor is below ten percent.",
    "Children were building a sandcastle near the pier.",
    "What time does the pharmacy close on Sundays?",
    "The recipe calls for three eggs and a cup of flour.",
    "Traffic on the bridge is moving slowly because of an accident.",
    "My laptop fan gets loud whenever I compile large projects.",
    "The committee approved the new budget after a long debate.",
    "A fox crossed the road just before sunrise.",
    "Remember to water the plants while I am away.",
    "The camera detected motion at the back door at 3 a.m.",
    "Stock prices fell sharply after the announcement.",
    "We hiked to the waterfall and had lunch by the river.",
    "The printer on the second floor is out of toner again.",
    "Can you recommend a good book about the history of Rome?",
    "The doctor advised him to rest and drink plenty of fluids.",
    "Firmware version 2.4 fixes the overheating problem.",
    "The orchestra tuned their instruments before the concert.",
    "A dog was barking loudly in the neighbour's garden.",
    "Our flight was delayed by three hours due to fog.",
    "The thermostat is set to twenty-one degrees at night.",
    "She solved the puzzle faster than anyone else in class.",
    "The bakery sells fresh bread every morning at seven.",
    "Wind turbines turned slowly on the hills above the town.",
    "I need to renew my passport before the trip.",
    "The server logs show repeated failed login attempts.",
    "Two cyclists raced down the mountain road.",
    "The soup tastes better with a pinch of salt and pepper.",
    "Rain is expected to continue throughout the weekend.",
    "The library extended its opening hours for exam season.",
    "He fixed the leaking tap with a new rubber washer.",
    "The football match ended in a draw after extra time.",
    "Birds gathered on the wire as the evening grew cold.",
    "Where can I find the nearest charging station for my car?",
    "The software update installed itself without asking.",
    "A gentle breeze carried the smell of the sea.",
    "The students presented their robotics project to the judges.",
    "Our water bill doubled after the pipe burst.",
    "The artist painted the harbour at dawn.",
    "Is this jacket available in a larger size?",
    "The elevator is out of service until Monday.",
    "The baby finally fell asleep after a long walk.",
    "Scientists measured the temperature of the glacier every hour.",
]
_SUBJ = ["The neighbour", "A small robot", "My grandmother", "The night guard", "Our teacher",
         "A delivery driver", "The old farmer", "The young engineer", "A tourist", "The chef",
         "The pilot", "A nurse", "The shop owner", "The musician", "A student"]
_VERB = ["repaired", "photographed", "carried", "painted", "described", "cleaned", "measured",
         "sold", "found", "ordered", "opened", "tested", "moved", "inspected", "borrowed"]
_OBJ = ["a broken bicycle", "the garden gate", "an old map", "the kitchen window",
        "a box of apples", "the wooden boat", "a noisy washing machine", "the blue car",
        "a stack of letters", "the solar panel", "a leather bag", "the stone wall",
        "a cracked mirror", "the front door lock", "a basket of bread"]
_WHEN = ["yesterday afternoon", "before the rain started", "after breakfast", "late at night",
         "during the holidays", "on a cold morning", "while the radio played", "last spring",
         "in a hurry", "with great care"]


def docstring_sentences(limit: int) -> list[str]:
    """Prose sentences from numpy's own docstrings: varied wording, fixed by the pinned numpy."""
    import re

    seen, out = set(), []
    for name in sorted(dir(np)):
        doc = getattr(getattr(np, name, None), "__doc__", None)
        if not isinstance(doc, str):
            continue
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            for sent in re.split(r"(?<=[.!?])\s+", text):
                words = sent.split()
                if (6 <= len(words) <= 40 and sent[0].isupper() and sent.endswith(".")
                        and not re.search(r"[>=_\[\]{}()`|*]", sent) and sent not in seen):
                    seen.add(sent)
                    out.append(sent)
                    if len(out) >= limit:
                        return out
    return out


def calibration_sentences(n_generated: int = 350, n_docs: int = 0) -> list[str]:
    rng = np.random.default_rng(20240601)
    out = list(CALIB_SENTENCES) + docstring_sentences(n_docs)
    for _ in range(n_generated):
        s, v, o, w = (int(rng.integers(len(x))) for x in (_SUBJ, _VERB, _OBJ, _WHEN))
        out.append(f"{_SUBJ[s]} {_VERB[v]} {_OBJ[o]} {_WHEN[w]}.")
    return out


def calibration_audio_blocks(pre: dict, n: int) -> np.ndarray:
    """Synthetic 2.3 s sounds (tones, chirps, coloured noise, clicks, buzzy vowels), through the
    aiSFX front end. No speech or recorded sound: the evaluation set is espeak-ng and sox."""
    rng = np.random.default_rng(7)
    sr = int(pre["sample_rate"])
    hop = int(pre["hop_length"])
    frames = int(pre["block_frames"])
    length = (frames - 1) * hop
    t = np.arange(length) / sr
    mel_w = _mel_filterbank(pre)
    blocks = []
    for i in range(n):
        kind = i % 6
        if kind == 0:  # harmonic tone with vibrato
            f0 = 80 * 2 ** rng.uniform(0, 4)
            ph = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / sr
            y = sum(np.sin(k * ph) / k for k in range(1, 8))
        elif kind == 1:  # chirp
            f0, f1 = 100 * 2 ** rng.uniform(0, 5, 2)
            y = np.sin(2 * np.pi * np.cumsum(np.geomspace(f0, f1, length)) / sr)
        elif kind == 2:  # coloured noise
            spec = np.fft.rfft(rng.standard_normal(length))
            f = np.fft.rfftfreq(length, 1 / sr) + 1
            y = np.fft.irfft(spec * f ** (-rng.uniform(0, 1.5)), length)
        elif kind == 3:  # clicks / impacts
            y = np.zeros(length)
            for p in rng.integers(0, length - 2000, rng.integers(3, 20)):
                y[p:p + 2000] += rng.standard_normal(2000) * np.exp(-np.arange(2000) / 200)
        elif kind == 4:  # buzz through two formants (vowel-like)
            f0 = rng.uniform(90, 250)
            y = np.sign(np.sin(2 * np.pi * f0 * t))
            spec = np.fft.rfft(y)
            f = np.fft.rfftfreq(length, 1 / sr)
            g = sum(np.exp(-0.5 * ((f - fc) / 120) ** 2) for fc in rng.uniform(300, 3000, 2))
            y = np.fft.irfft(spec * (g + 0.01), length)
        else:  # amplitude-modulated noise bursts over a tone
            env = (np.sin(2 * np.pi * rng.uniform(0.5, 4) * t) > 0).astype(float)
            y = env * rng.standard_normal(length) * 0.3 + np.sin(2 * np.pi * 440 * t) * 0.2
        y = y * rng.uniform(0.05, 1.0)
        blocks.append(_log_mel_block(y, pre, mel_w)[:frames])
    return np.stack(blocks).astype(np.float32)


def _mel_filterbank(pre: dict) -> np.ndarray:
    """librosa filters.mel(htk=True, norm=1) as in tests/golden/make_reference.py."""
    sr, n_fft, n_mels = float(pre["sample_rate"]), int(pre["n_fft"]), int(pre["n_mels"])
    htk = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
    ihtk = lambda m: 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)  # noqa: E731
    fft = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = ihtk(np.linspace(htk(pre["f_min"]), htk(pre["f_max"]), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft)
    w = np.zeros((n_mels, 1 + n_fft // 2))
    for i in range(n_mels):
        w[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    return w / w.sum(axis=1, keepdims=True)


def _log_mel_block(y: np.ndarray, pre: dict, mel_w: np.ndarray) -> np.ndarray:
    n_fft, hop = int(pre["n_fft"]), int(pre["hop_length"])
    peak = np.max(np.abs(y))
    y = y / peak if peak > 0 else y
    ypad = np.pad(y, (n_fft // 2, n_fft // 2))
    n_frames = 1 + (len(ypad) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    power = np.abs(np.fft.rfft(ypad[idx] * window, axis=1)) ** 2
    spec = np.log10(power @ mel_w.T * float(pre["log_multiplier"]) + 1.0)
    return (spec - float(pre["norm_min"])) / (float(pre["norm_max"]) - float(pre["norm_min"]))


# ---------------------------------------------------------------------------------------------
# Least squares refit, shared by both pruners
# ---------------------------------------------------------------------------------------------
def ridge_refit(X, Y, W0, b0, lam_rel: float = 1e-3):
    """argmin ||[X 1][W; b] - Y||^2 + lam ||[W; b] - [W0; b0]||^2 in float64.

    Pulling towards the teacher's own (kept) weights rather than towards zero keeps the fit
    stable where the calibration data does not excite a direction."""
    X1 = np.hstack([X, np.ones((X.shape[0], 1))])
    G = X1.T @ X1
    lam = lam_rel * np.trace(G) / G.shape[0]
    P0 = np.vstack([W0, b0[None, :]])
    P = np.linalg.solve(G + lam * np.eye(G.shape[0]), X1.T @ Y + lam * P0)
    return P[:-1], P[-1]


# ---------------------------------------------------------------------------------------------
# MiniLM pruning: FFN neurons and attention heads
# ---------------------------------------------------------------------------------------------
def _erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, scipy is not needed.
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-x * x)
    return s * y


def _ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    return d / np.sqrt((d * d).mean(-1, keepdims=True) + eps) * w + b


def prune_bert(src: bytes, opts: dict, cfg: dict) -> bytes:
    from tokenizers import Tokenizer

    m = onnx.load_from_string(src)
    W = {k: numpy_helper.to_array(v).astype(np.float64) for k, v in inits(m).items()}
    layers = sum(1 for k in W if k.endswith(".intermediate.dense.bias"))
    head_dim = int(numpy_helper.to_array(inits(m)["c/split"])[3])
    hidden = W["encoder.layer.0.attention.self.query.bias"].shape[0]
    ffn_keep = int(round(W["encoder.layer.0.intermediate.dense.bias"].shape[0]
                         * float(opts["ffn_keep"])))
    heads = hidden // head_dim
    heads_keep = int(round(heads * float(opts["heads_keep"])))
    eps = 1e-12

    tok = Tokenizer.from_file(str(HERE / cfg["preprocess"]["tokenizer"]))
    tok.no_padding()
    tok.no_truncation()
    sents = calibration_sentences(int(opts.get("templated", 350)), int(opts.get("docstrings", 0)))
    seqs = [np.array(e.ids) for e in tok.encode_batch(sents)]
    ridge = float(opts.get("ridge", 1e-3))
    L = lambda i, k: W[f"encoder.layer.{i}.{k}"]  # noqa: E731

    def embed(ids):
        x = (W["embeddings.word_embeddings.weight"][ids]
             + W["embeddings.position_embeddings.weight"][: len(ids)]
             + W["embeddings.token_type_embeddings.weight"][0])
        return _ln(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)

    def attn_ctx(i, x, hsel):
        """Per-head context vectors [s, len(hsel), head_dim] of layer i for heads hsel."""
        cols = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in hsel])
        proj = lambda n: (x @ L(i, f"attention.self.{n}.weight.T")[:, cols]  # noqa: E731
                          + L(i, f"attention.self.{n}.bias")[cols]).reshape(
                              len(x), len(hsel), head_dim).transpose(1, 0, 2)
        q, k, v = proj("query"), proj("key"), proj("value")
        sc = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim)
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        return (sc @ v).transpose(1, 0, 2), cols

    def gelu(h):
        return 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))

    teacher = [embed(s) for s in seqs]
    student = [t.copy() for t in teacher]
    all_heads = list(range(heads))
    for i in range(layers):
        wo, bo = L(i, "attention.output.dense.weight.T"), L(i, "attention.output.dense.bias")
        # Teacher layer i on the teacher's input; student's heads on the student's input.
        t_att, ctx_s = [], []
        for xt, xs in zip(teacher, student):
            c, _ = attn_ctx(i, xt, all_heads)
            t_att.append(c.reshape(len(xt), -1) @ wo + bo)
            ctx_s.append(attn_ctx(i, xs, all_heads)[0])
        # Head importance: mean norm of the head's contribution to the output projection.
        imp = np.zeros(heads)
        for c in ctx_s:
            for h in range(heads):
                imp[h] += np.linalg.norm(c[:, h] @ wo[h * head_dim:(h + 1) * head_dim], axis=1).sum()
        hsel = sorted(np.argsort(-imp, kind="stable")[:heads_keep].tolist())
        cols = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in hsel])
        X = np.vstack([c[:, hsel].reshape(len(c), -1) for c in ctx_s])
        # Target: what makes the student's residual sum equal the teacher's.
        Y = np.vstack([ta + xt - xs for ta, xt, xs in zip(t_att, teacher, student)])
        wo_new, bo_new = ridge_refit(X, Y, wo[cols], bo, ridge)
        ln_w, ln_b = L(i, "attention.output.LayerNorm.weight"), L(i, "attention.output.LayerNorm.bias")
        t_mid = [_ln(ta + xt, ln_w, ln_b, eps) for ta, xt in zip(t_att, teacher)]
        s_mid, off = [], 0
        for xs in student:
            n = len(xs)
            s_mid.append(_ln(X[off:off + n] @ wo_new + bo_new + xs, ln_w, ln_b, eps))
            off += n
        for n in ("query", "key", "value"):
            W[f"encoder.layer.{i}.attention.self.{n}.weight.T"] = L(i, f"attention.self.{n}.weight.T")[:, cols]
            W[f"encoder.layer.{i}.attention.self.{n}.bias"] = L(i, f"attention.self.{n}.bias")[cols]
        W[f"encoder.layer.{i}.attention.output.dense.weight.T"] = round_grid(wo_new)
        W[f"encoder.layer.{i}.attention.output.dense.bias"] = round_grid(bo_new)
        _set_layer_heads(m, i, len(hsel), head_dim)

        # FFN: neurons ranked by mean |activation| x norm of their output weights.
        w1, b1 = L(i, "intermediate.dense.weight.T"), L(i, "intermediate.dense.bias")
        w2, b2 = L(i, "output.dense.weight.T"), L(i, "output.dense.bias")
        H = np.vstack([gelu(x @ w1 + b1) for x in s_mid])
        imp = np.abs(H).mean(0) * np.linalg.norm(w2, axis=1)
        keep = np.sort(np.argsort(-imp, kind="stable")[:ffn_keep])
        t_ffn = [gelu(x @ w1 + b1) @ w2 + b2 for x in t_mid]
        Y = np.vstack([tf + xt - xs for tf, xt, xs in zip(t_ffn, t_mid, s_mid)])
        w2_new, b2_new = ridge_refit(H[:, keep], Y, w2[keep], b2, ridge)
        ln_w, ln_b = L(i, "output.LayerNorm.weight"), L(i, "output.LayerNorm.bias")
        teacher = [_ln(tf + xt, ln_w, ln_b, eps) for tf, xt in zip(t_ffn, t_mid)]
        student, off = [], 0
        for xs in s_mid:
            n = len(xs)
            student.append(_ln(H[off:off + n, keep] @ w2_new + b2_new + xs, ln_w, ln_b, eps))
            off += n
        W[f"encoder.layer.{i}.intermediate.dense.weight.T"] = w1[:, keep]
        W[f"encoder.layer.{i}.intermediate.dense.bias"] = b1[keep]
        W[f"encoder.layer.{i}.output.dense.weight.T"] = round_grid(w2_new)
        W[f"encoder.layer.{i}.output.dense.bias"] = round_grid(b2_new)
        cos = np.mean([np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b)
                       for a, b in zip(np.vstack(teacher), np.vstack(student))])
        log(f"  layer {i}: heads {hsel}, ffn {len(keep)}/{len(b1)}, token cos vs teacher {cos:.4f}")

    for i in range(layers):
        for k in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense"):
            for suffix in (".weight.T", ".bias"):
                name = f"encoder.layer.{i}.{k}{suffix}"
                set_init(m, name, W[name].astype(np.float32))
    m.graph.name += "-pruned"
    return finish(m)


def _set_layer_heads(m, layer: int, heads: int, head_dim: int) -> None:
    """Point layer's Reshape nodes at per-layer split/merge shapes for its remaining heads."""
    split, merge = f"c/split.l{layer}", f"c/merge.l{layer}"
    set_init(m, split, np.array([0, 0, heads, head_dim], np.int64))
    set_init(m, merge, np.array([0, 0, heads * head_dim], np.int64))
    for n in m.graph.node:
        if n.op_type == "Reshape" and n.name.startswith(f"layer{layer}/"):
            if n.input[1] == "c/split":
                n.input[1] = split
            elif n.input[1] == "c/merge":
                n.input[1] = merge


# ---------------------------------------------------------------------------------------------
# aiSFX pruning: inner channels of each conv block
# ---------------------------------------------------------------------------------------------
def _ort_outputs(m, names: list, x):
    import onnxruntime as ort

    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    for n in names:
        m2.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m2.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = m.graph.input[0].name
    outs = [sess.run(names, {inp: x[i:i + 16]}) for i in range(0, len(x), 16)]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(names))]


def _conv_chain(m, weight: str):
    """(conv node, bn node, relu node) for the Conv whose weight is `weight`."""
    by_input = {}
    for n in m.graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[1] == weight)
    bn = by_input[conv.output[0]][0]
    relu = by_input[bn.output[0]][0]
    return conv, bn, relu


def _patches(x, idx):
    """3x3 patches (pad 1) of x [N, C, H, W] at positions idx = (n, y, x) -> [len, C*9]."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, yy, xx = idx
    cols = [xp[n, :, yy + dy, xx + dx] for dy in range(3) for dx in range(3)]  # each [len, C]
    return np.stack(cols, axis=2).reshape(len(n), -1)  # (C, dy, dx) order as the kernel


def prune_cnn(src: bytes, opts: dict, cfg: dict) -> bytes:
    keep_frac = float(opts["channels_keep"])
    samples = int(opts.get("calibration_blocks", 96))
    rows = int(opts.get("rows", 24000))
    teacher = onnx.load_from_string(src)
    m = onnx.load_from_string(src)
    x = calibration_audio_blocks(cfg["preprocess"], samples)
    rng = np.random.default_rng(11)
    blocks = sorted({int(t.name.split(".")[0].removeprefix("conv_block"))
                     for t in m.graph.initializer if t.name.startswith("conv_block")})
    # The teacher's conv2 outputs of every block, in one run.
    targets = _ort_outputs(teacher, [_conv_chain(teacher, f"conv_block{b}.conv2.weight")[0]
                                     .output[0] for b in blocks], x)
    for b, target in zip(blocks, targets):
        w1n, w2n = f"conv_block{b}.conv1.weight", f"conv_block{b}.conv2.weight"
        _, _, relu1 = _conv_chain(m, w1n)
        conv2, _, _ = _conv_chain(m, w2n)
        (h,) = _ort_outputs(m, [relu1.output[0]], x)
        W = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
        w2 = W[w2n]  # [C2, C1, 3, 3]
        c1 = w2.shape[1]
        k = int(round(c1 * keep_frac))
        imp = h.astype(np.float64).mean(axis=(0, 2, 3)) * np.linalg.norm(w2.transpose(1, 0, 2, 3).reshape(c1, -1),
                                                      axis=1)
        keep = np.sort(np.argsort(-imp, kind="stable")[:k])
        N, _, H, Wd = h.shape
        total = N * H * Wd
        pick = np.sort(rng.choice(total, size=min(rows, total), replace=False))
        idx = np.unravel_index(pick, (N, H, Wd))
        X = _patches(h[:, keep], idx).astype(np.float64)
        Y = target[idx[0], :, idx[1], idx[2]].astype(np.float64)  # [rows, C2]
        W0 = w2[:, keep].reshape(w2.shape[0], -1).T
        b0 = np.zeros(w2.shape[0])
        wn, bn_ = ridge_refit(X, Y, W0, b0)
        pred = X @ wn + bn_
        rel = np.linalg.norm(pred - Y) / np.linalg.norm(Y)
        log(f"  block {b}: conv1 channels {k}/{c1}, conv2 refit relative error {rel:.4f}")
        set_init(m, w1n, W[w1n][keep].astype(np.float32))
        for t in ("weight", "bias", "running_mean", "running_var"):
            name = f"conv_block{b}.bn1.{t}"
            set_init(m, name, W[name][keep].astype(np.float32))
        set_init(m, w2n, round_grid(wn.T.reshape(w2.shape[0], k, 3, 3)))
        bias = f"conv_block{b}.conv2.bias"
        set_init(m, bias, round_grid(bn_))
        if len(conv2.input) == 2:
            conv2.input.append(bias)
    m.graph.name += "-pruned"
    return finish(m)


# ---------------------------------------------------------------------------------------------
# ViT at a lower input size: the position table resampled once, the input shape fixed
# ---------------------------------------------------------------------------------------------
def _cubic_taps(n_in: int, n_out: int, a: float = -0.75):
    """Bicubic taps of a 1-D resize n_in -> n_out, as ONNX Resize (cubic, half_pixel,
    cubic_coeff_a -0.75, exclude_outside 0) and torch's bicubic (align_corners=False) compute
    them: source x = (i + 0.5) * n_in / n_out - 0.5, 4 taps around floor(x), indices clamped
    to the edge. Returns (indices [n_out, 4], weights [n_out, 4]) in float64."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x)
    t = x - x0

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    w = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    idx = np.clip(x0[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return idx, w


def bicubic_grid(table, n_out: int):
    """Resize a [G, G, D] grid to [n_out, n_out, D] (separable: columns, then rows). Each output
    is a fixed-order sum of 4 elementwise float64 products per axis, no BLAS: the same bytes on
    every machine."""
    g = table.shape[0]
    idx, w = _cubic_taps(g, n_out)
    src = np.asarray(table, np.float64)
    cols = sum(src[:, idx[:, k], :] * w[None, :, k, None] for k in range(4))  # [G, n, D]
    return sum(cols[idx[:, k], :, :] * w[:, k, None, None] for k in range(4))  # [n, n, D]


def _producers(m) -> dict:
    return {o: n for n in m.graph.node for o in n.output}


def _prune_dead(m) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    prod = _producers(m)
    need, stack = set(), [o.name for o in m.graph.output]
    while stack:
        name = stack.pop()
        if name in need:
            continue
        need.add(name)
        n = prod.get(name)
        if n is not None:
            stack.extend(i for i in n.input if i)
    live = [n for n in m.graph.node if any(o in need for o in n.output)]
    del m.graph.node[:]
    m.graph.node.extend(live)
    _drop_replaced(m, {t.name for t in m.graph.initializer if t.name not in need})


def vit_resize(src: bytes, opts: dict, cfg: dict) -> bytes:
    """DINOv2 at `size`×`size` input: the graph's run-time position interpolation (the HF
    export's Resize of the 37×37 table to H/14×W/14, bicubic) is replaced by its result at this
    size, baked as a constant, and the input shape is fixed. Fewer patch tokens, same weights."""
    size = int(opts["size"])
    m = onnx.load_from_string(src)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    W = inits(m)
    patch = int(numpy_helper.to_array(W[conv.input[1]]).shape[-1])
    if size % patch:
        raise ConvertError(f"vit-resize: size {size} is not a multiple of the patch ({patch})")
    grid = size // patch
    resizes = [n for n in m.graph.node if n.op_type == "Resize"]
    if len(resizes) != 1:
        raise ConvertError(f"vit-resize: expected one Resize (the position table), "
                           f"found {len(resizes)}")
    resize = resizes[0]
    mode = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    if (mode.get("mode"), mode.get("coordinate_transformation_mode")) != (b"cubic", b"half_pixel") \
            or abs(mode.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6:
        raise ConvertError(f"vit-resize: the position Resize is not bicubic half_pixel "
                           f"a=-0.75: {mode}")
    # Walk back from the Resize to the table initializer, forward to the Concat that puts the
    # class position in front and the Add that adds positions to the tokens.
    prod = _producers(m)
    name = resize.input[0]
    while name not in W:
        name = prod[name].input[0]
    table = numpy_helper.to_array(W[name])  # [1, G*G, D]
    g0 = int(round(np.sqrt(table.shape[1])))
    if g0 * g0 != table.shape[1]:
        raise ConvertError(f"vit-resize: position table {name} {table.shape} is not a square grid")
    users = _weight_consumers(m)
    name = resize.output[0]
    while True:
        (node, _), *_ = users[name]
        if node.op_type == "Concat":
            break
        name = node.output[0]
    concat = node
    cls_pos = numpy_helper.to_array(W[concat.input[0]])  # [1, 1, D]
    ((add, add_ix),) = users[concat.output[0]]
    if add.op_type != "Add":
        raise ConvertError(f"vit-resize: position Concat feeds {add.op_type}, expected Add")
    dim = table.shape[-1]
    grid_pos = bicubic_grid(table.reshape(g0, g0, dim), grid).reshape(1, grid * grid, dim)
    pos = np.concatenate([cls_pos.astype(np.float64), grid_pos], axis=1).astype(np.float32)
    _check_positions(src, concat.output[0], size, pos)
    pos_name = f"backbone.embeddings.position_embeddings.{size}"
    set_init(m, pos_name, pos)
    add.input[add_ix] = pos_name
    _prune_dead(m)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = size
    dims[3].dim_value = size
    log(f"  position table {g0}x{g0} -> {grid}x{grid} (bicubic), {grid * grid} patch tokens, "
        f"input {size}x{size}")
    m.graph.name += f"-{size}"
    return finish(m)


def _check_positions(src: bytes, out: str, size: int, pos) -> None:
    """The baked table must be what the original graph computes at this size (onnxruntime)."""
    import onnxruntime as ort

    m = onnx.load_from_string(src)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = size
    dims[3].dim_value = size
    m.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, size, size), np.float32)
    (got,) = sess.run([out], {m.graph.input[0].name: x})
    err = float(np.max(np.abs(got - pos)))
    if got.shape != pos.shape or err > 1e-4:
        raise ConvertError(f"vit-resize: baked positions differ from the graph's own "
                           f"interpolation at {size} (shape {got.shape}, max |diff| {err:.2e})")
    log(f"  baked positions match onnxruntime's Resize at {size}: max |diff| {err:.1e}")


def _insert_after(m, producer_of: str, nodes: list) -> None:
    """Insert `nodes` right after the node that produces `producer_of` (topological order)."""
    allnodes = list(m.graph.node)
    at = next(i for i, n in enumerate(allnodes) if producer_of in n.output)
    del m.graph.node[:]
    m.graph.node.extend(allnodes[:at + 1] + nodes + allnodes[at + 1:])


def vit_token_prune(src: bytes, opts: dict, cfg: dict) -> bytes:
    """DINOv2 with fewer tokens after an early block: after block `after_block` only the class
    token and the `keep` patch tokens the class token attends to most in that block (mean over
    heads) go on; the others are dropped (attention and MLP are per token, so later blocks just
    see a shorter sequence; positions were added at the input). With `cls_last`, the last block
    computes its query, attention output and MLP for the class token only (exact: the output is
    the class token). Graph surgery only: no weight changes."""
    after, keep = int(opts["after_block"]), int(opts["keep"])
    m = onnx.load_from_string(src)
    names = {o for n in m.graph.node for o in n.output}
    layers = 0
    while f"/backbone/encoder/layer.{layers}/Add_1_output_0" in names:
        layers += 1
    if not 0 <= after < layers - 1:
        raise ConvertError(f"vit-token-prune: after_block {after} outside 0..{layers - 2}")
    W = inits(m)
    dim = int(numpy_helper.to_array(W[f"backbone.encoder.layer.{after}.norm1.weight"]).shape[0])
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    patch = int(numpy_helper.to_array(W[conv.input[1]]).shape[-1])
    hw = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[2:]]
    tokens = (hw[0] // patch) * (hw[1] // patch)
    if not 0 < keep < tokens:
        raise ConvertError(f"vit-token-prune: keep {keep} of {tokens} patch tokens")
    x = f"/backbone/encoder/layer.{after}/Add_1_output_0"
    probs = f"/backbone/encoder/layer.{after}/attention/attention/Softmax_output_0"
    if probs not in names:
        raise ConvertError(f"vit-token-prune: no attention probabilities {probs}")
    users = [n for n in m.graph.node if x in n.input]
    p = "token_prune/"
    for name, value in (("0", [0]), ("1", [1]), ("end", [np.iinfo(np.int64).max]), ("ax1", [1]),
                        ("ax2", [2]), ("ax3", [3]), ("keep", [keep]), ("dim", [1, 1, dim])):
        set_init(m, p + name, np.array(value, np.int64))
    mk = helper.make_node
    nodes = [
        # Class-token row of the attention, patch columns, mean over heads: [B, 1, tokens].
        mk("Slice", [probs, p + "0", p + "1", p + "ax2"], [p + "cls_row"], name=p + "cls_row"),
        mk("Slice", [p + "cls_row", p + "1", p + "end", p + "ax3"], [p + "cls_att"],
           name=p + "cls_att"),
        mk("ReduceMean", [p + "cls_att"], [p + "score"], name=p + "score", axes=[1], keepdims=0),
        mk("TopK", [p + "score", p + "keep"], [p + "top", p + "index"], name=p + "topk", axis=-1,
           largest=1, sorted=1),
        mk("Transpose", [p + "index"], [p + "index_t"], name=p + "index_t", perm=[0, 2, 1]),
        mk("Expand", [p + "index_t", p + "dim"], [p + "index_e"], name=p + "index_e"),
        mk("Slice", [x, p + "0", p + "1", p + "ax1"], [p + "cls"], name=p + "cls"),
        mk("Slice", [x, p + "1", p + "end", p + "ax1"], [p + "patches"], name=p + "patches"),
        mk("GatherElements", [p + "patches", p + "index_e"], [p + "kept"], name=p + "kept",
           axis=1),
        mk("Concat", [p + "cls", p + "kept"], [p + "x"], name=p + "x", axis=1),
    ]
    for u in users:
        for i, name in enumerate(u.input):
            if name == x:
                u.input[i] = p + "x"
    _insert_after(m, x, nodes)
    if opts.get("cls_last", False):
        last = layers - 1
        q = next(n for n in m.graph.node
                 if n.name == f"/backbone/encoder/layer.{last}/attention/attention/query/MatMul")
        res = next(n for n in m.graph.node if n.name == f"/backbone/encoder/layer.{last}/Add")
        c = "cls_last/"
        set_init(m, c + "0", np.array([0], np.int64))
        set_init(m, c + "1", np.array([1], np.int64))
        q_in, res_in = q.input[0], res.input[1]
        q.input[0], res.input[1] = c + "query_in", c + "residual_in"
        allnodes = list(m.graph.node)
        at = allnodes.index(q)
        del m.graph.node[:]
        m.graph.node.extend(allnodes[:at] + [
            mk("Slice", [q_in, c + "0", c + "1", c + "1"], [c + "query_in"], name=c + "query_in"),
            mk("Slice", [res_in, c + "0", c + "1", c + "1"], [c + "residual_in"],
               name=c + "residual_in"),
        ] + allnodes[at:])
    log(f"  after block {after}: {keep} of {tokens} patch tokens go on (class-token attention)"
        + (f"; block {layers - 1} for the class token only" if opts.get("cls_last") else ""))
    m.graph.name += f"-tokens{keep}"
    return finish(m)


# ---------------------------------------------------------------------------------------------
# Static QDQ for convolutions
# ---------------------------------------------------------------------------------------------
def _grid_up(v: float) -> float:
    """Round a positive range up to the grid 2^(k/16): stable against float noise."""
    return float(2.0 ** (np.ceil(np.log2(max(v, 1e-8)) * 16) / 16))


def to_int8_static(src: bytes, opts: dict, cfg: dict) -> bytes:
    m = onnx.load_from_string(src)
    x = calibration_audio_blocks(cfg["preprocess"], int(opts.get("calibration_blocks", 64)))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    acts = _ort_outputs(m, [c.input[0] for c in convs], x)
    W = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    new_nodes = []
    for c, a in zip(convs, acts):
        lo, hi = float(a.min()), float(a.max())
        if lo < 0:
            raise ConvertError(f"{c.name}: negative conv input; uint8 with zero point 0 assumes ReLU")
        s = np.array(_grid_up(hi) / 255.0, np.float32)
        base = c.input[0]
        q, dq = base + "/q", base + "/dq"
        set_init(m, base + ".act_scale", s)
        set_init(m, base + ".act_zp", np.array(0, np.uint8))
        new_nodes.append(helper.make_node("QuantizeLinear", [base, base + ".act_scale",
                                                             base + ".act_zp"], [q], name=q))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, base + ".act_scale",
                                                               base + ".act_zp"], [dq], name=dq))
        c.input[0] = dq
        wname = c.input[1]
        w = W[wname].astype(np.float64)
        amax = np.abs(w).reshape(w.shape[0], -1).max(1)
        ws = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        wq = np.clip(np.round(w / ws.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
        set_init(m, wname + ".q", wq)
        set_init(m, wname + ".scale", ws)
        set_init(m, wname + ".zp", np.zeros(len(ws), np.int8))
        new_nodes.append(helper.make_node("DequantizeLinear", [wname + ".q", wname + ".scale",
                                                               wname + ".zp"], [wname + "/dq"],
                                          name=wname + "/dq", axis=0))
        c.input[1] = wname + "/dq"
    _drop_replaced(m, {c.input[1].removesuffix("/dq") for c in convs})
    # Topological order: each QDQ pair right before its consumer.
    order = []
    pending = {n.output[0]: n for n in new_nodes}
    for n in m.graph.node:
        for i in n.input:
            if i in pending:
                p = pending.pop(i)
                src_q = p.input[0]
                if src_q in pending:
                    order.append(pending.pop(src_q))
                order.append(p)
        order.append(n)
    del m.graph.node[:]
    m.graph.node.extend(order)
    return finish(m)


METHODS = {
    "int8-dynamic": lambda src, o, c: to_int8_dynamic(src, o),
    "int8-weights": lambda src, o, c: to_int8_weights(src, o),
    "f16": lambda src, o, c: to_f16(src, o),
    "int8-static": to_int8_static,
    "prune-bert": prune_bert,
    "prune-cnn": prune_cnn,
    "vit-resize": vit_resize,
    "vit-token-prune": vit_token_prune,
}


# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--manifest", type=Path, default=HERE / "manifest.toml")
    ap.add_argument("--update-manifest", action="store_true",
                    help="record the produced sha256 instead of checking it (maintainers only)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", action="store_true",
                    help="only report whether every variant is present with the right sha256")
    args = ap.parse_args()

    models = tomllib.loads(args.manifest.read_text())["models"]
    variants = [k for k, c in models.items() if c.get("variant_of")]
    failures = 0
    for key in variants:  # manifest order: a variant's base comes before it
        if args.only and key not in args.only:
            continue
        cfg = resolve(models, key)
        out = args.out / cfg["file"]
        if out.exists() and sha256_file(out) == cfg["sha256"]:
            log(f"{key}: {cfg['file']} present, sha256 ok")
            continue
        if args.check:
            log(f"{key}: {cfg['file']} missing or stale")
            failures += 1
            continue
        if np is None:
            _import_heavy()
        try:
            base = resolve(models, cfg["variant_of"])
            base_path = args.out / base["file"]
            if not base_path.exists() or sha256_file(base_path) != base["sha256"]:
                raise ConvertError(f"base model {cfg['variant_of']} ({base['file']}) is missing "
                                   f"or stale: produce it first")
            method = cfg["optimize"]["method"]
            log(f"{key}: {method} from {base['file']}")
            data = METHODS[method](base_path.read_bytes(), cfg["optimize"], cfg)
            got = sha256_bytes(data)
            if args.update_manifest:
                set_manifest_sha(args.manifest, f"models.{key}", "sha256", got)
                models = tomllib.loads(args.manifest.read_text())["models"]
            elif got != cfg["sha256"]:
                raise ConvertError(
                    f"produced {cfg['file']} has sha256 {got}, manifest expects {cfg['sha256']}")
            write_atomic(out, data)
            log(f"{key}: wrote {cfg['file']} ({len(data) / 1e6:.1f} MB, sha256 {got[:12]})")
        except (ConvertError, KeyError, FileNotFoundError) as e:
            print(f"[models] error: {key}: {e}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
