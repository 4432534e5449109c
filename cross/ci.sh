#!/usr/bin/env bash
# The ARM part of CI (called by .ci/run). For aarch64 and armv7: a release build against glibc
# 2.31 (cargo-zigbuild, as cross/build), then under qemu-user on emulated Pi/Jetson cores:
#   1. glibc floor: the highest GLIBC_ version each binary needs (objdump -T) is ≤ 2.31;
#   2. tests/integration/arm.rs via cross/test: NEON kernels per core, the f16 path, and golden comparisons
#      against the onnxruntime references (every reference text, 2 images, 3 audio clips with
#      their blocks; cosine ≥ 0.999 text/audio, ≥ 0.99 vision, as tests/integration/encoders.rs). The golden
#      tests of tests/integration/encoders.rs itself take ~26 min per target under qemu on 2 cores, so they
#      run only with EDGEFUSE_ARM_ENCODERS=golden (or =all);
#   3. `edgefuse check --json`: aarch64 under cortex-a53, -a72 and -a76 uses only arm64simd_*
#      matmul kernels; cortex-a76 with TRACT_CPU_ISA=+fp16 has fp16 in tract's ISA; armv7 with
#      TRACT_CPU_ARM32_NEON=true uses only armv7neon_*;
#   4. `edgefuse embed` on sample inputs agrees with the x86-64 build within the golden
#      tolerance (cross/compare_embeddings.py).
# The aarch64 emulation runs while armv7 builds. Installs what it needs (Debian multiarch
# packages, rustup targets, zig from PyPI) if missing.
#
# Env: CARGO_TARGET_DIR (honoured; sharing it with the x86 build reuses tests/run's binary),
# EDGEFUSE_ARM_TARGETS (default "aarch64 armv7"), EDGEFUSE_ARM_ENCODERS (none|golden|all, how
# much of tests/integration/encoders.rs runs under qemu; default none), EDGEFUSE_X86_BIN (an x86-64 edgefuse to
# compare with; default: target/debug/edgefuse as `cargo test` builds it, i.e. tests/run's).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

targets=${EDGEFUSE_ARM_TARGETS:-aarch64 armv7}
encoders=${EDGEFUSE_ARM_ENCODERS:-none}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export EDGEFUSE_MODELS=${EDGEFUSE_MODELS:-$REPO/models}
tdir=${CARGO_TARGET_DIR:-$REPO/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
timings=()

say "setup"
t0=$SECONDS
ensure_debian_packages
ensure_rust_targets
ensure_zig
[ -f "$EDGEFUSE_MODELS/text/all-minilm-l6-v2.onnx" ] || models/fetch
timings+=("setup: $((SECONDS - t0)) s")

# Sample inputs for the x86-vs-ARM comparison, through the CLI the way users run it. The
# comparison against onnxruntime is tests/integration/arm.rs's golden subset (run by cross/test).
texts=("A man plays guitar." "Someone is playing a guitar." "Crème brûlée et café au lait.")
images=(tests/fixtures/images/coffee.jpg)
audio=(tests/fixtures/audio/speech_fox.wav tests/fixtures/audio/pink_noise.wav)
embed_all() { # embed_all CMD…: JSON lines for all samples
  "$@" embed text "${texts[@]}" && "$@" embed image "${images[@]}" &&
    "$@" embed audio --blocks "${audio[@]}"
}

x86=${EDGEFUSE_X86_BIN:-}
if [ -z "$x86" ]; then
  say "x86-64 edgefuse to compare with (the debug build tests/run made, if it is there)"
  t0=$SECONDS
  # Built like `cargo test` builds it (dev-dependency features unified), so after tests/run
  # with the same CARGO_TARGET_DIR this is a no-op.
  cargo test --locked --no-run --test integration
  x86=$tdir/debug/edgefuse
  timings+=("x86-64 build: $((SECONDS - t0)) s")
fi
embed_all "$x86" >"$work/x86.jsonl"

# ------------------------------------------------------------------------------- per target
build() { # build NAME: release build of the binary and the tests, then the glibc floor
  target_info "$1"
  say "$TRIPLE: release build of edgefuse and its tests (cargo-zigbuild, glibc $GLIBC_FLOOR)"
  local t0=$SECONDS
  cross/test --no-setup --build-only "$1"
  timings+=("$TRIPLE release build (binary + tests): $((SECONDS - t0)) s")
  local bin=$tdir/$TRIPLE/release/edgefuse need
  ls -l "$bin"
  need=$(max_glibc "$bin")
  echo "$TRIPLE: needs GLIBC_$need (floor $GLIBC_FLOOR); $(readelf -l "$bin" | grep -o 'interpreter: [^]]*'); $(readelf -d "$bin" | grep -o 'Shared library: \[[^]]*' | sed 's/.*\[//' | tr '\n' ' ')"
  if [ "$(printf '%s\n%s\n' "$need" "$GLIBC_FLOOR" | sort -V | tail -1)" = "$GLIBC_FLOOR" ]; then
    echo "glibc $TRIPLE GLIBC_$need <= $GLIBC_FLOOR" >>"$work/passed"
  else
    echo "glibc $TRIPLE needs GLIBC_$need > $GLIBC_FLOOR" >>"$work/failed"
  fi
}

emulate() { # emulate NAME: everything under qemu; results appended to $work/passed|failed
  target_info "$1"
  local bin=$tdir/$TRIPLE/release/edgefuse t0=$SECONDS
  local qemu=("$QEMU" -L /)
  check() { # check LABEL CMD…
    local label=$1; shift
    if "$@"; then echo "$label" >>"$work/passed"; else
      echo "$label" >>"$work/failed"; echo "FAILED: $label" >&2
    fi
  }
  kernels() { # kernels LABEL ENV… -- CHECK_KERNELS_ARGS…
    local label=$1 envs=(); shift
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" "${qemu[@]}" "$bin" check --json | python3 cross/check_kernels.py "$label" "$@"
  }

  case "$TRIPLE" in
    aarch64*)
      check "$TRIPLE tests" cross/test --run-only --encoders "$encoders" --cpus "cortex-a72 cortex-a76" "$1"
      say "$TRIPLE: kernels in edgefuse check --json"
      for cpu in cortex-a53 cortex-a72 cortex-a76; do
        check "$TRIPLE $cpu kernels" kernels "$TRIPLE $cpu" QEMU_CPU=$cpu -- arm64simd_
      done
      # The f32 models keep their f32 kernels; fp16 must be in what tract will use.
      check "$TRIPLE cortex-a76 +fp16" kernels "$TRIPLE cortex-a76 TRACT_CPU_ISA=+fp16" \
        QEMU_CPU=cortex-a76 TRACT_CPU_ISA=+fp16 -- arm64simd_ --isa-has fp16
      local embed_env=(QEMU_CPU=cortex-a72)
      ;;
    armv7*)
      check "$TRIPLE tests" cross/test --run-only --encoders "$encoders" --cpus cortex-a7 "$1"
      say "$TRIPLE: kernels in edgefuse check --json"
      check "$TRIPLE NEON kernels" kernels "$TRIPLE cortex-a7 TRACT_CPU_ARM32_NEON=true" \
        QEMU_CPU=cortex-a7 TRACT_CPU_ARM32_NEON=true -- armv7neon_ --isa-has neon
      local embed_env=(QEMU_CPU=cortex-a7 TRACT_CPU_ARM32_NEON=true)
      ;;
  esac

  say "$TRIPLE: edgefuse embed vs x86-64 (${embed_env[*]})"
  if (export "${embed_env[@]}"; embed_all "${qemu[@]}" "$bin") >"$work/$TRIPLE.jsonl"; then
    check "$TRIPLE embed vs x86-64" python3 cross/compare_embeddings.py \
      --label="$TRIPLE vs x86-64" "$work/x86.jsonl" "$work/$TRIPLE.jsonl"
  else
    check "$TRIPLE embed ran" false
  fi
  echo "$TRIPLE under qemu (tests, kernels, embed): $((SECONDS - t0)) s" >>"$work/timings"
}

# Emulation is single-threaded: run each target's while the next one builds.
touch "$work/passed" "$work/failed" "$work/timings"
bg_pid="" bg_log=""
for name in $targets; do
  build "$name"
  if [ -n "$bg_pid" ]; then
    wait "$bg_pid" || true
    cat "$bg_log"
  fi
  bg_log=$work/emulate-$name.log
  emulate "$name" >"$bg_log" 2>&1 &
  bg_pid=$!
done
if [ -n "$bg_pid" ]; then
  wait "$bg_pid" || true
  cat "$bg_log"
fi

say "ARM summary"
printf '  %s\n' "${timings[@]}"
sed 's/^/  /' "$work/timings"
echo "  total: $((SECONDS - start)) s"
sed 's/^/  passed: /' "$work/passed"
sed 's/^/  FAILED: /' "$work/failed"
npass=$(wc -l <"$work/passed") nfail=$(wc -l <"$work/failed")
echo "arm checks: $npass passed, $nfail failed"
[ "$nfail" = 0 ]
