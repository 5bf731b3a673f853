#!/usr/bin/env bash
# Tests the binary distribution as a user gets it: builds the tarball (tools/dist.sh), extracts
# it into a fresh temporary directory and, using only that copy,
#   1. checks its layout, the installed library's RUNPATH and that it does not find libtorch
#      on its own (no path of this machine leaked into it);
#   2. builds bindings/c/example.c (the extracted copy) with `pkg-config --cflags --libs recon`
#      (PKG_CONFIG_PATH and PKG_CONFIG_LIBDIR: the prefix only) and runs a generation;
#   3. builds packaging/consumer, a CMake project using find_package(recon) with recon::recon
#      (example.c again) and recon::cpp (smoke.cpp, recon.hpp), and runs both;
#   4. checks with ldd that every binary resolves librecon.so inside the prefix.
# libtorch comes from LD_LIBRARY_PATH = the venv's torch/lib (TORCH_LIBDIR overrides), as the
# README tells users. The in-tree include/ and target/ are never on any search path.
#
#   tools/test-dist.sh [LIBDIR [MODEL_DIR [IMAGE]]]
#
# LIBDIR: the directory holding the built librecon.so (default target/release). Prints
# "N passed, M failed" last; exit status 1 when M > 0.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBDIR="$(cd "${1:-$ROOT/target/release}" && pwd)"
MODEL_DIR="$(cd "${2:-$ROOT/tests/fixtures/model_tiny}" && pwd)"
IMAGE="$(realpath "${3:-$ROOT/tests/fixtures/images/example.png}")"
STEPS="${STEPS:-2}"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
check() { # check DESCRIPTION COMMAND...
    local what="$1"
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

# Tools: a C/C++ compiler and CMake (bindings/cpp/setup.sh), pkg-config, patchelf (install.sh).
bash "$ROOT/bindings/cpp/setup.sh" || { bad "bindings/cpp/setup.sh"; finish; }
if ! command -v pkg-config >/dev/null 2>&1; then
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends pkgconf >/dev/null 2>&1
    }
    apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 && apt_install; } ||
        { bad "pkg-config is missing (apt-get install pkgconf)"; finish; }
fi

TORCH_LIBDIR="${TORCH_LIBDIR:-}"
if [ -z "$TORCH_LIBDIR" ]; then
    for d in "$ROOT"/.venv/lib/python3*/site-packages/torch/lib; do
        [ -f "$d/libtorch_cpu.so" ] && TORCH_LIBDIR="$d"
    done
fi
[ -n "$TORCH_LIBDIR" ] || { bad "no libtorch: run make venv or set TORCH_LIBDIR"; finish; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/recon-test-dist.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
t0=$SECONDS

# --- the tarball -----------------------------------------------------------------------------
TARBALL="$(DIST_DIR="$WORK/dist" BUNDLE_TORCH=0 bash "$ROOT/tools/dist.sh" --libdir "$LIBDIR")"
check "dist.sh wrote $(basename "${TARBALL:-none}")" test -f "$TARBALL"
[ -f "$TARBALL" ] || finish
echo "tarball: $(du -h "$TARBALL" | cut -f1)"
mkdir -p "$WORK/root"
tar -C "$WORK/root" -xzf "$TARBALL"
PREFIX="$WORK/root/$(basename "$TARBALL" .tar.gz)"
check "one top-level directory" test "$(ls "$WORK/root")" = "$(basename "$PREFIX")"
for f in include/recon.h include/recon.hpp lib/librecon.so lib/pkgconfig/recon.pc \
    lib/cmake/recon/reconConfig.cmake lib/cmake/recon/reconConfigVersion.cmake README.md \
    bindings/c/example.c bindings/cpp/recon.hpp bindings/python; do
    check "contains $f" test -e "$PREFIX/$f"
done
check "no build outputs in bindings/" test -z "$(find "$PREFIX/bindings" -name build -o -name __pycache__)"
check "the installed recon.h is the repository's" cmp -s "$PREFIX/include/recon.h" "$ROOT/include/recon.h"
SO="$PREFIX/lib/librecon.so"
runpath="$(readelf -d "$SO" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')"
check "RUNPATH is \$ORIGIN:\$ORIGIN/torch (got '$runpath')" test "$runpath" = '$ORIGIN:$ORIGIN/torch'
check "SONAME is librecon.so" test "$(patchelf --print-soname "$SO")" = librecon.so
# Without LD_LIBRARY_PATH the unbundled library must not find libtorch: nothing of the build
# machine is baked in.
check "libtorch is not found without LD_LIBRARY_PATH" \
    bash -c "env -u LD_LIBRARY_PATH ldd '$SO' | grep -q 'libtorch_cpu.so => not found'"

export LD_LIBRARY_PATH="$TORCH_LIBDIR"
check "libtorch resolves through LD_LIBRARY_PATH" \
    bash -c "ldd '$SO' | grep -q 'libtorch_cpu.so => $TORCH_LIBDIR/'"

# Every binary must load librecon.so from the prefix, never from the build tree.
resolves_in_prefix() { # BINARY
    local line
    line="$(ldd "$1" | grep 'librecon\.so')"
    echo "  $(basename "$1"): ${line#"${line%%[![:space:]]*}"}"
    [[ "$line" =~ =\>\ (/[^ ]*librecon\.so)\  ]] &&
        [ "$(realpath "${BASH_REMATCH[1]}")" = "$(realpath "$PREFIX/lib/librecon.so")" ]
}

runs_example() { # BINARY OUTPUT.glb
    local log="$WORK/$(basename "$1").log"
    if ! "$1" "$MODEL_DIR" "$IMAGE" "$2" "$STEPS" >"$log" 2>&1; then
        tail -20 "$log" >&2
        return 1
    fi
    grep -E '^(recon|loaded|mesh|wrote)' "$log" | sed 's/^/  /'
    [ "$(head -c 4 "$2")" = glTF ]
}

# --- pkg-config --------------------------------------------------------------------------------
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" PKG_CONFIG_LIBDIR="$PREFIX/lib/pkgconfig"
check "pkg-config --modversion" test "$(pkg-config --modversion recon)" = \
    "$(awk '/^\[/ { p = ($0 == "[package]") } p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.toml")"
flags="$(pkg-config --cflags --libs recon)"
libdir="$(pkg-config --variable=libdir recon)"
echo "pkg-config --cflags --libs recon: $flags"
check "pkg-config points into the prefix" \
    test "$(realpath "$libdir")" = "$(realpath "$PREFIX/lib")"
mkdir -p "$WORK/pc"
cp "$PREFIX/bindings/c/example.c" "$WORK/pc/"
# shellcheck disable=SC2086 # the flags are words
check "example.c builds with pkg-config" \
    cc -std=c11 -Wall -Wextra -O2 -o "$WORK/pc/example" "$WORK/pc/example.c" $flags \
    -Wl,-rpath,"$libdir"
if [ -x "$WORK/pc/example" ]; then
    check "pkg-config example loads librecon.so from the prefix" resolves_in_prefix "$WORK/pc/example"
    check "pkg-config example generates a GLB" runs_example "$WORK/pc/example" "$WORK/pc/asset.glb"
fi
unset PKG_CONFIG_PATH PKG_CONFIG_LIBDIR

# --- CMake find_package --------------------------------------------------------------------------
version="$(sed -n 's/^set(PACKAGE_VERSION "\([0-9.]*\)")/\1/p' "$PREFIX/lib/cmake/recon/reconConfigVersion.cmake")"
cmake_log="$WORK/cmake.log"
if cmake -S "$ROOT/packaging/consumer" -B "$WORK/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF -DRECON_REQUIRED_VERSION="${version%.*}" \
    -DRECON_EXAMPLE_C="$PREFIX/bindings/c/example.c" >"$cmake_log" 2>&1 &&
    cmake --build "$WORK/cmake" -j 2 >>"$cmake_log" 2>&1; then
    ok "find_package(recon ${version%.*}) project builds"
    grep 'found recon' "$cmake_log" | sed 's/^-- /  /'
    check "find_package used the prefix" grep -q "in $PREFIX/lib/cmake/recon" "$cmake_log"
    check "CMake example loads librecon.so from the prefix" resolves_in_prefix "$WORK/cmake/example_c"
    check "CMake smoke_cpp loads librecon.so from the prefix" resolves_in_prefix "$WORK/cmake/smoke_cpp"
    check "CMake example generates a GLB" runs_example "$WORK/cmake/example_c" "$WORK/cmake/asset.glb"
    smoke="$("$WORK/cmake/smoke_cpp" "$MODEL_DIR" 2>&1)"
    echo "$smoke" | sed 's/^/  /'
    check "smoke_cpp (recon.hpp) runs" test "$(echo "$smoke" | tail -1)" = ok
else
    tail -30 "$cmake_log" >&2
    bad "find_package(recon) project builds"
fi

# A version this package cannot satisfy is refused.
if cmake -S "$ROOT/packaging/consumer" -B "$WORK/cmake-too-new" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DRECON_REQUIRED_VERSION=99.0 -DRECON_EXAMPLE_C="$PREFIX/bindings/c/example.c" \
    >"$WORK/cmake-too-new.log" 2>&1; then
    bad "find_package(recon 99.0) should fail"
else
    ok "find_package(recon 99.0) is refused"
fi

echo "test-dist: $((SECONDS - t0)) s"
finish
