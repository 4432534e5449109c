#!/usr/bin/env python3
"""Read `edgefuse check --json` on stdin, print the CPU features and each model's matmul kernels
on one line, and with PREFIX assert that every model loaded and every kernel starts with it.

    edgefuse check --json | check_kernels.py LABEL [PREFIX] [--isa-has FEATURE]

--isa-has FEATURE additionally asserts that FEATURE is in cpu.tract_isa. Standard library only.
"""

import json
import sys


def main(argv):
    isa_has = None
    if "--isa-has" in argv:
        i = argv.index("--isa-has")
        isa_has = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    if not argv:
        sys.exit(__doc__)
    label, prefix = argv[0], (argv[1] if len(argv) > 1 else None)
    report = json.load(sys.stdin)
    cpu = report["cpu"]
    problems = []
    kernels = {}
    for m in report["models"]:
        if m.get("error"):
            problems.append(f"{m['key']}: {m['error']}")
            continue
        kernels[m["key"]] = m["kernels"]
        if not m["kernels"]:
            problems.append(f"{m['key']}: no kernels")
        for k in m["kernels"]:
            if prefix and not k.startswith(prefix):
                problems.append(f"{m['key']}: {k} is not {prefix}*")
    if isa_has and isa_has not in cpu["tract_isa"]:
        problems.append(f"{isa_has} not in tract_isa {cpu['tract_isa']}")
    all_kernels = sorted({k for ks in kernels.values() for k in ks})
    print(
        f"{label}: arch {cpu['arch']}, simd {','.join(cpu['simd']) or '-'}, "
        f"tract_isa {','.join(cpu['tract_isa'])}, kernels {' '.join(all_kernels)}"
    )
    for p in problems:
        print(f"  FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
