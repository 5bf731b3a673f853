"""recon: image-to-3D reconstruction (TRELLIS) from Python, over librecon's C ABI.

    import recon

    with recon.Model.load("microsoft/TRELLIS-image-large", device="cuda") as model:
        with model.run("chair.png", seed=1) as result:  # an RGBA cut-out
            xyz = result.gaussians.xyz                    # read-only numpy view, [N, 3]
            result.export("chair.glb", recon.ExportFormat.GLB)
            ply = result.export_bytes("ply_gaussians")

Pure Python (ctypes) with numpy; every behaviour lives in the library, which is found through
the RECON_LIBRARY environment variable (a path to librecon.so), else next to this package,
else by the system loader (see :func:`recon.abi.library_candidates`). Failures raise a
:class:`ReconError` subclass per status, carrying ``.status`` and the library's ``.message``.
The raw ABI (structs, constants, the declared functions) is in :mod:`recon.abi`.
"""

from __future__ import annotations

from . import abi
from ._model import CancelSource, CancelToken, ImageInput, Model
from ._result import Result
from ._types import (BackgroundRemoval, Camera, CancelledError, CheckpointError, DeviceError,
                     ExportFormat, Format, FormatError, Gaussians, Guidance, InternalError,
                     InvalidArgumentError, IoError, LogLevel, Mesh, MultiImageMode, NetworkError,
                     NetworkInfo, OutOfMemoryError, ReconError, Stage, Status, TurntableContent,
                     UnsupportedError)

#: This package's version; equal to the library version it was written with.
__version__ = "0.1.0"

__all__ = [
    "BackgroundRemoval", "Camera", "CancelSource", "CancelToken", "CancelledError",
    "CheckpointError", "DeviceError", "ExportFormat", "Format", "FormatError", "Gaussians",
    "Guidance", "ImageInput", "InternalError",
    "InvalidArgumentError", "IoError", "LogLevel", "Mesh", "Model", "MultiImageMode",
    "NetworkError", "NetworkInfo", "OutOfMemoryError", "ReconError", "Result", "Stage",
    "Status", "TurntableContent", "UnsupportedError", "abi", "abi_version",
    "cuda_device_count", "load_library", "mp4_supported", "status_string", "version",
]


def load_library(path: str | None = None) -> None:
    """Loads librecon now, from `path` or the default places (see the module doc); raises
    OSError when it cannot be loaded or its ABI version is not the one this package needs.
    Optional: the first call that needs the library loads it."""
    abi.load_library(path)


def version() -> str:
    """The library's version, e.g. "0.1.0"."""
    return abi.lib().recon_version_string().decode()


def abi_version() -> int:
    """The library's ABI version (this package needs :data:`recon.abi.ABI_VERSION`)."""
    return abi.lib().recon_abi_version()


def status_string(status: int) -> str:
    """The library's short description of a status code."""
    return abi.lib().recon_status_string(status).decode()


def cuda_device_count() -> int:
    """CUDA devices the library can use (0 without CUDA)."""
    return abi.lib().recon_cuda_device_count()


def mp4_supported() -> bool:
    """Whether the library writes MP4 (H.264) turntables; without, only PNG frame folders."""
    return bool(abi.lib().recon_mp4_supported())
