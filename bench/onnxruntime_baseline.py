#!/usr/bin/env python3
"""tract vs onnxruntime on the same ONNX files and input shapes, measured in one run.

It builds the criterion benches once (`cargo bench --bench encoders --no-run`, nice'd), then
for each modality in turn runs that executable on the modality's benches (tract, one thread)
and then onnxruntime on the same ONNX files (sha256-checked against models/manifest.toml)
with the input shapes of the criterion `*/infer/*` benches, once with 1 intra-op thread and
once with onnxruntime's default thread count. Interleaving per modality keeps the tract and
onnxruntime numbers of one model minutes apart on the same machine.

Both sides are reported as median and 95th percentile in milliseconds per call. onnxruntime:
over single timed `session.run` calls. tract: over criterion's samples (`sample.json`, time
per iteration of each sample; the inference benches use flat sampling and time every run on
its own, so a sample is the mean of a few runs at most).

    bench/onnxruntime_baseline.py                          # measure, print the markdown
    bench/onnxruntime_baseline.py --doc docs/performance.md  # and update the doc
    bench/onnxruntime_baseline.py --no-tract               # onnxruntime only

`bench/baseline` wraps this with a venv (bench/requirements.txt) and a release build.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
BEGIN = "<!-- baseline:begin -->"
END = "<!-- baseline:end -->"


@dataclass
class Case:
    """One inference shape, the same as criterion bench `<modality>/infer/<bench>`."""

    modality: str
    bench: str
    batch: int
    shape: str  # human-readable per-item input
    feeds: dict[str, tuple[tuple[int, ...], str]]  # input name -> (shape, kind)


def text_case(bench: str, batch: int, seq: int) -> Case:
    shape = (batch, seq)
    return Case(
        "text",
        bench,
        batch,
        f"{seq} tokens",
        {
            "input_ids": (shape, "ids"),
            "attention_mask": (shape, "ones"),
            "token_type_ids": (shape, "zeros"),
        },
    )


# Keep in step with benches/encoders.rs (ids and shapes).
CASES = [
    text_case("b1_s12", 1, 12),
    text_case("b8_s12", 8, 12),
    text_case("b1_s128", 1, 128),
    text_case("b8_s128", 8, 128),
    Case("vision", "b1", 1, "3×224×224", {"input_image": ((1, 3, 224, 224), "normal")}),
    Case("vision", "b4", 4, "3×224×224", {"input_image": ((4, 3, 224, 224), "normal")}),
    Case("audio", "b1", 1, "100×96 mel", {"spectrogram": ((1, 100, 96), "unit")}),
    Case("audio", "b8", 8, "100×96 mel", {"spectrogram": ((8, 100, 96), "unit")}),
]
MODALITIES = ["text", "vision", "audio"]

# Tract-only benches shown in the second table, in this order: (id, description).
STAGES = [
    ("text/tokenize/batch8_short", "text: tokenize 8 sentences (12 tokens)"),
    ("text/tokenize/batch8_long", "text: tokenize 8 texts (truncated to 128 tokens)"),
    ("text/embed/b1_short", "text: embed 1 sentence (whole call)"),
    ("text/embed/b8_short", "text: embed 8 sentences (whole call)"),
    ("text/infer/b8_s128_t2", "text: inference, 8 × 128 tokens, tract 2 threads"),
    ("vision/preprocess/decode_448x288", "vision: JPEG decode, 448×288"),
    ("vision/preprocess/resize_crop_448x288", "vision: bicubic resize to 256 + centre crop 224"),
    ("vision/preprocess/chelsea_448x288", "vision: decode + resize + crop + normalise, 448×288 JPEG"),
    ("vision/infer/b1_t2", "vision: inference, batch 1, tract 2 threads"),
    ("vision/embed/b1", "vision: embed 1 JPEG (whole call)"),
    ("audio/preprocess/wav_decode_22k", "audio: WAV decode, 2.9 s at 22.05 kHz"),
    ("audio/preprocess/resample_22k_to_44k", "audio: resample 22.05 → 44.1 kHz, 2.9 s"),
    ("audio/preprocess/full_22k", "audio: WAV → blocks, 22.05 kHz (decode, resample, log-mel, blocks)"),
    ("audio/preprocess/full_44k", "audio: WAV → blocks, 44.1 kHz (decode, log-mel, blocks)"),
    ("audio/preprocess/log_mel_44k", "audio: log-mel + blocks only, 2.9 s at 44.1 kHz"),
    ("audio/embed/speech_22k", "audio: embed a 2.9 s 22.05 kHz WAV (whole call)"),
]


@dataclass
class Stats:
    median_ms: float
    p95_ms: float
    n: int

    @staticmethod
    def of(ms: list[float] | np.ndarray) -> "Stats":
        a = np.asarray(ms, dtype=np.float64)
        return Stats(float(np.median(a)), float(np.percentile(a, 95)), int(a.size))

    def cell(self) -> str:
        return f"{fmt(self.median_ms)} / {fmt(self.p95_ms)}"


@dataclass
class Row:
    case: Case
    model: str
    tract: Stats | None = None
    ort: dict[str, Stats] = field(default_factory=dict)


def fmt(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def log(msg: str) -> None:
    print(f"[baseline] {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_models(models_dir: Path) -> dict[str, dict]:
    manifest_path = models_dir / "manifest.toml"
    if not manifest_path.exists():
        sys.exit(f"error: {manifest_path} not found (run models/fetch or pass --models)")
    manifest = tomllib.loads(manifest_path.read_text())
    specs = {}
    for key in MODALITIES:
        spec = manifest["models"][key]
        path = models_dir / spec["file"]
        if not path.exists():
            sys.exit(f"error: {path} is missing: run models/fetch first")
        actual = sha256(path)
        if actual != spec["sha256"]:
            sys.exit(f"error: {path}: sha256 {actual} != manifest {spec['sha256']}; rerun models/fetch")
        specs[key] = dict(spec, path=path)
    return specs


def make_feeds(case: Case, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for name, (shape, kind) in case.feeds.items():
        if kind == "ids":
            feeds[name] = rng.integers(1000, 29000, size=shape, dtype=np.int64)
        elif kind == "ones":
            feeds[name] = np.ones(shape, dtype=np.int64)
        elif kind == "zeros":
            feeds[name] = np.zeros(shape, dtype=np.int64)
        elif kind == "normal":
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        elif kind == "unit":
            feeds[name] = rng.random(shape).astype(np.float32)
        else:
            raise ValueError(kind)
    return feeds


def session(path: Path, threads: int | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_ort(sess: ort.InferenceSession, feeds: dict, args: argparse.Namespace) -> Stats:
    # Warm up (allocations, kernel selection), then time single calls.
    start = time.perf_counter()
    runs = 0
    while runs < 2 or time.perf_counter() - start < args.warm_up:
        sess.run(None, feeds)
        runs += 1
    times = []
    start = time.perf_counter()
    while len(times) < args.min_runs or (
        time.perf_counter() - start < args.measurement_time and len(times) < args.max_runs
    ):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return Stats.of(times)


def run_ort(rows: list[Row], specs: dict, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    for label, threads in (("1", 1), ("default", None)):
        sessions: dict[str, ort.InferenceSession] = {}
        for row in rows:
            key = row.case.modality
            if key not in sessions:
                sessions[key] = session(specs[key]["path"], threads)
            st = time_ort(sessions[key], make_feeds(row.case, rng), args)
            row.ort[label] = st
            log(f"onnxruntime {label:>7} thread(s) {key}/infer/{row.case.bench}: {st.cell()} ms")


def build_bench() -> Path:
    """Build the criterion benches (release profile, low priority) and return the executable,
    so that every modality is measured with one binary and no rebuild happens mid-run."""
    cmd = ["nice", "-n", "10", "cargo", "bench", "--locked", "--bench", "encoders", "--no-run",
           "--message-format=json-render-diagnostics"]
    log(f"building: {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and target.get("name") == "encoders" \
                and "bench" in target.get("kind", []) and msg.get("executable"):
            return Path(msg["executable"])
    sys.exit("error: cargo did not report the encoders bench executable")


def run_criterion(exe: Path, modality: str, crit_home: Path, args: argparse.Namespace) -> None:
    cmd = [str(exe), "--bench", "--noplot", f"^{modality}/"]
    env = dict(os.environ, CRITERION_HOME=str(crit_home), EDGEFUSE_BENCH_ONLY=modality)
    env["EDGEFUSE_MODELS"] = str(args.models)
    log(f"tract: {' '.join(cmd)}")
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=sys.stderr)


def read_criterion(crit_home: Path) -> dict[str, Stats]:
    """Every benchmark under `crit_home`: full id -> per-iteration stats over the samples."""
    out = {}
    for bj in crit_home.glob("**/new/benchmark.json"):
        meta = json.loads(bj.read_text())
        sample = json.loads((bj.parent / "sample.json").read_text())
        per_iter_ms = np.asarray(sample["times"]) / np.asarray(sample["iters"]) / 1e6
        out[meta["full_id"]] = Stats.of(per_iter_ms)
    return out


def cpu_info() -> dict[str, str]:
    info = {"model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    if m:
        info["model"] = m.group(1).strip()
    flags = set()
    m = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
    if m:
        flags = set(m.group(2).split())
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "asimddp"]
    info["simd"] = " ".join(f for f in wanted if f in flags) or "none listed"
    return info


def versions() -> dict[str, str]:
    def cmd(*c: str) -> str:
        try:
            return subprocess.run(c, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    lock = (REPO / "Cargo.lock").read_text()
    m = re.search(r'name = "tract-onnx"\nversion = "([^"]+)"', lock)
    return {
        "rustc": cmd("rustc", "--version"),
        "tract-onnx": m.group(1) if m else "unknown",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def markdown(rows: list[Row], stages: dict[str, Stats], machine: dict, tract: bool) -> str:
    cpu = machine["cpu"]
    v = machine["versions"]
    lines = [
        f"Measured {machine['date']} by `bench/baseline` ({machine['wall_s']:.0f} s wall).",
        "",
        f"- CPU: {cpu['model']}, {machine['cpus']} logical CPUs "
        f"(SIMD: {cpu.get('simd', '?')}); load average {machine['load_before']} before, "
        f"{machine['load_after']} after",
        f"- {v['kernel']}; {v['rustc']}; tract-onnx {v['tract-onnx']} (release profile, "
        f"single thread); onnxruntime {v['onnxruntime']} (CPU provider, `ORT_ENABLE_ALL`); "
        f"numpy {v['numpy']}; Python {v['python']}",
        "",
        "Inference only, per call, milliseconds as median / p95. Ratio = tract median / "
        "onnxruntime median (above 1: tract is slower).",
        "",
        "| model | batch | input per item | tract ms | ORT 1 thread ms | tract / ORT 1t "
        f"| ORT default threads ms | tract / ORT default |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r.tract
        o1, od = r.ort.get("1"), r.ort.get("default")
        ratio = lambda o: f"{t.median_ms / o.median_ms:.2f}" if t and o else "–"  # noqa: E731
        lines.append(
            f"| {r.model} | {r.case.batch} | {r.case.shape} | {t.cell() if t else '–'} "
            f"| {o1.cell() if o1 else '–'} | {ratio(o1)} | {od.cell() if od else '–'} | {ratio(od)} |"
        )
    if tract and stages:
        lines += [
            "",
            "tract side only: preprocessing and the whole `embed` call (preprocessing, inference, "
            "pooling/normalisation), milliseconds as median / p95.",
            "",
            "| stage | criterion id | ms |",
            "|---|---|---:|",
        ]
        for bench_id, desc in STAGES:
            st = stages.get(bench_id)
            if st:
                lines.append(f"| {desc} | `{bench_id}` | {st.cell()} |")
    return "\n".join(lines) + "\n"


DOC_INTRO = """# Performance

Baseline numbers for the three encoders on CPU: tract (what edgefuse runs) against
onnxruntime on the very same ONNX files and input shapes.

## How it was measured

`bench/baseline` does everything in one command: it creates a Python venv
(`models/.venv-bench`, or `EDGEFUSE_BENCH_VENV`) with `bench/requirements.txt`, builds the
criterion benches in release mode, then runs `bench/onnxruntime_baseline.py`, which for each
modality runs that bench executable on the modality's benches (tract, single-threaded) and
straight afterwards onnxruntime with one intra-op thread and with its default thread
count, so both runtimes are measured back to back on the same machine. It rewrites the section
between the markers below.

- Inference inputs: text uses real tokenisations (8 sentences of 12 tokens, a paragraph
  truncated to 128 tokens); vision the preprocessed `tests/fixtures/images/chelsea.jpg`;
  audio one 100×96 log-mel block of `tests/fixtures/audio/speech_fox.wav`. onnxruntime gets
  random tensors of the same shapes (the models have no data-dependent control flow).
- Preprocessing and the whole `embed` call are measured by criterion on the tract side only.
- onnxruntime medians are over single calls; tract medians over criterion samples (flat
  sampling, a sample being the mean of a few runs at most).
- The machine is shared: compare ratios from the same run, not absolute numbers across runs.

Run a subset by hand with `cargo bench --bench encoders -- text/infer` (criterion filter), or
`bench/onnxruntime_baseline.py --no-tract` for onnxruntime alone.

"""


def update_doc(doc: Path, body: str) -> None:
    block = f"{BEGIN}\n{body}{END}\n"
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(DOC_INTRO + "## Baseline\n\n" + block)
        return
    text = doc.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(head + block.rstrip("\n") + tail)
    else:
        doc.write_text(text.rstrip("\n") + "\n\n## Baseline\n\n" + block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEFUSE_MODELS", REPO / "models")))
    ap.add_argument("--modality", action="append", choices=MODALITIES, help="repeatable; default all")
    ap.add_argument("--no-tract", action="store_true", help="skip the criterion benches")
    ap.add_argument("--bench-exe", type=Path, help="prebuilt criterion executable (skips the build)")
    ap.add_argument("--doc", type=Path, help="markdown file to update between the baseline markers")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    ap.add_argument("--warm-up", type=float, default=1.0, help="onnxruntime warm-up seconds per case")
    ap.add_argument("--measurement-time", type=float, default=3.0, help="onnxruntime seconds per case")
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--max-runs", type=int, default=1000)
    args = ap.parse_args()
    args.models = args.models.resolve()

    specs = load_models(args.models)
    modalities = args.modality or MODALITIES
    rows: list[Row] = []
    stages: dict[str, Stats] = {}
    exe = None
    if not args.no_tract:
        exe = args.bench_exe or build_bench()
    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="edgefuse-criterion-") as tmp:
        crit_home = Path(tmp)
        for modality in modalities:
            mrows = [Row(c, specs[modality]["name"]) for c in CASES if c.modality == modality]
            if exe is not None:
                run_criterion(exe, modality, crit_home, args)
            run_ort(mrows, specs, args)
            rows += mrows
        if not args.no_tract:
            results = read_criterion(crit_home)
            for r in rows:
                full_id = f"{r.case.modality}/infer/{r.case.bench}"
                r.tract = results.get(full_id)
                if r.tract is None:
                    sys.exit(f"error: criterion produced no result for {full_id}")
            case_ids = {f"{r.case.modality}/infer/{r.case.bench}" for r in rows}
            stages = {k: v for k, v in results.items() if k not in case_ids}

    machine = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_info(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": versions(),
        "wall_s": time.monotonic() - started,
    }
    md = markdown(rows, stages, machine, not args.no_tract)
    print(md)
    if args.doc:
        update_doc(args.doc, md)
        log(f"updated {args.doc}")
    if args.json:
        raw = {
            "machine": machine,
            "inference": [
                {
                    "id": f"{r.case.modality}/infer/{r.case.bench}",
                    "model": r.model,
                    "batch": r.case.batch,
                    "tract": vars(r.tract) if r.tract else None,
                    "ort": {k: vars(v) for k, v in r.ort.items()},
                }
                for r in rows
            ],
            "tract_stages": {k: vars(v) for k, v in stages.items()},
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
