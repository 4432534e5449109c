#!/usr/bin/env python3
"""`encoders.lone_run_threads` on against off, in one run: two edgefuse daemons at the shipped
defaults, one with `lone_run_threads = "auto"` (the default) and one with 1, on one mosquitto
broker on loopback; per modality, interleaved rounds of single items one at a time (latency) and
bursts published at once (throughput, where a burst's first item may start as a lone run before
the rest arrive). Prints a markdown table of medians and the on / off ratios.

    bench/lone_run.py --edgefuse target/release/edgefuse [--rounds 5] [--burst 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from mqtt_driver import Driver, med, start_edgefuse, start_mosquitto, stop  # noqa: E402

PAYLOADS = {
    "text": b"A man is playing a guitar on the stage.",
    "vision": (REPO / "tests/fixtures/images/chelsea.jpg").read_bytes(),
    "audio": (REPO / "tests/fixtures/audio/speech_fox.wav").read_bytes(),
}
DAEMONS = {"lone": '"auto"', "single": "1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgefuse", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEFUSE_MODELS", REPO / "models")))
    ap.add_argument("--modality", action="append", choices=list(PAYLOADS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--burst", type=int, default=8)
    args = ap.parse_args()
    modalities = args.modality or list(PAYLOADS)
    with tempfile.TemporaryDirectory(prefix="edgefuse-lone-") as tmps:
        tmp = Path(tmps)
        broker, port = start_mosquitto(tmp)
        procs = []
        try:
            for name, value in DAEMONS.items():
                conf = tmp / f"{name}.toml"
                conf.write_text(
                    f'device_id = "bench"\nstate_dir = "{tmp}/state-{name}"\n'
                    f"[encoders]\nlone_run_threads = {value}\n"
                    f'[mqtt]\nbroker = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "{name}"\n'
                    f'client_id = "{name}-bench"\n[stats]\ninterval_s = 0\n')
                p, _ = start_edgefuse(args.edgefuse, conf, args.models.resolve(), tmp, timeout=300)
                procs.append(p)
            drv = Driver(port, list(DAEMONS), "lone-driver")
            rows = []
            for m in modalities:
                for name in DAEMONS:
                    drv.one(name, m, PAYLOADS[m])  # warm-up
                one = {n: [] for n in DAEMONS}
                burst = {n: [] for n in DAEMONS}
                for _ in range(args.rounds):
                    for _ in range(args.per_round):
                        for name in DAEMONS:
                            one[name].append(drv.one(name, m, PAYLOADS[m]))
                    for name in DAEMONS:
                        burst[name].append(drv.burst(name, m, PAYLOADS[m], args.burst))
                rows.append((m, {n: med(v) for n, v in one.items()}, {n: med(v) for n, v in burst.items()}))
            chosen = {}
            for name in DAEMONS:
                kept = tmp / f"state-{name}" / "lone-threads.json"
                if kept.exists():
                    chosen[name] = json.loads(kept.read_text())
            drv.c.loop_stop()
        finally:
            for p in procs:
                stop(p)
            stop(broker)
    print(f"Load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.rounds} rounds × {args.per_round} single items, bursts of {args.burst}.\n")
    print("| modality | one item, on (ms) | off (ms) | on / off | burst on (items/s) | off | on / off |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, one, burst in rows:
        print(f"| {m} | {one['lone']:.1f} | {one['single']:.1f} | {one['lone'] / one['single']:.2f} "
              f"| {burst['lone']:.2f} | {burst['single']:.2f} | {burst['lone'] / burst['single']:.2f} |")
    for name, kept in chosen.items():
        for key, v in sorted(kept.items()):
            print(f"{name}: {key.split()[0]} {v['one_thread_ms']:.1f} → {v['all_threads_ms']:.1f} ms")


if __name__ == "__main__":
    main()
