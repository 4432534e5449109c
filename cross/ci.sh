#!/usr/bin/env bash
# The ARM part of CI (called by .ci/run). For aarch64 and armv7: ONE release build of the
# edgefuse binary against glibc 2.31 (cargo-zigbuild, as cross/build; the `release` profile users
# build with, no LTO), the binary that systemd/deb/ci then packages. Everything else runs that
# binary under qemu-user on emulated Pi/Jetson cores:
#   1. glibc floor: the highest GLIBC_ version each binary needs (objdump -T) is <= 2.31;
#   2. kernels (`edgefuse check --json`, cross/check_kernels.py): aarch64 under cortex-a72, and
#      cortex-a76 with TRACT_CPU_ISA=+fp16 (fp16 in tract's ISA), uses only arm64simd_* matmul
#      kernels; armv7 with TRACT_CPU_ARM32_NEON=true only armv7neon_*, without it armvfpv2_*;
#   3. golden subset (cross/compare_golden.py): the fp32 models against the onnxruntime
#      references of tests/golden/reference.json (every reference text, 2 images, 3 audio clips
#      with their blocks), with the tolerances of tests/integration/encoders.rs;
#   4. `edgefuse embed` on sample inputs with the default models agrees with the x86-64 build.
# The Rust test suites for ARM (tests/integration/arm.rs, encoders.rs) run on a device or by hand under
# qemu with cross/test; CI does not build test executables for ARM (one build per target).
# Both targets build in one cargo invocation; then both emulate side by side.
#
# Env: CARGO_TARGET_DIR, EDGEFUSE_ARM_TARGETS (default "aarch64 armv7"), EDGEFUSE_ARM_PROFILE
# (default release), EDGEFUSE_X86_BIN (an x86-64 edgefuse to
# compare with; default: target/debug/edgefuse, the one tests/run built).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"
# --setup-only: install what the ARM steps need (apt, rustup targets, zig) and stop.
# --build-only: setup and the build, no emulation (.ci/run runs it in the background, niced,
#               while tests/run works, then calls --emulate-only).
# --emulate-only: everything after the build, on the binaries already in CARGO_TARGET_DIR.
step=all
case "${1:-}" in
  --setup-only) step=setup ;;
  --build-only) step=build ;;
  --emulate-only) step=emulate ;;
  "") ;;
  *) die "unknown option $1 (--setup-only, --build-only, --emulate-only)" ;;
esac

targets=${EDGEFUSE_ARM_TARGETS:-aarch64 armv7}
profile=${EDGEFUSE_ARM_PROFILE:-release}
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
timings+=("setup: $((SECONDS - t0)) s")
[ "$step" = setup ] && exit 0
if [ "$step" = build ]; then
  build_only=1
else
  build_only=0
  [ -f "$EDGEFUSE_MODELS/text/all-minilm-l6-v2.onnx" ] || models/fetch
fi

# Sample inputs for the x86-vs-ARM comparison, through the CLI the way users run it.
texts=("A man plays guitar." "Someone is playing a guitar." "Crème brûlée et café au lait.")
images=(tests/fixtures/images/coffee.jpg)
audio=(tests/fixtures/audio/speech_fox.wav tests/fixtures/audio/pink_noise.wav)
# The golden subset (the references are for the fp32 models; one text per run, as on a device,
# instead of one batch padded to the longest) and the configs the checks use.
mapfile -t golden_texts < <(python3 -c '
import json; [print(i["input"]) for i in json.load(open("tests/golden/reference.json"))["text"]]')
golden_images=(tests/fixtures/images/coffee.jpg tests/fixtures/images/astronaut.webp)
golden_audio=(tests/fixtures/audio/speech_fox.wav tests/fixtures/audio/speech_lights_48k_stereo_s24.wav
  tests/fixtures/audio/pink_noise.wav)
printf '[encoders.text]\nmodel = "text"\nmax_batch = 1\n[encoders.vision]\nmodel = "vision"\n[encoders.audio]\nmodel = "audio"\n' >"$work/fp32.toml"
embed_all() { # embed_all CMD…: JSON lines for all samples
  "$@" embed text "${texts[@]}" && "$@" embed image "${images[@]}" &&
    "$@" embed audio --blocks "${audio[@]}"
}

x86=${EDGEFUSE_X86_BIN:-$tdir/debug/edgefuse}
if [ "$build_only" = 1 ]; then
  :
elif [ ! -x "$x86" ]; then
  say "x86-64 edgefuse to compare with"
  t0=$SECONDS
  cargo build --locked --bin edgefuse
  x86=$tdir/debug/edgefuse
  timings+=("x86-64 build: $((SECONDS - t0)) s")
fi
[ "$build_only" = 1 ] || embed_all "$x86" >"$work/x86.jsonl"

# ------------------------------------------------------------------------------- per target
build_all() { # one cargo invocation for every target: both cores stay busy across the two
  # dependency graphs (tract-core alone is minutes of one core), and host build scripts and
  # proc macros are compiled once
  local args=() name
  for name in $targets; do
    target_info "$name"
    cargo_env zig
    args+=(--target "$TRIPLE.$GLIBC_FLOOR")
  done
  say "build of edgefuse for $targets (cargo-zigbuild, glibc $GLIBC_FLOOR, profile $profile)"
  local t0=$SECONDS
  cargo-zigbuild zigbuild "${args[@]}" --profile "$profile" --locked --bin edgefuse
  timings+=("build of $targets ($profile): $((SECONDS - t0)) s")
}

glibc_floor() { # glibc_floor NAME
  target_info "$1"
  local bin=$tdir/$TRIPLE/$profile/edgefuse need
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
  local bin=$tdir/$TRIPLE/$profile/edgefuse t0=$SECONDS
  local qemu=("$QEMU" -L /)
  check() { # check LABEL CMD…
    local label=$1; shift
    if "$@"; then echo "$label" >>"$work/passed"; else
      echo "$label" >>"$work/failed"; echo "FAILED: $label" >&2
    fi
  }
  kernels() { # kernels LABEL ENV… -- [--config F] -- CHECK_KERNELS_ARGS…
    local label=$1 envs=() args=(); shift
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    env "${envs[@]}" "${qemu[@]}" "$bin" "${args[@]}" check --json |
      python3 cross/check_kernels.py "$label" "$@"
  }
  golden() { # golden LABEL CONFIG ENV…: the golden subset through `edgefuse embed`
    local label=$1 config=$2 out=$work/golden-$TRIPLE-$RANDOM.jsonl; shift 2
    (export "$@"
      "${qemu[@]}" "$bin" -c "$config" embed text "${golden_texts[@]}" &&
        "${qemu[@]}" "$bin" -c "$config" embed image "${golden_images[@]}" &&
        "${qemu[@]}" "$bin" -c "$config" embed audio --blocks "${golden_audio[@]}") >"$out" &&
      python3 cross/compare_golden.py "$label" tests/golden/reference.json "$out"
  }

  case "$TRIPLE" in
    aarch64*)
      # Under qemu-user tract sees the host's /proc/cpuinfo, so it cannot tell a Cortex-A53 from
      # an A72: one ARMv8.0 core (Pi 4) and one ARMv8.2 core with FP16 (Pi 5, Orin) cover what
      # changes the kernels tract picks.
      say "$TRIPLE: kernels in edgefuse check --json"
      check "$TRIPLE cortex-a72 kernels" kernels "$TRIPLE cortex-a72" QEMU_CPU=cortex-a72 -- -- arm64simd_
      # With FP16 in tract's ISA the f32 models (and the f16-stored variants, which tract widens
      # to f32 at load) keep their f32 NEON kernels.
      check "$TRIPLE cortex-a76 +fp16" kernels "$TRIPLE cortex-a76 TRACT_CPU_ISA=+fp16" \
        QEMU_CPU=cortex-a76 TRACT_CPU_ISA=+fp16 -- -- arm64simd_ --isa-has fp16
      say "$TRIPLE: golden subset against onnxruntime (cortex-a72)"
      check "$TRIPLE golden (fp32 models)" golden "$TRIPLE cortex-a72" "$work/fp32.toml" QEMU_CPU=cortex-a72
      local embed_env=(QEMU_CPU=cortex-a72)
      ;;
    armv7*)
      say "$TRIPLE: kernels in edgefuse check --json"
      check "$TRIPLE NEON kernels" kernels "$TRIPLE cortex-a7 TRACT_CPU_ARM32_NEON=true" \
        QEMU_CPU=cortex-a7 TRACT_CPU_ARM32_NEON=true -- -- armv7neon_ --isa-has neon
      check "$TRIPLE VFP fallback without NEON" kernels "$TRIPLE cortex-a7 (no NEON detected)" \
        QEMU_CPU=cortex-a7 -- -- armvfpv2_
      say "$TRIPLE: golden subset against onnxruntime (cortex-a7, NEON)"
      check "$TRIPLE golden (fp32 models)" golden "$TRIPLE cortex-a7" "$work/fp32.toml" \
        QEMU_CPU=cortex-a7 TRACT_CPU_ARM32_NEON=true
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
  echo "$TRIPLE under qemu (kernels, golden, embed): $((SECONDS - t0)) s" >>"$work/timings"
}

touch "$work/passed" "$work/failed" "$work/timings"
if [ "$step" != emulate ]; then
  build_all
fi
if [ "$build_only" = 1 ]; then
  printf '  %s\n' "${timings[@]}"
  exit 0
fi
for name in $targets; do glibc_floor "$name"; done
# qemu-user runs one thread per process: the targets' emulations run side by side.
t0=$SECONDS
pids=()
for name in $targets; do
  emulate "$name" >"$work/emulate-$name.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
for name in $targets; do cat "$work/emulate-$name.log"; done
timings+=("emulation of $targets, side by side: $((SECONDS - t0)) s")

say "ARM summary"
printf '  %s\n' "${timings[@]}"
sed 's/^/  /' "$work/timings"
echo "  total: $((SECONDS - start)) s"
sed 's/^/  passed: /' "$work/passed"
sed 's/^/  FAILED: /' "$work/failed"
npass=$(wc -l <"$work/passed") nfail=$(wc -l <"$work/failed")
echo "arm checks: $npass passed, $nfail failed"
[ "$nfail" = 0 ]
