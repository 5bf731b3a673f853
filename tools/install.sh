#!/usr/bin/env bash
# Installs recon into a prefix: the C header, the C++ wrapper, librecon.so, a pkg-config file
# and a CMake package (imported targets recon::recon and recon::cpp).
#
#   tools/install.sh [--prefix DIR] [--libdir DIR] [--bundle-torch]
#
# Environment (the options win): PREFIX (default /usr/local), LIBDIR (the directory holding the
# built librecon.so; default target/release), BUNDLE_TORCH=1 (copy libtorch and the CUDA
# libraries it needs into <prefix>/lib/torch; about 3.5 GB), TORCH_LIBDIR (the libtorch to
# bundle; default the project venv's torch/lib), EXTRA_RUNPATH (directories appended to the
# installed library's RUNPATH, e.g. a system libtorch).
#
# Layout:
#   <prefix>/include/recon.h, recon.hpp
#   <prefix>/lib/librecon.so               RUNPATH $ORIGIN:$ORIGIN/torch[:EXTRA_RUNPATH]
#   <prefix>/lib/torch/                    BUNDLE_TORCH=1 only
#   <prefix>/lib/pkgconfig/recon.pc
#   <prefix>/lib/cmake/recon/reconConfig.cmake, reconConfigVersion.cmake
#
# Without a bundled libtorch the library finds libtorch 2.11 through LD_LIBRARY_PATH (RUNPATH
# never overrides it), e.g. LD_LIBRARY_PATH=$(python -c 'import torch,os;
# print(os.path.join(os.path.dirname(torch.__file__), "lib"))') after pip install torch==2.11.0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-/usr/local}"
LIBDIR="${LIBDIR:-$ROOT/target/release}"
BUNDLE_TORCH="${BUNDLE_TORCH:-0}"
TORCH_VERSION="2.11.0"

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --libdir) LIBDIR="$2"; shift 2 ;;
        --libdir=*) LIBDIR="${1#*=}"; shift ;;
        --bundle-torch) BUNDLE_TORCH=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { printf 'install.sh: %b\n' "$*" >&2; exit 1; }

# patchelf rewrites the installed library's RUNPATH; Debian has it.
ensure_patchelf() {
    command -v patchelf >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: installing patchelf"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends patchelf >/dev/null ||
            { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
              DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
                  --no-install-recommends patchelf >/dev/null; }
    fi
    command -v patchelf >/dev/null 2>&1 || die "patchelf is needed (apt-get install patchelf)"
}

# The [package] version and description of Cargo.toml.
cargo_field() {
    awk -v key="$1" '
        /^\[/ { in_pkg = ($0 == "[package]") }
        in_pkg && $1 == key && $2 == "=" { sub(/^[^"]*"/, ""); sub(/"[^"]*$/, ""); print; exit }
    ' "$ROOT/Cargo.toml"
}

VERSION="$(cargo_field version)"
DESCRIPTION="$(cargo_field description)"
[[ "$VERSION" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+) ]] || die "no version in Cargo.toml"
VERSION_MAJOR="${BASH_REMATCH[1]}"
VERSION_MINOR="${BASH_REMATCH[2]}"
ABI_VERSION="$(sed -n 's/^#define RECON_ABI_VERSION \([0-9][0-9]*\).*/\1/p' "$ROOT/include/recon.h")"
[ -n "$ABI_VERSION" ] || die "no RECON_ABI_VERSION in include/recon.h"

SO="$LIBDIR/librecon.so"
[ -f "$SO" ] || die "$SO not found: build it first (make build)"
ensure_patchelf

mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
echo "install.sh: recon $VERSION (ABI $ABI_VERSION) from $SO into $PREFIX"

install -d "$PREFIX/include" "$PREFIX/lib/pkgconfig" "$PREFIX/lib/cmake/recon"
install -m 644 "$ROOT/include/recon.h" "$ROOT/bindings/cpp/recon.hpp" "$PREFIX/include/"

# The library, made relocatable: its build RUNPATH (the venv's libtorch) is replaced by paths
# relative to itself. A missing SONAME is set so links record "librecon.so", not a path.
install -m 755 "$SO" "$PREFIX/lib/librecon.so.tmp"
runpath='$ORIGIN:$ORIGIN/torch'
[ -n "${EXTRA_RUNPATH:-}" ] && runpath="$runpath:$EXTRA_RUNPATH"
patchelf --set-rpath "$runpath" "$PREFIX/lib/librecon.so.tmp"
SONAME="$(patchelf --print-soname "$PREFIX/lib/librecon.so.tmp")"
if [ -z "$SONAME" ]; then
    SONAME="librecon.so"
    patchelf --set-soname "$SONAME" "$PREFIX/lib/librecon.so.tmp"
fi
mv -f "$PREFIX/lib/librecon.so.tmp" "$PREFIX/lib/librecon.so"

subst() {
    sed -e "s|@VERSION@|$VERSION|g" -e "s|@VERSION_MAJOR@|$VERSION_MAJOR|g" \
        -e "s|@VERSION_MINOR@|$VERSION_MINOR|g" \
        -e "s|@VERSION_MAJOR_MINOR@|$VERSION_MAJOR.$VERSION_MINOR|g" \
        -e "s|@ABI_VERSION@|$ABI_VERSION|g" -e "s|@SONAME@|$SONAME|g" \
        -e "s|@TORCH_VERSION@|$TORCH_VERSION|g" -e "s|@DESCRIPTION@|$DESCRIPTION|g" "$1" > "$2"
    chmod 644 "$2"
}
subst "$ROOT/packaging/recon.pc.in" "$PREFIX/lib/pkgconfig/recon.pc"
subst "$ROOT/packaging/reconConfig.cmake.in" "$PREFIX/lib/cmake/recon/reconConfig.cmake"
subst "$ROOT/packaging/reconConfigVersion.cmake.in" \
    "$PREFIX/lib/cmake/recon/reconConfigVersion.cmake"

# libtorch's directory in the project venv (torch==2.11.0 from PyPI).
venv_torch_lib() {
    local dir
    for dir in "$ROOT"/.venv/lib/python3*/site-packages/torch/lib; do
        [ -f "$dir/libtorch_cpu.so" ] && { echo "$dir"; return 0; }
    done
    return 1
}

# Copies libtorch and the NVIDIA libraries of its wheel dependencies (site-packages/nvidia/*/lib)
# flat into lib/torch: libtorch's own RPATH ends in $ORIGIN and the NVIDIA libraries carry
# $ORIGIN or need no sibling, so one directory resolves everything. Left out: the Python
# extension's libraries (libtorch_python, libshm), the profiler's host-side libraries (nvperf,
# pcsamplingutil, checkpoint; CUPTI itself is linked by libtorch and stays) and NVRTC's
# alternative build.
bundle_torch() {
    local torch_lib="${TORCH_LIBDIR:-$(venv_torch_lib || true)}"
    [ -n "$torch_lib" ] && [ -f "$torch_lib/libtorch_cpu.so" ] ||
        die "BUNDLE_TORCH=1: no libtorch found (set TORCH_LIBDIR or run make venv)"
    local dest="$PREFIX/lib/torch"
    install -d "$dest"
    local f name count=0
    for f in "$torch_lib"/*.so* "$torch_lib"/../../nvidia/*/lib/*.so*; do
        [ -f "$f" ] || continue
        name="$(basename "$f")"
        case "$name" in
            libtorch_python.so|libshm*.so|libnvperf_*|libpcsamplingutil*|\
            libcheckpoint.so|*.alt.so*) continue ;;
        esac
        cp -L "$f" "$dest/$name"
        count=$((count + 1))
    done
    echo "install.sh: bundled $count libraries from $torch_lib ($(du -sh "$dest" | cut -f1))"
    # Everything librecon.so links must now resolve inside the prefix (libcuda, the driver,
    # comes from the system and is loaded at run time only).
    local missing
    missing="$(env -u LD_LIBRARY_PATH ldd "$PREFIX/lib/librecon.so" | grep 'not found' || true)"
    [ -z "$missing" ] || die "bundled libtorch is incomplete:\n$missing"
}

[ "$BUNDLE_TORCH" = "1" ] && bundle_torch

echo "install.sh: installed:"
(cd "$PREFIX" && find include lib -maxdepth 3 \( -name 'recon*' -o -name 'librecon*' \) | sort |
    sed 's/^/  /')
[ -d "$PREFIX/lib/torch" ] && echo "  lib/torch/ ($(ls "$PREFIX/lib/torch" | wc -l) libraries)"
exit 0
