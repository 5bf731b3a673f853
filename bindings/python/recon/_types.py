"""Enumerations, exceptions and the plain data classes of the public API."""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, Union

import numpy as np
import numpy.typing as npt

from . import abi

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.uint32]

# ---------------------------------------------------------------------------------------------
# Enumerations (values are the header's constants)


class Status(enum.IntEnum):
    """``recon_status``: the outcome of a fallible call."""

    OK = abi.RECON_OK
    INVALID_ARGUMENT = abi.RECON_ERR_INVALID_ARGUMENT
    IO = abi.RECON_ERR_IO
    NETWORK = abi.RECON_ERR_NETWORK
    FORMAT = abi.RECON_ERR_FORMAT
    CHECKPOINT = abi.RECON_ERR_CHECKPOINT
    UNSUPPORTED = abi.RECON_ERR_UNSUPPORTED
    CANCELLED = abi.RECON_ERR_CANCELLED
    OUT_OF_MEMORY = abi.RECON_ERR_OUT_OF_MEMORY
    DEVICE = abi.RECON_ERR_DEVICE
    INTERNAL = abi.RECON_ERR_INTERNAL


class Format(enum.IntFlag):
    """Outputs a run produces (``RECON_FORMAT_*`` bits); combine with ``|``."""

    GAUSSIANS = abi.RECON_FORMAT_GAUSSIANS
    MESH = abi.RECON_FORMAT_MESH
    RADIANCE_FIELD = abi.RECON_FORMAT_RADIANCE_FIELD


class ExportFormat(enum.IntEnum):
    """File formats of :meth:`Result.export` (``RECON_EXPORT_*``)."""

    GLB = abi.RECON_EXPORT_GLB
    PLY_GAUSSIANS = abi.RECON_EXPORT_PLY_GAUSSIANS
    PLY_MESH = abi.RECON_EXPORT_PLY_MESH
    OBJ = abi.RECON_EXPORT_OBJ
    #: GLB plus one glTF camera node per camera of the result (the plain GLB when it has none).
    GLB_WITH_CAMERAS = abi.RECON_EXPORT_GLB_WITH_CAMERAS


class MultiImageMode(enum.IntEnum):
    """How several views are combined (``RECON_MULTI_IMAGE_*``)."""

    STOCHASTIC = abi.RECON_MULTI_IMAGE_STOCHASTIC
    MULTIDIFFUSION = abi.RECON_MULTI_IMAGE_MULTIDIFFUSION


class BackgroundRemoval(enum.IntEnum):
    """Which views go through background removal (``recon_background_removal``): with
    preprocessing on, BiRefNet cuts the object out of them first."""

    #: Views without a useful alpha channel (RGB, or RGBA opaque everywhere), as the reference
    #: pipelines decide (the default).
    AUTO = abi.RECON_BACKGROUND_AUTO
    #: Every view, ignoring any alpha it has.
    ALWAYS = abi.RECON_BACKGROUND_ALWAYS
    #: None: views must bring their own alpha (the others raise UnsupportedError).
    NEVER = abi.RECON_BACKGROUND_NEVER


class Guidance(enum.IntEnum):
    """The samplers' classifier-free guidance formula (``recon_guidance``)."""

    #: The pipeline's own: TRELLIS's for TRELLIS, ReconViaGen v0.2's for TRELLIS-VGGT.
    DEFAULT = abi.RECON_GUIDANCE_DEFAULT
    #: ``(1 + s)·v_cond − s·v_neg`` (on TRELLIS-VGGT, the Hugging Face Space variant).
    TRELLIS = abi.RECON_GUIDANCE_TRELLIS
    #: ReconViaGen v0.2's ``w·v_cond + (1 − w)·v_neg`` with its guidance rescale.
    RECONVIAGEN = abi.RECON_GUIDANCE_RECONVIAGEN


class Stage(enum.IntEnum):
    """Pipeline stages reported to a progress callback (``RECON_STAGE_*``)."""

    PREPROCESS = abi.RECON_STAGE_PREPROCESS
    CONDITION = abi.RECON_STAGE_CONDITION
    SPARSE_STRUCTURE = abi.RECON_STAGE_SPARSE_STRUCTURE
    STRUCTURED_LATENT = abi.RECON_STAGE_STRUCTURED_LATENT
    DECODE = abi.RECON_STAGE_DECODE
    EXPORT = abi.RECON_STAGE_EXPORT


class LogLevel(enum.IntEnum):
    """Log levels (``RECON_LOG_*``); a model delivers its level and the more severe ones."""

    ERROR = abi.RECON_LOG_ERROR
    WARN = abi.RECON_LOG_WARN
    INFO = abi.RECON_LOG_INFO
    DEBUG = abi.RECON_LOG_DEBUG


class TurntableContent(enum.IntEnum):
    """What a turntable shows (``RECON_TURNTABLE_*``)."""

    #: The 3D Gaussians in colour (TRELLIS's preview video); needs Format.GAUSSIANS.
    GAUSSIANS = abi.RECON_TURNTABLE_GAUSSIANS
    #: The mesh's face normals as (n + 1) / 2 (TRELLIS's normal video); needs Format.MESH.
    MESH_NORMALS = abi.RECON_TURNTABLE_MESH_NORMALS
    #: The mesh's vertex colours, interpolated; needs the mesh with colours.
    MESH_COLORS = abi.RECON_TURNTABLE_MESH_COLORS


E = TypeVar("E", bound=enum.IntEnum)


def enum_or_int(kind: Type[E], value: int) -> Union[E, int]:
    """`value` as a member of `kind`, or the plain int when a newer library sends a value this
    package does not know."""
    try:
        return kind(value)
    except ValueError:
        return value


def unsigned(name: str, value: int, bits: int) -> int:
    """`value` checked to fit a C unsigned field (ctypes would silently wrap it)."""
    value = operator.index(value)
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be in 0..{(1 << bits) - 1}, got {value}")
    return value


def signed32(name: str, value: int) -> int:
    value = operator.index(value)
    if not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"{name} must fit in 32 bits, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Exceptions


class ReconError(Exception):
    """A failed library call. ``status`` is the :class:`Status` (an int for codes this package
    does not know) and ``message`` the library's explanation; ``str()`` gives both."""

    status: Union[Status, int] = Status.INTERNAL

    def __init__(self, status: int, message: str) -> None:
        status = enum_or_int(Status, status)
        text = abi.lib().recon_status_string(status).decode()
        super().__init__(f"{text}: {message}" if message else text)
        self.status = status
        self.message = message

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exceptions pickle their args (here the formatted text); rebuild from the fields.
        return (type(self), (int(self.status), self.message))


class InvalidArgumentError(ReconError, ValueError):
    """``RECON_ERR_INVALID_ARGUMENT``: an argument is out of range or inconsistent."""

    status = Status.INVALID_ARGUMENT


class IoError(ReconError, OSError):
    """``RECON_ERR_IO``: a file or directory could not be read or written."""

    status = Status.IO


class NetworkError(ReconError, OSError):
    """``RECON_ERR_NETWORK``: the Hugging Face Hub is unreachable or refused, or offline
    mode forbids it."""

    status = Status.NETWORK


class FormatError(ReconError):
    """``RECON_ERR_FORMAT``: a malformed file (pipeline.json, checkpoint, image)."""

    status = Status.FORMAT


class CheckpointError(ReconError):
    """``RECON_ERR_CHECKPOINT``: a checkpoint does not fit its network."""

    status = Status.CHECKPOINT


class UnsupportedError(ReconError):
    """``RECON_ERR_UNSUPPORTED``: a valid request this build cannot serve (yet)."""

    status = Status.UNSUPPORTED


class CancelledError(ReconError):
    """``RECON_ERR_CANCELLED``: the run was cancelled (token, :meth:`Model.cancel` or a
    progress callback returning False)."""

    status = Status.CANCELLED


class OutOfMemoryError(ReconError, MemoryError):
    """``RECON_ERR_OUT_OF_MEMORY``: host or GPU memory ran out."""

    status = Status.OUT_OF_MEMORY


class DeviceError(ReconError):
    """``RECON_ERR_DEVICE``: the requested device is missing, or the GPU failed."""

    status = Status.DEVICE


class InternalError(ReconError):
    """``RECON_ERR_INTERNAL``: a bug in recon; please report it with the message."""

    status = Status.INTERNAL


ERRORS: Dict[int, Type[ReconError]] = {
    cls.status: cls
    for cls in (InvalidArgumentError, IoError, NetworkError, FormatError, CheckpointError,
                UnsupportedError, CancelledError, OutOfMemoryError, DeviceError, InternalError)
}


def error_for(status: int, message: Union[bytes, str, None]) -> ReconError:
    """The exception for a failed call's `status` and message."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return ERRORS.get(status, ReconError)(status, message or "")


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class NetworkInfo:
    """One network of a loaded model (``recon_network_info``)."""

    key: str  #: pipeline.json key, e.g. "sparse_structure_decoder"
    class_name: str  #: upstream class, e.g. "SparseStructureDecoder"
    stem: str  #: checkpoint stem, e.g. "ckpts/ss_dec_conv3d_16l8_fp16"
    implemented: bool  #: False: recon only validated the checkpoint
    num_elements: int  #: parameters and buffers in the checkpoint


@dataclass(frozen=True)
class Gaussians:
    """3D Gaussians, activated: centres, SH degree-0 colours, scales, unit quaternions
    (w, x, y, z) and opacities in 0..1, all float32.

    From :attr:`Result.gaussians` the arrays are read-only views of the library's memory that
    keep it alive (see :class:`Result`); :meth:`copy` gives writable, independent arrays."""

    xyz: FloatArray  #: [N, 3]
    features_dc: FloatArray  #: [N, 3]
    scaling: FloatArray  #: [N, 3]
    rotation: FloatArray  #: [N, 4]
    opacity: FloatArray  #: [N]

    def __len__(self) -> int:
        return len(self.opacity)

    def copy(self) -> Gaussians:
        """Writable copies of the arrays, independent of the result."""
        return Gaussians(self.xyz.copy(), self.features_dc.copy(), self.scaling.copy(),
                         self.rotation.copy(), self.opacity.copy())


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: float32 vertex positions, optional float32 vertex colours in 0..1 and
    uint32 triangle indices. Views or copies as for :class:`Gaussians`."""

    positions: FloatArray  #: [V, 3]
    colors: Optional[FloatArray]  #: [V, 3], or None when the mesh has no vertex colours
    indices: IndexArray  #: [F, 3] indices into positions

    @property
    def num_vertices(self) -> int:
        return len(self.positions)

    @property
    def num_faces(self) -> int:
        return len(self.indices)

    def copy(self) -> Mesh:
        """Writable copies of the arrays, independent of the result."""
        colors = None if self.colors is None else self.colors.copy()
        return Mesh(self.positions.copy(), colors, self.indices.copy())


@dataclass(frozen=True)
class Camera:
    """A camera recovered for one input view (OpenCV convention: x right, y down, z forward;
    camera-from-world, the world being the frame of the result's Gaussians and mesh, TRELLIS's
    Z-up); the arrays are float32 copies."""

    width: int
    height: int
    extrinsic: FloatArray  #: [3, 4] row-major [R | t]
    intrinsic: FloatArray  #: [3, 3] intrinsics, in pixels: fx 0 cx / 0 fy cy / 0 0 1
    #: [4, 4] the extrinsic with the row 0 0 0 1 below (``recon_result_camera_matrices``)
    extrinsic_4x4: FloatArray
