"""Run by `make install-check` on the copy that `pip install --target $SITE` made: the package
imports from there with its py.typed marker and metadata, finds librecon through
RECON_LIBRARY, and loads the tiny model (MODEL_DIR)."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import recon

site = Path(os.environ["SITE"]).resolve()
package = Path(recon.__file__).resolve().parent
if package.parent != site:
    sys.exit(f"install-check: recon imported from {package}, not from {site}")
for name in ("py.typed", "__init__.py", "abi.py"):
    if not (package / name).is_file():
        sys.exit(f"install-check: the installed package lacks {name}")
installed = importlib.metadata.version("recon")
if installed != recon.__version__:
    sys.exit(f"install-check: metadata says {installed}, recon.__version__ {recon.__version__}")
with recon.Model.load(os.environ["MODEL_DIR"], device="cpu", offline=True) as model:
    print(f"install-check: pip installed recon {installed} into {site}; it loaded "
          f"{recon.abi.library_path()} ({recon.version()}) and {model.pipeline_name} with "
          f"{len(model.networks)} networks")
