"""Environment for running the TRELLIS reference on CPU. Import this module
BEFORE torch (generate.py and test_shim.py do it on their first lines).

What it does, and why:
  * OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1 and torch.set_num_threads(1):
    spconv 2.3.8's CPU convolution gives wrong, run-to-run varying results with
    more than one thread; single-threaded torch also makes every fixture
    bit-reproducible.
  * SPCONV_ALGO=native: read by trellis.modules.sparse.conv at import; the
    default 'auto' benchmarks algorithms at first use.
  * ATTN_BACKEND=flash_attn (+ SPARSE_ATTN_BACKEND): TRELLIS's default
    backends, served by our CPU shim in ./attention_shim (put first on sys.path
    here, so no PYTHONPATH juggling is needed).
  * import_trellis(): makes `import trellis.<submodule>` work WITHOUT running
    the package's top-level trellis/__init__.py. That file imports the
    pipelines, renderers and representations, which pull in rembg,
    transformers, open3d, torchvision, utils3d, plyfile, ... and a FlexiCubes
    git submodule that the PyPI wheel does not ship. The networks themselves
    (trellis.models.*, trellis.modules.*) only need torch, numpy and spconv.
"""
from __future__ import annotations

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_DIR = os.path.join(HERE, "attention_shim")

if "torch" in sys.modules:
    raise RuntimeError("reference_env must be imported before torch")

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["SPCONV_ALGO"] = "native"
os.environ["ATTN_BACKEND"] = "flash_attn"
os.environ["SPARSE_ATTN_BACKEND"] = "flash_attn"
os.environ["SPARSE_BACKEND"] = "spconv"
os.environ.pop("ATTN_DEBUG", None)
os.environ.pop("SPARSE_DEBUG", None)

if SHIM_DIR not in sys.path:
    sys.path.insert(0, SHIM_DIR)

import torch  # noqa: E402  (deliberately after the environment is set)

torch.set_num_threads(1)
torch.set_num_interop_threads(1)


def import_trellis():
    """Register the installed `trellis` package without executing its __init__.

    Returns the (empty) package module; submodules are then imported normally,
    e.g. `import trellis.models.sparse_structure_vae`.
    """
    mod = sys.modules.get("trellis")
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("trellis")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("trellis-3d-ms is not installed (run tools/golden/setup.sh)")
    pkg = importlib.util.module_from_spec(spec)  # creates the module, runs nothing
    sys.modules["trellis"] = pkg
    return pkg


def versions() -> dict:
    """Versions of everything that can change the reference numbers."""
    from importlib.metadata import version, PackageNotFoundError

    def v(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    import flash_attn  # the shim (resolved from SHIM_DIR)

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "trellis-3d-ms": v("trellis-3d-ms"),
        "spconv": v("spconv"),
        "cumm": v("cumm"),
        "numpy": v("numpy"),
        "safetensors": v("safetensors"),
        "attention_backend": "flash_attn -> tools/golden/attention_shim (" + flash_attn.__version__ + ")",
        "torch_num_threads": torch.get_num_threads(),
        "SPCONV_ALGO": os.environ["SPCONV_ALGO"],
    }
