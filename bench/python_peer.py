#!/usr/bin/env python3
"""The Python peer: what a user would otherwise write instead of edgefuse.

onnxruntime + paho-mqtt, the same ONNX files (sha256-checked against models/manifest.toml) and
the same preprocessing (imported from tests/golden/make_reference.py, which the golden tests
show edgefuse agrees with): subscribe to `<prefix>/<device>/in/{text,image,audio}`, embed each
message as it arrives (in paho's network thread, one at a time) and publish
`<prefix>/<device>/embedding/<modality>` as JSON with the same `id` rules as edgefuse (JSON `id`
for text, else MQTT 5 correlation data). Prints `READY` on stdout once every model is loaded
and the subscriptions are acknowledged.

    bench/python_peer.py --port 1883 --prefix peer --device bench [--threads N]
    bench/python_peer.py --echo ...   # no models: answer at once with a zero vector

`--echo` measures the floor of the round trip (driver → mosquitto → responder → mosquitto →
driver) that every end-to-end time in docs/performance.md includes.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
import tokenizers
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "golden"))
import make_reference as ref  # noqa: E402  (same preprocessing as the golden references)


class Peer:
    def __init__(self, models: Path, threads: int | None) -> None:
        manifest = tomllib.loads((models / "manifest.toml").read_text())["models"]
        self.specs = {k: manifest[k] for k in ("text", "vision", "audio")}
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions = {k: self._session(models, spec, opts) for k, spec in self.specs.items()}
        pre = self.specs["text"]["preprocess"]
        self.tok = tokenizers.Tokenizer.from_file(str(models / pre["tokenizer"]))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=int(pre["max_length"]))
        self.mel_w = ref.mel_filterbank(self.specs["audio"]["preprocess"])

    @staticmethod
    def _session(models: Path, spec: dict, opts: ort.SessionOptions) -> ort.InferenceSession:
        path = models / spec["file"]
        if ref.sha256(path) != spec["sha256"]:
            sys.exit(f"sha256 mismatch for {path}")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def text(self, s: str) -> np.ndarray:
        enc = self.tok.encode(s)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        hidden = self.sessions["text"].run(None, feeds)[0][0]
        mask = feeds["attention_mask"][0].astype(np.float32)[:, None]
        return ref.l2n((hidden * mask).sum(0) / max(mask.sum(), 1e-9))

    def image(self, payload: bytes) -> np.ndarray:
        spec = self.specs["vision"]
        x, _ = ref.vision_preprocess(io.BytesIO(payload), spec["preprocess"])
        name = spec["inputs"][0]["name"]
        return ref.l2n(self.sessions["vision"].run(None, {name: x})[0][0])

    def audio(self, payload: bytes) -> np.ndarray:
        spec = self.specs["audio"]
        blocks, _ = ref.audio_blocks(io.BytesIO(payload), spec["preprocess"], self.mel_w)
        name = spec["inputs"][0]["name"]
        emb = self.sessions["audio"].run(None, {name: blocks})[0]
        return ref.l2n(emb.mean(axis=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--prefix", default="peer")
    ap.add_argument("--device", default="bench")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: its own)")
    ap.add_argument("--echo", action="store_true", help="load nothing; answer with zero vectors")
    args = ap.parse_args()

    peer = None if args.echo else Peer(args.models.resolve(), args.threads)
    dims = {"text": 384, "vision": 384, "audio": 512}
    base = f"{args.prefix}/{args.device}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.prefix}-{args.device}",
                         protocol=mqtt.MQTTv5)
    subscribed = []

    def on_connect(c, _userdata, _flags, _rc, _props):
        # paho leaves Nagle on: a PUBACK followed by a small publish then waits for the
        # broker's delayed ACK (~40 ms on loopback). Every contender gets TCP_NODELAY.
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe([(f"{base}/in/{m}", 1) for m in ("text", "image", "audio")])

    def on_subscribe(_c, _userdata, _mid, _codes, _props):
        subscribed.append(True)

    def on_message(c, _userdata, msg):
        t0 = time.perf_counter()
        kind = msg.topic.rsplit("/", 1)[-1]
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        item_id = corr.decode("utf-8", "replace") if corr else None
        try:
            if peer is None:
                modality = "vision" if kind == "image" else kind
                if kind == "text" and msg.payload.startswith(b"{"):
                    item_id = json.loads(msg.payload).get("id", item_id)
                v = np.zeros(dims[modality], dtype=np.float32)
            elif kind == "text":
                text = msg.payload.decode("utf-8")
                if text.startswith("{"):
                    obj = json.loads(text)
                    item_id, text = obj.get("id", item_id), obj["text"]
                v, modality = peer.text(text), "text"
            elif kind == "image":
                v, modality = peer.image(msg.payload), "vision"
            else:
                v, modality = peer.audio(msg.payload), "audio"
        except Exception as e:  # a bad input must not kill the peer
            c.publish(f"{base}/error", json.dumps({"id": item_id, "reason": str(e)}), qos=1)
            return
        out = {
            "schema": 1,
            "id": item_id,
            "modality": modality,
            "dim": int(v.shape[0]),
            "timings_ms": {"total": (time.perf_counter() - t0) * 1e3},
            "vector": [float(x) for x in v],
        }
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        c.publish(f"{base}/embedding/{modality}", json.dumps(out), qos=1, properties=props)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_start()
    while not subscribed:
        time.sleep(0.005)
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()


if __name__ == "__main__":
    main()
