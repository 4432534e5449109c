#!/usr/bin/env python3
"""Speech report: word error rate and real-time factor of the tract transcriber
(`edgefuse transcribe`) side by side with onnxruntime on the same files, in one run.

    models/report_speech [--bin PATH] [--voices N] [--out FILE.json]

Speech is produced here: espeak-ng speaks SENTENCES in several voices at 16 kHz; sox makes the
conditions: clean, white noise at 10 dB SNR, reverb, and an 8 kHz telephone band (300-3400 Hz).
onnxruntime runs the same converted ONNX files (greedy decoding of the whole clip, as
tests/golden/make_reference.py); tract runs the full transcriber (VAD segmentation included).
WER = word-level Levenshtein distance / reference words, after lower-casing and dropping
punctuation (numbers are spelled as espeak-ng says them, e.g. "nine").
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soxr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "golden"))
import make_reference as mr  # noqa: E402

SENTENCES = [
    "turn off the lights in the living room",
    "the kettle is boiling in the kitchen",
    "someone is knocking at the front door",
    "set a timer for ten minutes",
    "the dog is barking in the garden",
    "please open the window in the bedroom",
    "what is the weather like tomorrow",
    "the washing machine has finished",
    "call me when the package arrives",
    "close the garage door before you leave",
]
VOICES = ["en-us", "en+f3", "en-gb", "en-us+m3"]
CONDITIONS = {
    "clean": [],
    "noise10dB": None,  # mixed in numpy (deterministic seed)
    "reverb": ["reverb", "50", "50", "60"],
    "phone8k": ["sinc", "300-3400", "rate", "-v", "8000"],
}


def norm(t: str) -> list[str]:
    return "".join(c for c in t.lower() if c.isalnum() or c.isspace()).split()


def edits(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def make_set(tmp: Path, voices: list[str]) -> list[tuple[Path, str, str]]:
    items = []
    rng = np.random.default_rng(14)
    for v in voices:
        for k, s in enumerate(SENTENCES):
            raw = tmp / f"raw_{v}_{k}.wav"
            subprocess.run(["espeak-ng", "-v", v, "-w", str(raw), s], check=True)
            clean = tmp / f"{v}_{k}_clean.wav"
            subprocess.run(["sox", "-R", "-D", "-V1", str(raw), "-r", "16000", "-b", "16",
                            str(clean), "rate", "-v", "16000"], check=True)
            for cond, fx in CONDITIONS.items():
                out = tmp / f"{v}_{k}_{cond}.wav"
                if cond == "clean":
                    out = clean
                elif fx is None:
                    y, sr = mr.read_wav(clean)
                    noise = rng.standard_normal(len(y))
                    p_sig, p_n = np.mean(y ** 2), np.mean(noise ** 2)
                    y = y + noise * np.sqrt(p_sig / p_n / 10 ** (10 / 10))
                    import scipy.io.wavfile
                    scipy.io.wavfile.write(out, sr, (np.clip(y, -1, 1) * 32767).astype(np.int16))
                else:
                    subprocess.run(["sox", "-R", "-D", "-V1", str(clean), str(out), *fx],
                                   check=True)
                items.append((out, cond, s))
    return items


def ort_transcribe(paths, models: Path, manifest: dict):
    spec = manifest["models"]["speech"]
    pre = spec["preprocess"]
    files = {e["role"]: e for e in spec["extra_files"]}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tract runs single-threaded (encoders.threads = 1)
    sess = lambda f: ort.InferenceSession(str(models / f), opts,  # noqa: E731
                                          providers=["CPUExecutionProvider"])
    enc = sess(spec["file"])
    dec = (sess(files["decoder"]["file"]), sess(files["decoder_with_past"]["file"]))
    toks = mr.speech_tokenizer(models / pre["tokenizer"])
    out = []
    for p in paths:
        y, sr = mr.read_wav(p)
        if sr != 16000:
            y = soxr.resample(y, sr, 16000, quality="VHQ")
        x = y.astype(np.float32)[None]
        t0 = time.perf_counter()
        e = enc.run(None, {"input_values": x})[0]
        ids = mr.speech_greedy(e, dec, pre, mr.speech_max_tokens(x.shape[1], pre))
        dt = time.perf_counter() - t0
        out.append((mr.speech_detokenize(toks, ids, {0, 1, 2}), dt, x.shape[1] / 16000))
    return out


def ort_check(wheels: Path, models: Path, manifest: dict) -> int:
    """The converted graphs vs the wheel's original .ort files, both in onnxruntime, on every
    clip of tests/golden/reference.json: encoder max abs difference, identical greedy tokens."""
    import zipfile

    spec = manifest["models"]["speech"]
    pkg = manifest["packages"][spec["package"]]
    dec_src = next(e for e in spec["extra_files"] if e["role"] == "decoder")["source"]
    with zipfile.ZipFile(wheels / pkg["wheel"]) as z:
        enc_o = ort.InferenceSession(z.read(spec["source"]))
        dec_o = ort.InferenceSession(z.read(dec_src))
    enc_c = ort.InferenceSession(str(models / spec["file"]))
    layers = spec["preprocess"]["layers"]
    names = [o.name for o in dec_o.get_outputs()]
    ref = json.loads((REPO / "tests/golden/reference.json").read_text())["speech"]["clips"]
    bad = 0
    for c in ref:
        y, sr = mr.read_wav(REPO / c["input"])
        if sr != 16000:
            y = soxr.resample(y, sr, 16000, quality="VHQ")
        x = y.astype(np.float32)[None]
        eo = enc_o.run(None, {"input_values": x})[0]
        diff = float(np.abs(eo - enc_c.run(None, {"input_values": x})[0]).max())
        empty = np.zeros((1, 8, 0, 52), np.float32)
        feed = {"input_ids": np.array([[1]], np.int64), "encoder_hidden_states": eo,
                "use_cache_branch": np.array([False])}
        feed.update({f"past_key_values.{i}.{a}.{kv}": empty for i in range(layers)
                     for a in ("decoder", "encoder") for kv in ("key", "value")})
        res = dict(zip(names, dec_o.run(None, feed)))
        # The with-cache branch returns no usable cross-attention cache: keep the first one.
        cross = {f"past_key_values.{i}.encoder.{kv}": res[f"present.{i}.encoder.{kv}"]
                 for i in range(layers) for kv in ("key", "value")}
        ids = []
        while True:
            t = int(np.argmax(res["logits"][0, -1]))
            if t == 2 or len(ids) >= c["max_tokens"]:
                break
            ids.append(t)
            feed = {"input_ids": np.array([[t]], np.int64), "encoder_hidden_states": eo,
                    "use_cache_branch": np.array([True]), **cross}
            feed.update({f"past_key_values.{i}.decoder.{kv}": res[f"present.{i}.decoder.{kv}"]
                         for i in range(layers) for kv in ("key", "value")})
            res = dict(zip(names, dec_o.run(None, feed)))
        same = ids == c["tokens"]
        bad += (not same) or diff > 1e-3
        print(f"{c['input']}: encoder max |diff| {diff:.1e}, tokens identical: {same}")
    print("original .ort vs converted: " + ("all agree" if not bad else f"{bad} clips differ"))
    return 1 if bad else 0


def peak_rss_mib(cmd: list[str]) -> float:
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    return int(r.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("EDGEFUSE_BIN",
                    str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "edgefuse")))
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--voices", type=int, default=len(VOICES))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--ort-check", action="store_true",
                    help="only compare the converted graphs with the wheel's .ort files")
    ap.add_argument("--wheels", type=Path,
                    default=Path(os.environ.get("EDGEFUSE_WHEELS", REPO / "models" / ".wheels")))
    args = ap.parse_args()
    import tomllib
    manifest = tomllib.loads((args.models / "manifest.toml").read_text())
    if args.ort_check:
        return ort_check(args.wheels, args.models, manifest)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        items = make_set(tmp, VOICES[: args.voices])
        paths = [str(p) for p, _, _ in items]
        t0 = time.perf_counter()
        r = subprocess.run([args.bin, "--models", str(args.models), "transcribe", *paths],
                           capture_output=True, text=True)
        tract_wall = time.perf_counter() - t0
        lines = {json.loads(l)["input"]: json.loads(l) for l in r.stdout.splitlines()}
        if len(lines) != len(paths):
            print(r.stderr, file=sys.stderr)
            return 1
        ort_res = ort_transcribe(paths, args.models, manifest)
        rss_transcribe = peak_rss_mib([args.bin, "--models", str(args.models), "transcribe", paths[0]])
        rss_base = peak_rss_mib([args.bin, "config"])
    rows = {}
    for (p, cond, ref), (otext, odt, secs) in zip(items, ort_res):
        t = lines[str(p)]
        row = rows.setdefault(cond, {"n": 0, "words": 0, "tract_err": 0, "ort_err": 0,
                                     "audio_s": 0.0, "tract_s": 0.0, "ort_s": 0.0, "same": 0})
        w = norm(ref)
        row["n"] += 1
        row["words"] += len(w)
        row["tract_err"] += edits(w, norm(t["text"]))
        row["ort_err"] += edits(w, norm(otext))
        row["audio_s"] += secs
        row["tract_s"] += t["timings"]["total_ms"] / 1000
        row["ort_s"] += odt
        row["same"] += norm(t["text"]) == norm(otext)
    print(f"{len(items)} clips ({len(VOICES[:args.voices])} voices x {len(SENTENCES)} sentences x "
          f"{len(CONDITIONS)} conditions); tract process wall {tract_wall:.1f} s (incl. load)")
    print("| condition | clips | WER tract | WER onnxruntime | same text | RTF tract | RTF onnxruntime | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for cond, r_ in rows.items():
        rt, ro = r_["tract_s"] / r_["audio_s"], r_["ort_s"] / r_["audio_s"]
        print(f"| {cond} | {r_['n']} | {100 * r_['tract_err'] / r_['words']:.1f} % | "
              f"{100 * r_['ort_err'] / r_['words']:.1f} % | {r_['same']}/{r_['n']} | {rt:.3f} | "
              f"{ro:.3f} | {rt / ro:.2f} |")
    print(f"peak RSS: `edgefuse transcribe` (one clip) {rss_transcribe:.0f} MiB, "
          f"`edgefuse config` {rss_base:.0f} MiB: the transcriber adds {rss_transcribe - rss_base:.0f} MiB")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "rss_mib": rss_transcribe,
                                        "rss_base_mib": rss_base}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
