#!/usr/bin/env python3
"""edgefuse against a Python peer, raw onnxruntime and raw tract, in one run on one machine.

What it measures, per modality, interleaved in rounds so that the load other processes put on a
shared machine falls on every contender alike:

* edgefuse end to end: `edgefuse run` on a mosquitto broker on loopback; the driver publishes
  one input to `edgefuse/bench/in/<m>` and waits for `embedding/<m>`, one item at a time
  (latency), and a burst of items at once (throughput). Two edgefuse daemons: one at equal
  work and quality (the fp32 originals the peer runs, nothing else: no image classifier or
  shared space), and one at its shipped defaults (compressed models, classifier, shared
  space), as a user runs it;
* the Python peer (bench/python_peer.py: onnxruntime + paho-mqtt, same models, same
  preprocessing) on the same broker, the same way;
* raw onnxruntime: `session.run` on the preprocessed input, 1 intra-op thread and default;
* raw tract: `edgefuse bench --json` (inference stage, batch 1, 1 thread) on the same input,
  for the fp32 originals and for the default models.

Plus, per daemon: start to READY (edgefuse: sd_notify READY=1 on a NOTIFY_SOCKET; the peer:
its `READY` line), RSS (VmRSS and VmHWM) after the run, and CPU used while idle with an
`image_dir` source configured on a static directory.

    bench/side_by_side.py --edgefuse target/release/edgefuse --doc docs/performance.md

`bench/run` wraps this with the venv and the release build.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "golden"))
import make_reference as ref  # noqa: E402
from mqtt_driver import Driver, med, start_edgefuse, start_mosquitto, stop  # noqa: E402

BEGIN = "<!-- side-by-side:begin -->"
END = "<!-- side-by-side:end -->"
TEXT = "A man is playing a guitar on the stage."
IMAGE = REPO / "tests/fixtures/images/chelsea.jpg"
WAV = REPO / "tests/fixtures/audio/speech_fox.wav"
MODALITIES = ["text", "vision", "audio"]
# The two edgefuse daemons, by topic prefix: equal work (fp32 originals, embeddings only) and
# the shipped defaults.
DAEMONS = {"edgefuse": "fp32 originals, embeddings only", "edgefused": "shipped defaults"}
CLK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[side-by-side] {msg}", file=sys.stderr, flush=True)


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    # Fields after the parenthesised command: utime is the 12th, stime the 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else float("nan")


def start_peer(python: str, port: int, models: Path, threads: int | None,
               echo: bool = False) -> tuple[subprocess.Popen, float]:
    cmd = [python, str(REPO / "bench/python_peer.py"), "--port", str(port), "--prefix",
           "echo" if echo else "peer", "--device", "bench", "--models", str(models)]
    if echo:
        cmd.append("--echo")
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = p.stdout.readline() if p.stdout else ""
    if line.strip() != "READY":
        p.kill()
        raise RuntimeError(f"python peer did not start: {line!r}")
    return p, time.perf_counter() - t0


def ort_inputs(modality: str, specs: dict) -> dict[str, np.ndarray]:
    """The preprocessed sample, as the peer (and edgefuse) feed it to the model."""
    spec = specs[modality]
    pre = spec["preprocess"]
    if modality == "text":
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(ref_models / pre["tokenizer"]))
        tok.no_padding()
        tok.enable_truncation(max_length=int(pre["max_length"]))
        enc = tok.encode(TEXT)
        return {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
    if modality == "vision":
        x, _ = ref.vision_preprocess(IMAGE, pre)
        return {spec["inputs"][0]["name"]: x}
    blocks, _ = ref.audio_blocks(WAV, pre, ref.mel_filterbank(pre))
    return {spec["inputs"][0]["name"]: blocks}


def time_ort(sess: ort.InferenceSession, feeds: dict, n: int) -> list[float]:
    sess.run(None, feeds)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def tract_bench(exe: Path, config: Path, models: Path, modality: str, n: int) -> dict:
    cmd = [str(exe), "--config", str(config), "bench", "--json", "-m", modality, "-b", "1", "-t", "1", "-n", str(n),
           "--warmup", "1", "--text", TEXT, "--image", str(IMAGE), "--audio", str(WAV)]
    out = subprocess.run(cmd, env=dict(os.environ, EDGEFUSE_MODELS=str(models)), cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def machine_facts(exe: Path) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines()
                  if l.startswith("model name")), platform.machine())
    lock = (REPO / "Cargo.lock").read_text()
    tv = lock.split('name = "tract-onnx"\nversion = "', 1)[1].split('"', 1)[0] if "tract-onnx" in lock else "?"
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "edgefuse": f"{rev}{' (+uncommitted changes)' if dirty else ''}, {exe}",
        "tract": tv,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "paho": mqtt.__version__ if hasattr(mqtt, "__version__") else "?",
        "mosquitto": mosq[0] if mosq else "?",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


ref_models: Path = REPO / "models"


def main() -> None:
    global ref_models
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgefuse", type=Path, required=True, help="the (release) edgefuse binary")
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEFUSE_MODELS", REPO / "models")))
    ap.add_argument("--modality", action="append", choices=MODALITIES)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per modality")
    ap.add_argument("--per-round", type=int, default=5, help="items per contender per round")
    ap.add_argument("--burst", type=int, default=8, help="items sent at once for throughput")
    ap.add_argument("--starts", type=int, default=4,
                    help="daemon starts timed to READY (the first compiles the models; at least 2)")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--peer-threads", type=int, help="onnxruntime threads in the peer (default: its own)")
    ap.add_argument("--doc", type=Path, help="markdown file to update between the side-by-side markers")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    if args.starts < 2:
        ap.error("--starts must be at least 2 (first start and later starts are reported apart)")
    ref_models = args.models.resolve()
    modalities = args.modality or MODALITIES
    if not shutil.which("mosquitto"):
        sys.exit("error: mosquitto not found (Debian: apt-get install mosquitto)")
    specs = tomllib.loads((ref_models / "manifest.toml").read_text())["models"]
    started = time.monotonic()
    machine = machine_facts(args.edgefuse)
    payloads = {"text": TEXT.encode(), "vision": IMAGE.read_bytes(), "audio": WAV.read_bytes()}

    with tempfile.TemporaryDirectory(prefix="edgefuse-sbs-") as tmps:
        tmp = Path(tmps)
        broker, port = start_mosquitto(tmp)
        static = tmp / "static-images"
        static.mkdir()

        def config_text(prefix: str, state: str) -> str:
            # A fresh state directory: the first start compiles the models (NNEF cache), the
            # later ones start from the compiled form, as a service does after its first start.
            return (f'device_id = "bench"\nstate_dir = "{tmp}/{state}"\n'
                    f'[mqtt]\nbroker = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "{prefix}"\n'
                    # Two daemons with one device id: their client ids must differ.
                    f'client_id = "{prefix}-bench"\n'
                    f'[stats]\ninterval_s = 0\n'
                    f'[sources.image_dir]\nenabled = true\npath = "{static}"\n')

        configs = {name: tmp / f"{name}.toml" for name in DAEMONS}
        configs["edgefuse"].write_text(
            # The very files the peer and raw onnxruntime run, and only those: the fp32
            # originals, no image classifier, no shared space, so the comparison is of runtimes
            # doing the same work, not of compression (docs/models.md has the variants).
            config_text("edgefuse", "state")
            + "".join(f'[encoders.{m}]\nmodel = "{m}"\n' for m in ("text", "vision", "audio"))
            + "[encoders.classifier]\nenabled = false\n[semantic]\nenabled = false\n"
            + "[shared_space]\nenabled = false\n"
        )
        # As shipped (configs/default.toml): compressed models, image classifier, shared space.
        configs["edgefused"].write_text(config_text("edgefused", "state-defaults"))
        procs: list[subprocess.Popen] = []
        shipped = tomllib.loads((REPO / "configs/default.toml").read_text())["encoders"]
        res: dict = {"machine": machine, "modalities": {},
                     "default_models": [shipped[m]["model"] for m in (*MODALITIES, "classifier")]}
        try:
            ready: dict[str, list[float]] = {name: [] for name in (*DAEMONS, "peer")}
            daemons: dict[str, subprocess.Popen] = {}
            for i in range(args.starts):
                for p in daemons.values():
                    stop(p)
                daemons = {}
                for name in DAEMONS:
                    daemons[name], t = start_edgefuse(args.edgefuse, configs[name], ref_models, tmp, timeout=300)
                    procs = list(daemons.values())  # stopped in `finally` if anything below fails
                    ready[name].append(t)
                daemons["peer"], t = start_peer(sys.executable, port, ref_models, args.peer_threads)
                procs = list(daemons.values())
                ready["peer"].append(t)
                log(f"start {i + 1}: READY in " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in ready.items()))
            echo, _ = start_peer(sys.executable, port, ref_models, None, echo=True)
            procs.append(echo)
            res["ready_s"] = ready
            contenders = (*DAEMONS, "peer", "echo")
            drv = Driver(port, list(contenders), "bench-driver")
            for m in modalities:
                for prefix in contenders:
                    drv.one(prefix, m, payloads[m])  # warm-up
            for m in modalities:
                feeds = ort_inputs(m, specs)
                path = ref_models / specs[m]["file"]
                o1 = ort.SessionOptions()
                o1.intra_op_num_threads = 1
                sessions = {
                    "1": ort.InferenceSession(str(path), o1, providers=["CPUExecutionProvider"]),
                    "default": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
                }
                r: dict[str, list[float]] = {k: [] for k in (
                    *contenders, "ort1", "ortd", "tract", "tract_pre", "tract_post", "tract_defaults",
                    *(f"burst_{c}" for c in (*DAEMONS, "peer")))}
                for rnd in range(args.rounds):
                    for _ in range(args.per_round):
                        for c in contenders:
                            r[c].append(drv.one(c, m, payloads[m]))
                            if c in DAEMONS and drv.last_timings:
                                r.setdefault(f"inside_{c}", []).append(drv.last_timings)
                    r["ort1"] += time_ort(sessions["1"], feeds, args.per_round)
                    r["ortd"] += time_ort(sessions["default"], feeds, args.per_round)
                    tb = tract_bench(args.edgefuse, configs["edgefuse"], ref_models, m, args.per_round)["modalities"][0]["runs"][0]
                    r["tract"].append(tb["inference_ms"]["p50"])
                    r["tract_pre"].append(tb["preprocess_ms"]["p50"])
                    r["tract_post"].append(tb["postprocess_ms"]["p50"])
                    tb = tract_bench(args.edgefuse, configs["edgefused"], ref_models, m, args.per_round)["modalities"][0]["runs"][0]
                    r["tract_defaults"].append(tb["inference_ms"]["p50"])
                    for c in (*DAEMONS, "peer"):
                        r[f"burst_{c}"].append(drv.burst(c, m, payloads[m], args.burst))
                    log(f"{m} round {rnd + 1}: " + ", ".join(
                        f"{c} {med(r[c][-args.per_round:]):.1f} ms" for c in (*DAEMONS, "peer"))
                        + f", tract {r['tract'][-1]:.1f} / {r['tract_defaults'][-1]:.1f} ms, "
                        f"ORT 1t {med(r['ort1'][-args.per_round:]):.1f} ms")
                res["modalities"][m] = r
            time.sleep(2)
            named = [(name, daemons[name]) for name in (*DAEMONS, "peer")]
            c0 = {name: cpu_seconds(p.pid) for name, p in named}
            time.sleep(args.idle_seconds)
            res["idle_cpu_percent"] = {
                name: (cpu_seconds(p.pid) - c0[name]) / args.idle_seconds * 100 for name, p in named}
            res["rss_bytes"] = {name: proc_status(p.pid) for name, p in named}
            # What each daemon measured at its first start for a lone run (encoders.lone_run_threads).
            res["lone_runs"] = {}
            for name, state in (("edgefuse", "state"), ("edgefused", "state-defaults")):
                kept = tmp / state / "lone-threads.json"
                if kept.exists():
                    res["lone_runs"][name] = json.loads(kept.read_text())
            drv.c.loop_stop()
        finally:
            for p in procs:
                if p:
                    stop(p)
            stop(broker)
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["wall_s"] = time.monotonic() - started
    md = markdown(res, specs, args)
    print(md)
    if args.doc:
        update_doc(args.doc, md)
        log(f"updated {args.doc}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


def markdown(res: dict, specs: dict, args: argparse.Namespace) -> str:
    m = res["machine"]
    f = lambda x: f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}"  # noqa: E731
    cell = lambda xs: f"{f(med(xs))} / {f(p95(xs))}"  # noqa: E731
    default_models = ", ".join(f"`{d}`" for d in res.get("default_models", [])) or "see configs/default.toml"
    lines = [
        f"Measured {m['date']} by `bench/run` ({m['wall_s']:.0f} s wall for this part); "
        f"{args.rounds} interleaved rounds × {args.per_round} items per contender and modality, "
        f"bursts of {args.burst}.",
        "",
        f"- CPU: {m['cpu']}, {m['cpus']} logical CPUs (load average "
        f"{m['load_before']} before, {m['load_after']} after): read the ratios, not the absolute times.",
        f"- {m['kernel']}; edgefuse {m['edgefuse']}; tract-onnx {m['tract']}; "
        f"onnxruntime {m['onnxruntime']}; Python {m['python']}; {m['mosquitto']}.",
        "- edgefuse runs at its default `encoders.threads` and `encoders.runs_in_flight`, twice: "
        "**equal work** (the fp32 originals `text`, `vision`, `audio` of models/manifest.toml, the "
        "very files the peer runs, and nothing else: image classifier and shared space off) and "
        f"**as shipped** (configs/default.toml: {default_models}, plus the image classifier on every "
        "photo and the shared space; mean cosine ≥ 0.98 to the fp32 originals, docs/models.md).",
        f"- Python peer: onnxruntime with "
        f"{f'{args.peer_threads} intra-op thread(s)' if args.peer_threads else 'its default thread count'}, "
        "the fp32 originals.",
        "",
        "Per item, milliseconds as median / p95. End to end = publish the input → receive its "
        "`embedding/<m>` (driver, daemons and mosquitto on one machine). Floor = the same round "
        "trip to a responder that computes nothing (`python_peer.py --echo`); e2e − floor is "
        "what the daemon itself spends. Raw tract = the same model alone on the preprocessed "
        "sample (`edgefuse bench` inference stage, batch 1, 1 thread; median of the per-round "
        "medians). ORT = raw onnxruntime on the fp32 file.",
        "",
        "| modality | edgefuse | edgefuse e2e | Python peer e2e | peer / edgefuse | floor | raw tract "
        "| e2e / raw tract | (e2e − floor) / raw tract | ORT 1 thread | ORT default "
        "| tract / ORT 1t | tract / ORT default |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mod, r in res["modalities"].items():
        fl, peer = med(r["echo"]), med(r["peer"])
        for name, raw, label in (("edgefuse", "tract", "equal work"), ("edgefused", "tract_defaults", "as shipped")):
            t, e = med(r[raw]), med(r[name])
            ort_cells = (f"{cell(r['ort1'])} | {cell(r['ortd'])} | {t / med(r['ort1']):.2f} "
                         f"| {t / med(r['ortd']):.2f}") if raw == "tract" else "| | |"
            lines.append(
                f"| {mod} | {label} | {cell(r[name])} | {cell(r['peer'])} | {peer / e:.2f} "
                f"| {f(fl)} | {f(t)} | {e / t:.2f} | {(e - fl) / t:.2f} | {ort_cells} |"
            )
    lines += [
        "",
        "Where edgefuse's end to end goes, per item (medians, ms): inside = the answer's own "
        "`timings_ms.total` (received → result leaves the worker: queue, preprocessing, model, "
        "postprocessing, image classifier); the model = its `timings_ms.inference`; outside = "
        "e2e − inside − floor (fusion, JSON, the spool's group commit and the publish). The daemon's "
        "own cost beside the model is inside − model + outside.",
        "",
        "| modality | edgefuse | e2e | floor | inside | of it the model | outside | daemon beside the model |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mod, r in res["modalities"].items():
        fl = med(r["echo"])
        for name, label in (("edgefuse", "equal work"), ("edgefused", "as shipped")):
            inside = r.get(f"inside_{name}") or []
            if not inside:
                continue
            e = med(r[name])
            tot = med([t["total"] for t in inside])
            inf = med([t["inference"] for t in inside])
            out = e - tot - fl
            lines.append(f"| {mod} | {label} | {f(e)} | {f(fl)} | {f(tot)} | {f(inf)} | {f(out)} "
                         f"| {f(tot - inf + out)} |")
    lines += [
        "",
        f"Throughput, bursts of {args.burst} items published at once, items/s (median of rounds), "
        "and edgefuse's own stages for the fp32 originals in `edgefuse bench` (batch 1, 1 thread, ms):",
        "",
        "| modality | edgefuse equal work | edgefuse as shipped | peer | equal work / peer "
        "| as shipped / peer | preprocess | inference | postprocess |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mod, r in res["modalities"].items():
        be, bd, bp = med(r["burst_edgefuse"]), med(r["burst_edgefused"]), med(r["burst_peer"])
        lines.append(f"| {mod} | {be:.2f} | {bd:.2f} | {bp:.2f} | {be / bp:.2f} | {bd / bp:.2f} "
                     f"| {f(med(r['tract_pre']))} | {f(med(r['tract']))} | {f(med(r['tract_post']))} |")
    rss, idle, ready = res["rss_bytes"], res["idle_cpu_percent"], res["ready_s"]
    mb = lambda b: f"{b / 1e6:.0f} MB"  # noqa: E731
    row = lambda title, get: (  # noqa: E731
        f"| {title} | {get('edgefuse')} | {get('edgefused')} | {get('peer')} |")
    ratio = lambda get: f"{get('edgefuse') / get('peer'):.2f} / {get('edgefused') / get('peer'):.2f}"  # noqa: E731
    vm = lambda key: lambda n: rss[n][key]  # noqa: E731
    first = lambda n: ready[n][0]  # noqa: E731
    later = lambda n: med(ready[n][1:])  # noqa: E731
    lines += [
        "",
        "Daemons after the run (all three modalities loaded):",
        "",
        "| | edgefuse equal work | edgefuse as shipped | Python peer | equal work / peer, as shipped / peer |",
        "|---|---:|---:|---:|---:|",
        row("RSS (VmRSS)", lambda n: mb(vm("VmRSS")(n)))[:-1] + f"| {ratio(vm('VmRSS'))} |",
        row("peak RSS (VmHWM)", lambda n: mb(vm("VmHWM")(n)))[:-1] + f"| {ratio(vm('VmHWM'))} |",
        row("start to READY, first start (models from ONNX, then compiled), s",
            lambda n: f"{first(n):.2f}")[:-1] + f"| {ratio(first)} |",
        row(f"start to READY, later starts (compiled models), s (median of {len(ready['peer']) - 1})",
            lambda n: f"{later(n):.2f}")[:-1] + f"| {ratio(later)} |",
        row(f"idle CPU over {args.idle_seconds:.0f} s (edgefuse with a static `image_dir` source)",
            lambda n: f"{idle[n]:.2f} %") + " |",
    ]
    lone = res.get("lone_runs") or {}
    if lone:
        lines += [
            "",
            "A lone run on every core (`encoders.lone_run_threads = \"auto\"`): what each daemon "
            "measured at its first start on the built-in samples (median ms at 1 thread and at "
            "all threads; every core is used when alone at ≤ 0.9×; \"busy\" = other processes' "
            "CPU meanwhile, in cores):",
            "",
            "| daemon | model | 1 thread | all threads | ratio | threads | busy | lone run uses |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, label in (("edgefuse", "equal work"), ("edgefused", "as shipped")):
            for key, m in sorted((lone.get(name) or {}).items()):
                one, every = m["one_thread_ms"], m["all_threads_ms"]
                busy = m.get("others_busy_cores")
                gains = m["threads"] > 1 and every <= 0.9 * one
                lines.append(
                    f"| {label} | `{key.split()[0]}` | {f(one)} | {f(every)} | {every / one:.2f} "
                    f"| {m['threads']} | {'' if busy is None else f'{busy:.2f}'} "
                    f"| {'every core' if gains else 'one thread'} |")
    return "\n".join(lines) + "\n"


def update_doc(doc: Path, body: str) -> None:
    block = f"{BEGIN}\n{body}{END}"
    text = doc.read_text() if doc.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(head + block + tail)
    else:
        doc.write_text(text.rstrip("\n") + "\n\n## Side by side\n\n" + block + "\n")


if __name__ == "__main__":
    main()
