#!/usr/bin/env python3
"""Compare `edgefuse embed` output (JSON lines, fp32 models) with the onnxruntime references in
tests/golden/reference.json, with the tolerances of tests/integration/encoders.rs: cosine >= 0.999 for text
and audio (clip and every block), >= 0.99 for vision; every vector of unit norm.

    compare_golden.py LABEL REFERENCE.json EMBED.jsonl

Every input in EMBED.jsonl must have a reference entry and vice versa for the inputs listed;
prints one line per input and exits 1 on any failure. Standard library only.
"""

import json
import math
import sys

MIN_COSINE = {"text": 0.999, "vision": 0.99, "audio": 0.999}


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    label, ref_path, got_path = argv
    ref = json.load(open(ref_path))
    refs = {(m, item["input"]): item for m in MIN_COSINE for item in ref[m]}
    fails = seen = 0
    for line in open(got_path):
        if not line.strip():
            continue
        got = json.loads(line)
        modality = {"image": "vision"}.get(got["modality"], got["modality"])
        key = (modality, got["input"])
        want = refs.get(key)
        if want is None:
            print(f"  FAIL {label} {modality} {got['input'][:40]!r}: no reference")
            fails += 1
            continue
        seen += 1
        bound = MIN_COSINE[modality]
        problems = []
        c = cosine(got["vector"], want["vector"])
        if c < bound:
            problems.append(f"cosine {c:.6f} < {bound}")
        n = math.sqrt(sum(x * x for x in got["vector"]))
        if abs(n - 1) > 1e-4:
            problems.append(f"norm {n:.6f}")
        if want.get("blocks") is not None:
            blocks = got.get("blocks") or []
            if len(blocks) != len(want["blocks"]):
                problems.append(f"{len(blocks)} blocks, reference {len(want['blocks'])}")
            for i, (g, w) in enumerate(zip(blocks, want["blocks"])):
                cb = cosine(g, w)
                if cb < bound:
                    problems.append(f"block {i} cosine {cb:.6f}")
        status = "FAIL" if problems else "ok"
        print(f"  {status} {label} {modality} {got['input'][:40]!r}: cosine {c:.6f} {'; '.join(problems)}")
        fails += bool(problems)
    if seen == 0:
        print(f"  FAIL {label}: no embeddings to compare")
        fails += 1
    print(f"{label}: {seen} inputs compared with onnxruntime, {fails} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
