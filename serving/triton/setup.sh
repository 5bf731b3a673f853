#!/usr/bin/env bash
# Creates serving/triton/.venv: the pinned packages of requirements.txt (nvidia-pytriton's
# tritonserver, tritonclient, numpy, pytest) and recon's Python package from bindings/python.
#
#   bash serving/triton/setup.sh [PYTHON]      # PYTHON: the interpreter to base it on (python3)
#
# Idempotent: the venv is rebuilt when requirements.txt changes and recon is reinstalled when
# its sources change (stamps hold their hashes). The interpreter must have a shared libpython
# (Triton's Python backend embeds it). The bundled server's system libraries are checked with
# ldd; any that is missing is installed from Debian (libexpat1, zlib1g), as root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${1:-python3}
venv=$here/.venv
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# serve.py's own check: the interpreter must come with a shared libpython.
PYTHONPATH=$here "$python" -c 'import serve; serve.libpython_dir()'

requirements_hash=$(hash_of "$here/requirements.txt")
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements_hash" ]; then
    echo "setup.sh: creating $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --no-deps -r "$here/requirements.txt"
    echo "$requirements_hash" > "$venv/.requirements"
fi

# pip builds the package from a copy, so that no build/ or *.egg-info appears in bindings/python.
package=$root/bindings/python
recon_hash=$(hash_of "$package/pyproject.toml" "$package"/recon/*.py "$package/recon/py.typed")
if [ "$(cat "$venv/.recon" 2>/dev/null)" != "$recon_hash" ]; then
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/recon-triton-setup.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cp -r "$package/pyproject.toml" "$package/README.md" "$package/recon" "$tmp/"
    "$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$tmp"
    echo "$recon_hash" > "$venv/.recon"
fi

# The libraries of the bundled tritonserver that the wheel does not carry.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
missing=$(ldd "$site/pytriton/tritonserver/bin/tritonserver" \
              "$site/pytriton/tritonserver/backends/python/libtriton_python.so" 2>/dev/null \
          | awk '/not found/ {print $1}' | sort -u)
stub=$site/pytriton/tritonserver/python_backend_stubs/$version/triton_python_backend_stub
[ -f "$stub" ] || { echo "setup.sh: nvidia-pytriton has no backend stub for Python $version" >&2; exit 1; }
if [ -n "$missing" ]; then
    declare -A debian=([libexpat.so.1]=libexpat1 [libz.so.1]=zlib1g)
    packages=()
    for lib in $missing; do
        [ -n "${debian[$lib]:-}" ] || { echo "setup.sh: tritonserver needs $lib" >&2; exit 1; }
        packages+=("${debian[$lib]}")
    done
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: tritonserver needs ${packages[*]} (apt-get install ${packages[*]})" >&2
        exit 1
    fi
    echo "setup.sh: installing ${packages[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 -qq update
    apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends "${packages[@]}" >/dev/null
fi
