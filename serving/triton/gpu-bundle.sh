#!/usr/bin/env bash
# Packs what the GPU machine (no network; python3 is /opt/torch/.venv's Python 3.12 with torch
# and numpy) needs to serve recon with Triton and benchmark it, into two archives under
# serving/triton/.gpu-carry/ (git-ignored). Each travels with its own device call, beside the
# working tree (64 MiB a call in all), and gpu-bench.sh unpacks it there:
#
#   triton.tar.xz  nvidia-pytriton's tritonserver, Python backend, backend stub for Python 3.12
#                  and their libraries (not the wheel's libpython3.13 nor the other stubs)
#   client.tar.xz  numpy 1.26 (Triton 2.51's Python backend breaks on numpy 2, which the GPU
#                  image has), tritonclient's Python package (not its perf_analyzer binaries)
#                  and its HTTP dependencies, all cp312, and librecon.so and the recon CLI (for
#                  `recon synth`), stripped, from LIBDIR
#
#   bash serving/triton/gpu-bundle.sh [LIBDIR]    # LIBDIR: target/release (after `make build`)
#
# Needs serving/triton/.venv (setup.sh) for the server files; downloads the client wheels from
# PyPI with pip (versions from requirements.txt).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
libdir=$(cd "${1:-$root/target/release}" && pwd)
venv=$here/.venv
out=$here/.gpu-carry
export PIP_DISABLE_PIP_VERSION_CHECK=1 XZ_OPT="-9 -T2"

[ -x "$venv/bin/python" ] || bash "$here/setup.sh"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$out"
mkdir -p "$out/client/site" "$out/client/lib"

echo "gpu-bundle: triton.tar.xz"
tar -C "$site" -cJf "$out/triton.tar.xz" --exclude='nvidia_pytriton.libs/libpython3*' \
    pytriton/tritonserver/bin pytriton/tritonserver/backends/python/libtriton_python.so \
    pytriton/tritonserver/backends/python/triton_python_backend_utils.py \
    pytriton/tritonserver/python_backend_stubs/3.12 nvidia_pytriton.libs

echo "gpu-bundle: client.tar.xz"
pinned() { grep -iE "^($(IFS='|'; echo "$*"))==" "$here/requirements.txt"; }
# shellcheck disable=SC2046 # one argument per pinned requirement
"$venv/bin/python" -m pip install --quiet --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --target "$out/client/site" \
    $(pinned numpy tritonclient geventhttpclient gevent greenlet zope.event zope.interface brotli \
             python-rapidjson)
rm -rf "$out/client/site/bin"  # perf_analyzer and perf_client, 40 MB
cp "$libdir/librecon.so" "$libdir/recon" "$out/client/lib/"
strip --strip-unneeded "$out/client/lib/librecon.so" "$out/client/lib/recon"
tar -C "$out/client" -cJf "$out/client.tar.xz" site lib
rm -rf "$out/client"

ls -l "$out"
tracked=$(cd "$root" && git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
echo "gpu-bundle: tracked files $((tracked / 1048576)) MiB; each archive plus those must stay under 64 MiB"
