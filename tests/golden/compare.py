#!/usr/bin/env python3
"""Compare two reference files: same inputs, vectors equal within tolerance.

Used by tests/run to show that make_reference.py reruns and reproduces the committed vectors
(reference.json: text, vision, audio; multilingual.json: text-multilingual).
"""
import json
import sys

import numpy as np

TOL = 1e-4  # cosine distance; reruns on other CPUs/BLAS builds differ in the last bits


def compare_speech(a: dict, b: dict | None) -> int:
    """Speech: same clips, identical greedy token ids, encoder summaries within TOL (cosine)."""
    if b is None:
        print("speech: missing from the rerun")
        return 1
    if [c["input"] for c in a["clips"]] != [c["input"] for c in b["clips"]]:
        print("speech: inputs differ")
        return 1
    bad = 0
    for x, y in zip(a["clips"], b["clips"]):
        for key in ("encoder_mean", "encoder_first", "encoder_last"):
            u, v = np.asarray(x[key]), np.asarray(y[key])
            cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
            if 1 - cos > TOL:
                print(f"speech {x['input']}: {key} cosine {cos:.6f}")
                bad += 1
        if x["tokens"] != y["tokens"]:
            print(f"speech {x['input']}: transcript {x['text']!r} became {y['text']!r}")
            bad += 1
    n = len(a["clips"])
    print(f"speech rerun: {n} clips, {bad} differences (encoder summaries, greedy tokens)")
    return bad


def main(a_path: str, b_path: str) -> int:
    a, b = json.load(open(a_path)), json.load(open(b_path))
    bad = 0
    # Every list of embedded items the committed file holds (reference.json: text, vision,
    # audio; multilingual.json: text-multilingual); a section missing from the rerun fails.
    sections = [k for k, v in a.items() if isinstance(v, list) and v and "vector" in v[0]]
    for modality in sections:
        if modality not in b:
            print(f"{modality}: missing from {b_path}")
            bad += 1
            continue
        if [i["input"] for i in a[modality]] != [i["input"] for i in b[modality]]:
            print(f"{modality}: inputs differ")
            bad += 1
            continue
        for x, y in zip(a[modality], b[modality]):
            u, v = np.asarray(x["vector"]), np.asarray(y["vector"])
            cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
            if 1 - cos > TOL:
                print(f"{modality} {x['input'][:40]!r}: cosine {cos:.6f}")
                bad += 1
    # Classifier: same top-5 classes, probabilities within 1e-4 (reruns differ in the last bits).
    ca, cb = a.get("classifier", []), b.get("classifier", [])
    if [i["input"] for i in ca] != [i["input"] for i in cb]:
        print("classifier: inputs differ")
        bad += 1
    else:
        for x, y in zip(ca, cb):
            pa, pb = np.asarray(x["top5_probabilities"]), np.asarray(y["top5_probabilities"])
            if x["top5"] != y["top5"] or np.max(np.abs(pa - pb)) > 1e-4:
                print(f"classifier {x['input']!r}: top-5 {x['top5']} vs {y['top5']}")
                bad += 1
    n = sum(len(a[m]) for m in sections) + len(ca)
    print(f"reference rerun: {n - bad} of {n} vectors reproduced")
    if "speech" in a:
        bad += compare_speech(a["speech"], b.get("speech"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
