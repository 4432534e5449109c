# shellcheck shell=bash
# Shared by cross/build, cross/test and cross/ci.sh: the two ARM targets, host setup (Debian
# packages, rustup targets, zig from PyPI) and the cargo environment for each toolchain.
# Nothing here touches x86 builds: every variable set is target-specific or only read when
# cross-compiling.

CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CROSS_DIR/.." && pwd)

# glibc the zig toolchain links against: Jetson L4T r35 (Ubuntu 20.04) and Pi OS Bullseye
# (Debian 11) both ship 2.31.
GLIBC_FLOOR=${EDGEFUSE_GLIBC_FLOOR:-2.31}
ZIG_VENV=${EDGEFUSE_ZIG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefuse/zig-venv}
# Versions this was verified with; override to try others.
ZIGLANG_VERSION=${EDGEFUSE_ZIGLANG_VERSION:-0.17.1}
CARGO_ZIGBUILD_VERSION=${EDGEFUSE_CARGO_ZIGBUILD_VERSION:-0.24.1}

say() { printf '\n=== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# target_info NAME|TRIPLE -> sets TRIPLE DEB_ARCH GNU QEMU TRIPLE_UC TRIPLE_US
target_info() {
  case "$1" in
    aarch64 | arm64 | aarch64-unknown-linux-gnu)
      TRIPLE=aarch64-unknown-linux-gnu DEB_ARCH=arm64 GNU=aarch64-linux-gnu QEMU=qemu-aarch64 ;;
    armv7 | armhf | armv7-unknown-linux-gnueabihf)
      TRIPLE=armv7-unknown-linux-gnueabihf DEB_ARCH=armhf GNU=arm-linux-gnueabihf QEMU=qemu-arm ;;
    *) die "unknown target '$1' (aarch64 or armv7)" ;;
  esac
  TRIPLE_US=${TRIPLE//-/_}                  # CC_<triple> style
  TRIPLE_UC=$(tr 'a-z-' 'A-Z_' <<<"$TRIPLE") # CARGO_TARGET_<TRIPLE>_* style
}

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_retry() {
  local i
  for i in 1 2 3; do
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get "$@" && return 0
    echo "apt-get $1 failed (try $i of 3), retrying in 10 s" >&2
    sleep 10
  done
  return 1
}

# A mirror mid-sync fails `update` for one index (seen: the armhf security index) while the
# others are fine; the install that follows decides whether what we have is enough.
apt_update() {
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get update -qq ||
    echo "apt-get update failed for some index; trying the install with the indexes we have" >&2
}

# Debian packages for both targets: cross gcc (used by the gcc toolchain; harmless for zig),
# multiarch ALSA headers and .pc files (cpal links libasound), qemu-user, binutils for objdump.
# Idempotent: does nothing when everything is installed.
ensure_debian_packages() {
  local archs=(arm64 armhf) a missing=()
  local pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf
    libc6-dev-armhf-cross binutils pkg-config qemu-user python3-venv
    libasound2-dev:arm64 libasound2-dev:armhf)
  command -v dpkg >/dev/null || die "needs a Debian-like host (dpkg, apt-get)"
  local p
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  for a in "${archs[@]}"; do
    dpkg --print-foreign-architectures | grep -qx "$a" || sudo_ dpkg --add-architecture "$a"
  done
  apt_update
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${pkgs[@]}" && return 0
  # Multi-Arch "same" libraries must be at one version across architectures. When the host has
  # one the foreign index lacks (e.g. liblzma5 from bookworm-security for amd64 only), apt
  # refuses the :arm64/:armhf packages ("not going to be installed"). Retry with every such
  # library pinned, for all three architectures, to the highest version all three indexes have.
  echo "apt-get refused; pinning multiarch libraries to a version common to all architectures" >&2
  local host same=() lib v
  host=$(dpkg --print-architecture)
  for lib in libc6 libgcc-s1 gcc-12-base libstdc++6 liblzma5 libzstd1 zlib1g libbz2-1.0 \
    liblz4-1 libselinux1 libpcre2-8-0 libcap2 libgcrypt20 libgpg-error0 libmd0 libcrypt1 \
    libsystemd0 libudev1; do
    dpkg -s "$lib:$host" >/dev/null 2>&1 || continue
    v=$(common_version "$lib" "$host" "${archs[@]}")
    # Never downgrade the host's C library.
    [ "$lib" = libc6 ] && [ "$v" != "$(dpkg-query -W -f '${Version}' "libc6:$host")" ] && continue
    [ -n "$v" ] && same+=("$lib:$host=$v" "$lib:arm64=$v" "$lib:armhf=$v")
  done
  # --no-remove: fail rather than remove host packages (e.g. liblzma-dev) to make room.
  apt_retry install -y -qq --no-install-recommends --no-remove --allow-downgrades "${same[@]}" "${pkgs[@]}"
}

# common_version LIB ARCH…: the highest version of LIB that every ARCH's index has.
common_version() {
  local lib=$1 a; shift
  for a in "$@"; do
    apt-cache madison "$lib:$a" | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u
  done | sort | uniq -c | awk -v n=$# '$1 == n {print $2}' | sort -V | tail -1
}

ensure_rust_targets() {
  local have
  have=$(rustup target list --installed)
  for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$have" || rustup target add "$t"
  done
}

# zig and cargo-zigbuild from PyPI, in a venv outside the repository.
ensure_zig() {
  if [ ! -x "$ZIG_VENV/bin/cargo-zigbuild" ] || [ ! -f "$ZIG_VENV/.versions" ] ||
    [ "$(cat "$ZIG_VENV/.versions")" != "$ZIGLANG_VERSION $CARGO_ZIGBUILD_VERSION" ]; then
    say "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $ZIG_VENV"
    [ -x "$ZIG_VENV/bin/python" ] || python3 -m venv "$ZIG_VENV"
    local i
    for i in 1 2 3; do
      "$ZIG_VENV/bin/pip" install --disable-pip-version-check -q \
        "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" && break
      [ "$i" = 3 ] && die "pip install ziglang cargo-zigbuild failed"
      sleep 10
    done
    echo "$ZIGLANG_VERSION $CARGO_ZIGBUILD_VERSION" >"$ZIG_VENV/.versions"
  fi
  # cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH: the venv's python has it.
  export PATH="$ZIG_VENV/bin:$PATH"
}

# cargo_env TOOLCHAIN: export what cargo needs to build and run $TRIPLE (call target_info first).
#   gcc  Debian's cross gcc links against Debian 12's glibc (binaries need GLIBC_2.34+).
#   zig  cargo-zigbuild links against glibc $GLIBC_FLOOR stubs; the build machine's multiarch
#        libasound is only linked against, the device's own is used at run time.
cargo_env() {
  local toolchain=$1
  export PKG_CONFIG_ALLOW_CROSS=1
  export "PKG_CONFIG_LIBDIR_${TRIPLE_US}=/usr/lib/$GNU/pkgconfig:/usr/share/pkgconfig"
  # qemu-user for `cargo test`/`cargo run`. `-L /`: the :arm64/:armhf libc6 from multiarch is
  # at / (its loader in /lib); -L /usr/$GNU would mix two loaders and libcs.
  export "CARGO_TARGET_${TRIPLE_UC}_RUNNER=$QEMU -L /"
  case "$toolchain" in
    gcc)
      export "CARGO_TARGET_${TRIPLE_UC}_LINKER=$GNU-gcc"
      export "CC_${TRIPLE_US}=$GNU-gcc" "AR_${TRIPLE_US}=$GNU-ar"
      export "CXX_${TRIPLE_US}=$GNU-g++"
      ;;
    zig)
      # Debian 12's libasound.so references fstat64@GLIBC_2.33, newer than the 2.31 stubs zig
      # links against; the device's libasound (built for its own glibc) is what runs.
      export "CARGO_TARGET_${TRIPLE_UC}_RUSTFLAGS=-C link-arg=-Wl,--allow-shlib-undefined"
      ;;
    *) die "unknown toolchain '$toolchain' (zig or gcc)" ;;
  esac
}

# cargo_cmd TOOLCHAIN build|test: the command line prefix for $TRIPLE (word-split by callers).
cargo_cmd() {
  local sub=$2
  case "$1" in
    gcc) echo "cargo $sub --target $TRIPLE" ;;
    zig) [ "$sub" = build ] && sub=zigbuild
      echo "cargo-zigbuild $sub --target $TRIPLE.$GLIBC_FLOOR" ;;
  esac
}

# Highest GLIBC_x.y a binary needs (objdump -T), e.g. 2.30.
max_glibc() {
  objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1
}
