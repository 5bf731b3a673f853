#!/usr/bin/env bash
# Builds the binary distribution: dist/recon-<version>-linux-x86_64.tar.gz, one top-level
# directory holding an install prefix (tools/install.sh) plus the bindings' sources, LICENSE
# and a README (packaging/README.dist.md).
#
#   tools/dist.sh [--libdir DIR] [--out DIR] [--bundle-torch]
#
# Environment (the options win): LIBDIR (the directory holding the built librecon.so; default
# target/release), DIST_DIR (default dist/), BUNDLE_TORCH=1 (bundle libtorch into lib/torch;
# the tarball is then named ...-linux-x86_64-torch.tar.gz and weighs gigabytes).
# Prints the tarball's path last.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBDIR="${LIBDIR:-$ROOT/target/release}"
DIST_DIR="${DIST_DIR:-$ROOT/dist}"
BUNDLE_TORCH="${BUNDLE_TORCH:-0}"
TORCH_VERSION="2.11.0"

while [ $# -gt 0 ]; do
    case "$1" in
        --libdir) LIBDIR="$2"; shift 2 ;;
        --libdir=*) LIBDIR="${1#*=}"; shift ;;
        --out) DIST_DIR="$2"; shift 2 ;;
        --out=*) DIST_DIR="${1#*=}"; shift ;;
        --bundle-torch) BUNDLE_TORCH=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "dist.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

VERSION="$(awk '/^\[/ { p = ($0 == "[package]") } p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.toml")"
[ -n "$VERSION" ] || { echo "dist.sh: no version in Cargo.toml" >&2; exit 1; }
ABI_VERSION="$(sed -n 's/^#define RECON_ABI_VERSION \([0-9][0-9]*\).*/\1/p' "$ROOT/include/recon.h")"
NAME="recon-$VERSION-linux-x86_64"
[ "$BUNDLE_TORCH" = "1" ] && NAME="$NAME-torch"

mkdir -p "$DIST_DIR"
DIST_DIR="$(cd "$DIST_DIR" && pwd)"
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/recon-dist.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
TOP="$STAGE/$NAME"

# include/, lib/ (librecon.so, pkgconfig, cmake, optionally torch/).
BUNDLE_TORCH="$BUNDLE_TORCH" bash "$ROOT/tools/install.sh" --prefix "$TOP" --libdir "$LIBDIR" >/dev/null

# bindings/: every language folder's sources, as git sees them (tracked or new, not ignored:
# build outputs, virtual environments and caches stay out).
cd "$ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard -- bindings |
        while IFS= read -r -d '' f; do
            [ -f "$f" ] || continue # deleted in the work tree
            case "$f" in */build/*|*/__pycache__/*|*.pyc|*/.venv/*|*/node_modules/*) continue ;; esac
            install -D -m "$( [ -x "$f" ] && echo 755 || echo 644 )" "$f" "$TOP/$f"
        done
else
    cp -r bindings "$TOP/bindings"
    find "$TOP/bindings" \( -name build -o -name __pycache__ -o -name .venv \) -prune \
        -exec rm -rf {} +
fi

# LICENSE (and any LICENSE-*/COPYING), README.
license_note="MIT (see Cargo.toml)."
found_license=0
for f in LICENSE* COPYING*; do
    [ -f "$f" ] || continue
    install -m 644 "$f" "$TOP/$f"
    found_license=1
    license_note="MIT: see \`$f\`."
done
[ "$found_license" = 1 ] || echo "dist.sh: warning: no LICENSE file at the repository root" >&2
sed -e "s|@VERSION@|$VERSION|g" -e "s|@ABI_VERSION@|$ABI_VERSION|g" \
    -e "s|@VERSION_MAJOR_MINOR@|${VERSION%.*}|g" -e "s|@TORCH_VERSION@|$TORCH_VERSION|g" \
    -e "s|@LICENSE@|$license_note|g" "$ROOT/packaging/README.dist.md" > "$TOP/README.md"

# A reproducible archive: sorted names, no owners, fixed mtimes (the last commit's time).
mtime="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
OUT="$DIST_DIR/$NAME.tar.gz"
tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -cf - "$NAME" | gzip -n > "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
echo "dist.sh: $(du -h "$OUT" | cut -f1) ($(du -sh "$TOP" | cut -f1) unpacked, $(find "$TOP" -type f | wc -l) files)" >&2
echo "$OUT"
