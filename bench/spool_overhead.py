#!/usr/bin/env python3
"""What the daemon adds to the model, with the spool on, before and after a change, in one run.

Starts mosquitto on a free loopback port and up to three `edgefuse run` daemons on it, each with
its own topic prefix and state directory (on disk, so fsync costs what it costs):

* `after`:    --edgefuse, spool on (the default: QoS 1, `spool.fsync = true`);
* `before`:   --baseline (optional; e.g. a build of the previous commit), spool on;
* `nospool`:  --edgefuse with `[spool] enabled = false` (what the spool costs at all).

Then per modality, in interleaved rounds: one item at a time to each daemon (publish → its
`embedding/<m>`), a burst of --burst items at once to each (items/s to the last answer), and
raw tract (`edgefuse bench --json`, inference stage, batch 1, 1 thread) on the same input.
Prints a markdown table of medians and ratios from this one run.

    python3 bench/spool_overhead.py --edgefuse target/release/edgefuse \\
        --baseline /path/to/previous/edgefuse --models models

Needs paho-mqtt (bench/requirements.txt) and mosquitto.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mqtt_driver import IN_TOPIC, Driver, med, start_edgefuse, start_mosquitto, stop

REPO = Path(__file__).resolve().parent.parent
TEXT = "A man is playing a guitar on the stage."
IMAGE = REPO / "tests/fixtures/images/chelsea.jpg"
WAV = REPO / "tests/fixtures/audio/speech_fox.wav"


def log(msg: str) -> None:
    print(f"[spool-overhead] {msg}", file=sys.stderr, flush=True)


def tract_ms(exe: Path, config: Path, models: Path, modality: str, n: int) -> float:
    cmd = [str(exe), "--config", str(config), "bench", "--json", "-m", modality, "-b", "1", "-t", "1",
           "-n", str(n), "--warmup", "1", "--text", TEXT, "--image", str(IMAGE), "--audio", str(WAV)]
    out = subprocess.run(cmd, env=dict(os.environ, EDGEFUSE_MODELS=str(models)), cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["modalities"][0]["runs"][0]["inference_ms"]["p50"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgefuse", type=Path, required=True)
    ap.add_argument("--baseline", type=Path, help="the binary to compare against (spool on)")
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEFUSE_MODELS", REPO / "models")))
    ap.add_argument("--modality", action="append", choices=list(IN_TOPIC))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--burst", type=int, default=8)
    ap.add_argument("--state", type=Path, default=Path("/var/tmp"),
                    help="where the daemons' state (spool) goes: a real disk, not tmpfs")
    args = ap.parse_args()
    modalities = args.modality or ["text"]
    models = args.models.resolve()
    payloads = {"text": TEXT.encode(), "vision": IMAGE.read_bytes(), "audio": WAV.read_bytes()}
    daemons = {"after": (args.edgefuse, True), "nospool": (args.edgefuse, False)}
    if args.baseline:
        daemons["before"] = (args.baseline, True)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgefuse-spool-", dir=args.state) as tmps:
        tmp = Path(tmps)
        broker, port = start_mosquitto(tmp)
        procs: dict[str, subprocess.Popen] = {}
        configs: dict[str, Path] = {}
        try:
            for name, (exe, spool) in daemons.items():
                cfg = tmp / f"{name}.toml"
                cfg.write_text(
                    f'device_id = "bench"\nstate_dir = "{tmp}/state-{name}"\n[mqtt]\n'
                    f'broker = "mqtt://127.0.0.1:{port}"\nclient_id = "edgefuse-{name}"\n'
                    f'topic_prefix = "{name}"\n[stats]\ninterval_s = 0\n'
                    f"[spool]\nenabled = {'true' if spool else 'false'}\n"
                    + "".join(f'[encoders.{m}]\nmodel = "{m}"\n' for m in ("text", "vision", "audio")))
                configs[name] = cfg
                procs[name], _ = start_edgefuse(exe, cfg, models, tmp)
                log(f"{name} ready")
            drv = Driver(port, list(daemons), "spool-overhead-driver")
            for m in modalities:
                for name in daemons:
                    drv.one(name, m, payloads[m])  # warm-up
            res: dict = {}
            for m in modalities:
                r: dict = {f"one_{n}": [] for n in daemons} | {f"burst_{n}": [] for n in daemons} | {"tract": []}
                for rnd in range(args.rounds):
                    # A different daemon goes first each round, so no one always follows the
                    # raw tract process (or anything else) on a shared machine.
                    order = list(daemons)[rnd % len(daemons):] + list(daemons)[:rnd % len(daemons)]
                    for _ in range(args.per_round):
                        for name in order:
                            r[f"one_{name}"].append(drv.one(name, m, payloads[m]))
                    r["tract"].append(tract_ms(args.edgefuse, configs["after"], models, m, args.per_round))
                    for name in order:
                        r[f"burst_{name}"].append(drv.burst(name, m, payloads[m], args.burst))
                    log(f"{m} round {rnd + 1}: " + ", ".join(
                        f"{n} {med(r[f'one_{n}'][-args.per_round:]):.2f} ms" for n in daemons)
                        + f", tract {r['tract'][-1]:.2f} ms")
                res[m] = r
            drv.c.loop_stop()
        finally:
            for p in procs.values():
                stop(p)
            stop(broker)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.machine())
    print(f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `bench/spool_overhead.py` "
          f"({time.monotonic() - started:.0f} s); {cpu}, {os.cpu_count()} logical CPUs, load average "
          f"{load_before} before, {' '.join(f'{x:.2f}' for x in os.getloadavg())} after; "
          f"{args.rounds} interleaved rounds × {args.per_round} items per daemon, bursts of {args.burst}; "
          f"state on {args.state}.\n")
    names = list(daemons)
    print("| modality | raw tract ms | " + " | ".join(f"{n} e2e ms | {n} e2e / raw" for n in names)
          + (" | after / before per item | after / before burst items/s" if "before" in daemons else "") + " |")
    print("|---|---:|" + "---:|---:|" * len(names) + ("---:|---:|" if "before" in daemons else ""))
    for m, r in res.items():
        t = med(r["tract"])
        cells = " | ".join(f"{med(r[f'one_{n}']):.2f} | {med(r[f'one_{n}']) / t:.2f}" for n in names)
        extra = ""
        if "before" in daemons:
            extra = (f" | {med(r['one_after']) / med(r['one_before']):.2f}"
                     f" | {med(r['burst_after']) / med(r['burst_before']):.2f}")
        print(f"| {m} | {t:.2f} | {cells}{extra} |")
    print("\nBursts, items/s (median of rounds): " + ", ".join(
        f"{m}: " + ", ".join(f"{n} {med(r[f'burst_{n}']):.1f}" for n in names) for m, r in res.items()))


if __name__ == "__main__":
    main()
