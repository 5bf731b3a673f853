#!/usr/bin/env bash
# Create/refresh the golden-fixture generator's virtual environment:
#   bash tools/golden/setup.sh
# Idempotent: reuses tools/golden/.venv if present; pip skips what is installed.
# Override the interpreter with PYTHON=/path/to/python3.11.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "need Python 3.11, got " + sys.version.split()[0])'
    echo "creating $VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "tools/golden/.venv is not Python 3.11; delete it and rerun")'

"$VENV/bin/python" -m pip install -r "$HERE/requirements.txt"
# trellis-3d-ms's declared dependencies are not installable / not needed (README.md).
"$VENV/bin/python" -m pip install --no-deps -r "$HERE/requirements-nodeps.txt"

# Smoke test: the reference network code imports through our environment setup.
cd "$HERE"
"$VENV/bin/python" -c '
import reference_env
reference_env.import_trellis()
import trellis.models.sparse_structure_vae
import flash_attn
assert flash_attn.IS_RECON_SHIM
print("ok:", reference_env.versions())
'

# FlexiCubes (a git submodule of TRELLIS, not in the wheel): fetched at the commit pinned in
# requirements-github.txt into .cache/ (git-ignored), every file checked against its sha256.
# Offline: FLEXICUBES_TARBALL=<the GitHub tarball> or FLEXICUBES_GIT_DIR=<a git dir with the
# commit> (README.md). Then the SLat decoders (trellis.representations) import too.
"$VENV/bin/python" -c '
import sys
sys.path.insert(0, "cases")
import generate
generate.load_case_modules()
import stage2
print("FlexiCubes:", stage2.flexicubes_dir())
stage2.import_reference_representations()
import trellis.models.structured_latent_vae
print("ok: trellis.representations with FlexiCubes", stage2.flexicubes_record()["commit"])
'
