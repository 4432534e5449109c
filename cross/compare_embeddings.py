#!/usr/bin/env python3
"""Compare `edgefuse embed` JSON lines from two builds (e.g. x86-64 and an ARM build under qemu).

    compare_embeddings.py REFERENCE.jsonl CANDIDATE.jsonl [--label NAME]

Lines are matched by (modality, input); every reference line must have a candidate. The cosine
of each vector (and of each audio block) must reach the golden tests' tolerance: 0.999 for text
and audio, 0.99 for vision (tests/integration/encoders.rs). Prints one line per input and exits 1 on any
miss. Standard library only.
"""

import json
import math
import sys

MIN_COSINE = {"text": 0.999, "audio": 0.999, "vision": 0.99}


def load(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            out[(obj["modality"], obj["input"])] = obj
    return out


def cosine(a, b):
    if len(a) != len(b):
        return float("nan")
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else float("nan")


def main(argv):
    args = [a for a in argv if not a.startswith("--label")]
    label = next((a.split("=", 1)[1] for a in argv if a.startswith("--label=")), "candidate")
    if len(args) != 2:
        sys.exit(__doc__)
    ref, cand = load(args[0]), load(args[1])
    if not ref:
        sys.exit(f"{args[0]}: no embeddings")
    failures = 0
    worst = {}
    for key, r in sorted(ref.items()):
        modality, name = key
        short = name if len(name) <= 48 else name[:45] + "..."
        c = cand.get(key)
        if c is None:
            print(f"FAIL {modality:6} {short}: missing from {label}")
            failures += 1
            continue
        cosines = [cosine(r["vector"], c["vector"])]
        for rb, cb in zip(r.get("blocks") or [], c.get("blocks") or []):
            cosines.append(cosine(rb, cb))
        if len(r.get("blocks") or []) != len(c.get("blocks") or []):
            cosines.append(float("nan"))
        low = min(cosines)
        ok = not math.isnan(low) and low >= MIN_COSINE[modality]
        failures += not ok
        worst[modality] = min(worst.get(modality, 1.0), low)
        extra = f" ({len(cosines) - 1} blocks)" if len(cosines) > 1 else ""
        print(f"{'ok  ' if ok else 'FAIL'} {modality:6} {short:48} min cosine {low:.9f} (1-cos {1 - low:.1e}){extra}")
    summary = ", ".join(f"{m} {v:.9f}" for m, v in sorted(worst.items()))
    print(f"{label}: {len(ref) - failures} of {len(ref)} inputs within tolerance; worst: {summary}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
