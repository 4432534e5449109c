"""What the MQTT benchmarks share: a driver client that publishes inputs and times the matching
embeddings, and starting/stopping `edgefuse run` (ready on sd_notify READY=1).

Used by side_by_side.py and spool_overhead.py (both run in bench/run's venv, with paho-mqtt)."""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
IN_TOPIC = {"text": "text", "vision": "image", "audio": "audio"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen, int]:
    """mosquitto on a free loopback port, config in `tmp`; returns it and the port. Without
    TCP_NODELAY mosquitto holds small packets for the peer's delayed ACK (Nagle): ~40 ms per
    hop on loopback, more than the text model itself."""
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return broker, port


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Driver:
    """One MQTT client publishing inputs under `<prefix>/bench/in/…` and timing the matching
    `embedding/<modality>` (or `error`) by id."""

    def __init__(self, port: int, prefixes: list[str], client_id: str) -> None:
        self.last_timings: dict | None = None
        self.waiting: dict[str, tuple[threading.Event, list]] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port)
        # As in python_peer.py: without TCP_NODELAY the driver's own publishes wait for ACKs.
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.loop_start()
        for prefix in prefixes:
            for what in ("embedding/+", "error"):
                self.c.subscribe(f"{prefix}/bench/{what}", qos=1)
        time.sleep(0.5)

    def on_message(self, _c, _u, msg) -> None:
        t = time.perf_counter()
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            w = self.waiting.pop(str(obj.get("id")), None)
        if w:
            w[1].append((t, msg.topic, obj))
            w[0].set()

    def send(self, prefix: str, modality: str, payload: bytes) -> tuple[str, threading.Event, list]:
        item_id = uuid.uuid4().hex[:12]
        ev, box = threading.Event(), []
        with self.lock:
            self.waiting[item_id] = (ev, box)
        props = Properties(PacketTypes.PUBLISH)
        if modality == "text":
            payload = json.dumps({"id": item_id, "text": payload.decode()}).encode()
        else:
            props.CorrelationData = item_id.encode()
        self.c.publish(f"{prefix}/bench/in/{IN_TOPIC[modality]}", payload, qos=1, properties=props)
        return item_id, ev, box

    def one(self, prefix: str, modality: str, payload: bytes, timeout: float = 300) -> float:
        """Milliseconds from publishing one input to its embedding."""
        t0 = time.perf_counter()
        item_id, ev, box = self.send(prefix, modality, payload)
        if not ev.wait(timeout):
            raise RuntimeError(f"{prefix}: no answer for {modality} item {item_id}")
        t1, topic, obj = box[0]
        if not topic.endswith(f"embedding/{modality}"):
            raise RuntimeError(f"{prefix}: {modality} item {item_id} failed: {obj}")
        # The answer's own stage timings (edgefuse's `timings_ms`), for attributing the e2e time.
        self.last_timings = obj.get("timings_ms")
        return (t1 - t0) * 1e3

    def burst(self, prefix: str, modality: str, payload: bytes, n: int, timeout: float = 600) -> float:
        """Items per second for `n` inputs published at once."""
        t0 = time.perf_counter()
        pending = [self.send(prefix, modality, payload) for _ in range(n)]
        last = t0
        for item_id, ev, box in pending:
            if not ev.wait(timeout):
                raise RuntimeError(f"{prefix}: no answer for {modality} item {item_id}")
            last = max(last, box[0][0])
        return n / (last - t0)


def start_edgefuse(exe: Path, config: Path, models: Path, tmp: Path,
                   timeout: float = 600) -> tuple[subprocess.Popen, float]:
    """Start `edgefuse run`; return it and the seconds from spawn to READY=1."""
    sock_path = tmp / f"notify-{uuid.uuid4().hex[:6]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(timeout)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), EDGEFUSE_MODELS=str(models),
               EDGEFUSE_LOG="warn")
    t0 = time.perf_counter()
    p = subprocess.Popen([str(exe), "--config", str(config), "run"], env=env, cwd=REPO,
                         stdout=subprocess.DEVNULL)
    try:
        while "READY=1" not in sock.recv(4096).decode(errors="replace").split("\n"):
            pass
        return p, time.perf_counter() - t0
    except socket.timeout:
        p.kill()
        raise RuntimeError(f"{exe} did not send READY=1 within {timeout:.0f} s")
    finally:
        sock.close()
        sock_path.unlink(missing_ok=True)


def stop(p: subprocess.Popen, timeout: float = 30) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
