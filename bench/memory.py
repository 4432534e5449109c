#!/usr/bin/env python3
"""Resident memory of `edgefuse run` with a given config, over its life: after READY, right
after answering a mixed workload, and after it has been quiet for a few seconds (the daemon
trims its heap after each busy spell). VmRSS and VmHWM from /proc/<pid>/status.

Starts mosquitto on a free loopback port, then the daemon with the config given (its broker,
topic prefix, device id and state directory replaced so it runs here), twice on one state
directory: the first start compiles the models, the second starts from the compiled cache
as a service does after its first start. Each start answers --rounds rounds of one text, one
photo and one WAV (every modality the config enables).

    python3 bench/memory.py --edgefuse target/release/edgefuse --config configs/small-board.toml

Needs paho-mqtt (bench/requirements.txt) and mosquitto. `bench/run` builds the binary and the
venv; this script is run by hand (docs/performance.md, "Small board").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from mqtt_driver import Driver, start_edgefuse, start_mosquitto, stop

REPO = Path(__file__).resolve().parent.parent
PAYLOADS = {
    "text": "A man is playing a guitar on the stage.".encode(),
    "vision": (REPO / "tests/fixtures/images/chelsea.jpg").read_bytes(),
    "audio": (REPO / "tests/fixtures/audio/speech_fox.wav").read_bytes(),
}


def status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out


def local_config(config: Path, port: int, state: Path) -> str:
    """The config with what ties it to a device replaced: broker, prefix, id, state dir.
    Top-level keys and the [mqtt] table are rewritten; everything else is kept as written."""
    text = config.read_text()
    parsed = tomllib.loads(text)
    # Drop the keys this script sets, wherever they are written, then set them up front.
    drop_top = {"device_id", "state_dir"}
    drop_mqtt = {"broker", "topic_prefix", "embedded_listen"}
    out, table = [], ""
    for line in text.splitlines():
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            table = m.group(1).strip()
        key = re.match(r"\s*([A-Za-z0-9_]+)\s*=", line)
        if key and ((table == "" and key.group(1) in drop_top)
                    or (table == "mqtt" and key.group(1) in drop_mqtt)):
            continue
        out.append(line)
    head = f'device_id = "bench"\nstate_dir = "{state}"\n'
    body = "\n".join(out)
    mqtt = f'broker = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "edgefuse"\n'
    if "mqtt" in parsed:
        body = re.sub(r"^\s*\[mqtt\]\s*$", "[mqtt]\n" + mqtt.rstrip("\n"), body, count=1, flags=re.M)
    else:
        body += "\n[mqtt]\n" + mqtt
    # The models' directory of a packaged config (/usr/share/...) is replaced by EDGEFUSE_MODELS.
    return head + body + "\n"


def enabled(config_text: str) -> list[str]:
    enc = tomllib.loads(config_text).get("encoders", {})
    return [m for m in ("text", "vision", "audio") if enc.get(m, {}).get("enabled", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edgefuse", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEFUSE_MODELS", REPO / "models")))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quiet-seconds", type=float, default=5.0)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefuse-mem-") as tmps:
        tmp = Path(tmps)
        broker, port = start_mosquitto(tmp)
        cfg = tmp / "edgefuse.toml"
        cfg.write_text(local_config(args.config, port, tmp / "state"))
        modalities = enabled(cfg.read_text())
        try:
            for start in ("first start (compiles the models)", "later start (compiled cache)"):
                ef, ready_s = start_edgefuse(args.edgefuse, cfg, args.models.resolve(), tmp, timeout=600)
                try:
                    at_ready = status(ef.pid)
                    drv = Driver(port, ["edgefuse"], f"mem-{os.getpid()}")
                    for _ in range(args.rounds):
                        for m in modalities:
                            drv.one("edgefuse", m, PAYLOADS[m])
                    after = status(ef.pid)
                    time.sleep(args.quiet_seconds)
                    quiet = status(ef.pid)
                    drv.c.loop_stop()
                    drv.c.disconnect()
                finally:
                    stop(ef)
                rows.append((start, ready_s, at_ready, after, quiet))
                print(f"[memory] {start}: READY {ready_s:.1f} s, RSS {at_ready['VmRSS']:.0f} → "
                      f"{after['VmRSS']:.0f} → {quiet['VmRSS']:.0f} MiB, peak {quiet['VmHWM']:.0f} MiB",
                      file=sys.stderr, flush=True)
        finally:
            stop(broker)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    print(f"`bench/memory.py --config {args.config}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"edgefuse {rev} ({args.edgefuse}), load average {load}; {args.rounds} rounds of "
          f"{', '.join(modalities)}; MiB:\n")
    print(f"| start | READY s | after READY (VmRSS) | after the inputs (VmRSS) | "
          f"quiet {args.quiet_seconds:.0f} s later (VmRSS) | peak (VmHWM) |")
    print("|---|---:|---:|---:|---:|---:|")
    for start, ready_s, a, b, c in rows:
        print(f"| {start} | {ready_s:.1f} | {a['VmRSS']:.0f} | {b['VmRSS']:.0f} | {c['VmRSS']:.0f} | {c['VmHWM']:.0f} |")


if __name__ == "__main__":
    main()
