"""The raw C ABI of librecon (include/recon.h) through ctypes: constants, structs, signatures and
the library loader. The rest of the package is built on this module; use it directly only for
what the high-level API does not cover (the tests do, to reach every corner of the ABI).

Names follow the header: constants keep their ``RECON_`` names, structs drop the ``recon_``
prefix and are CamelCase (``recon_run_params`` -> :class:`RunParams`). :func:`lib` returns the
loaded library with ``argtypes``/``restype`` declared for every function of the header.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from ctypes import POINTER, c_char, c_char_p, c_float, c_int32, c_size_t, c_uint8, c_uint32
from ctypes import c_uint64, c_void_p
from typing import Any, Dict, List, Optional, Protocol, Tuple, cast

# ---------------------------------------------------------------------------------------------
# Constants: the header's #defines and enum values, same names and values.

RECON_ABI_VERSION = 1
RECON_VERSION_MAJOR = 0
RECON_VERSION_MINOR = 1
RECON_VERSION_PATCH = 0

RECON_OK = 0
RECON_ERR_INVALID_ARGUMENT = 1
RECON_ERR_IO = 2
RECON_ERR_NETWORK = 3
RECON_ERR_FORMAT = 4
RECON_ERR_CHECKPOINT = 5
RECON_ERR_UNSUPPORTED = 6
RECON_ERR_CANCELLED = 7
RECON_ERR_OUT_OF_MEMORY = 8
RECON_ERR_DEVICE = 9
RECON_ERR_INTERNAL = 10

RECON_DEVICE_AUTO = -2
RECON_DEVICE_CPU = -1
RECON_OFFLINE_FROM_ENV = -1

RECON_LOG_ERROR = 1
RECON_LOG_WARN = 2
RECON_LOG_INFO = 3
RECON_LOG_DEBUG = 4

RECON_EXPORT_GLB = 1
RECON_EXPORT_PLY_GAUSSIANS = 2
RECON_EXPORT_PLY_MESH = 3
RECON_EXPORT_OBJ = 4
RECON_EXPORT_GLB_WITH_CAMERAS = 5

RECON_IMAGE_ENCODED = 0
RECON_IMAGE_RGB8 = 1
RECON_IMAGE_RGBA8 = 2

RECON_FORMAT_GAUSSIANS = 1
RECON_FORMAT_MESH = 2
RECON_FORMAT_RADIANCE_FIELD = 4

RECON_MULTI_IMAGE_STOCHASTIC = 0
RECON_MULTI_IMAGE_MULTIDIFFUSION = 1

# recon_background_removal (recon_run_params.remove_background, struct v2)
RECON_BACKGROUND_AUTO = 0
RECON_BACKGROUND_ALWAYS = 1
RECON_BACKGROUND_NEVER = 2

# recon_guidance (recon_run_params.guidance, struct v2)
RECON_GUIDANCE_DEFAULT = 0
RECON_GUIDANCE_TRELLIS = 1
RECON_GUIDANCE_RECONVIAGEN = 2

RECON_DEFAULT_CFG_STRENGTH = -1.0

RECON_STAGE_PREPROCESS = 1
RECON_STAGE_CONDITION = 2
RECON_STAGE_SPARSE_STRUCTURE = 3
RECON_STAGE_STRUCTURED_LATENT = 4
RECON_STAGE_DECODE = 5
RECON_STAGE_EXPORT = 6

# recon_textured_export_params.image_format and .bake_mode
RECON_TEXTURE_PNG = 0
RECON_TEXTURE_JPEG = 1
RECON_TEXTURE_WEBP = 2
RECON_BAKE_FAST = 0
RECON_BAKE_OPTIMIZE = 1

# recon_turntable_params.content
RECON_TURNTABLE_GAUSSIANS = 0
RECON_TURNTABLE_MESH_NORMALS = 1
RECON_TURNTABLE_MESH_COLORS = 2

#: The ABI version this package was written for; :func:`load_library` refuses any other.
ABI_VERSION = RECON_ABI_VERSION

# ---------------------------------------------------------------------------------------------
# Structs: the same field order and C types as the header (fields are only ever appended;
# struct_size comes first). The annotations only tell type checkers what the fields hold.

LogCallback = ctypes.CFUNCTYPE(None, c_int32, c_char_p, c_void_p)


class LoadParams(ctypes.Structure):
    """``recon_load_params``."""

    struct_size: int
    device: int
    model: Optional[bytes]
    offline: int
    log_level: int
    log_callback: Any
    log_user_data: Optional[int]
    low_vram: int
    vggt_model: Optional[bytes]
    background_model: Optional[bytes]
    _fields_ = [
        ("struct_size", c_uint32),
        ("device", c_int32),
        ("model", c_char_p),
        ("offline", c_int32),
        ("log_level", c_int32),
        ("log_callback", LogCallback),
        ("log_user_data", c_void_p),
        # v2
        ("low_vram", c_int32),
        ("vggt_model", c_char_p),
        # v3
        ("background_model", c_char_p),
    ]


class NetworkInfo(ctypes.Structure):
    """``recon_network_info``."""

    struct_size: int
    implemented: int
    num_elements: int
    key: Optional[bytes]
    class_name: Optional[bytes]
    stem: Optional[bytes]
    _fields_ = [
        ("struct_size", c_uint32),
        ("implemented", c_int32),
        ("num_elements", c_uint64),
        ("key", c_char_p),
        ("class_name", c_char_p),
        ("stem", c_char_p),
    ]


class Gaussians(ctypes.Structure):
    """``recon_gaussians``."""

    struct_size: int
    count: int
    xyz: Any
    features_dc: Any
    scaling: Any
    rotation: Any
    opacity: Any
    _fields_ = [
        ("struct_size", c_uint32),
        ("count", c_size_t),
        ("xyz", POINTER(c_float)),
        ("features_dc", POINTER(c_float)),
        ("scaling", POINTER(c_float)),
        ("rotation", POINTER(c_float)),
        ("opacity", POINTER(c_float)),
    ]


class Mesh(ctypes.Structure):
    """``recon_mesh``."""

    struct_size: int
    num_vertices: int
    positions: Any
    colors: Any
    num_faces: int
    indices: Any
    _fields_ = [
        ("struct_size", c_uint32),
        ("num_vertices", c_size_t),
        ("positions", POINTER(c_float)),
        ("colors", POINTER(c_float)),
        ("num_faces", c_size_t),
        ("indices", POINTER(c_uint32)),
    ]


class Camera(ctypes.Structure):
    """``recon_camera``."""

    struct_size: int
    width: int
    height: int
    extrinsic: Any
    intrinsic: Any
    _fields_ = [
        ("struct_size", c_uint32),
        ("width", c_uint32),
        ("height", c_uint32),
        ("extrinsic", c_float * 12),
        ("intrinsic", c_float * 9),
    ]


class Progress(ctypes.Structure):
    """``recon_progress``."""

    struct_size: int
    stage: int
    step: int
    total: int
    _fields_ = [
        ("struct_size", c_uint32),
        ("stage", c_int32),
        ("step", c_uint32),
        ("total", c_uint32),
    ]


ProgressCallback = ctypes.CFUNCTYPE(c_int32, POINTER(Progress), c_void_p)


class RunParams(ctypes.Structure):
    """``recon_run_params``."""

    struct_size: int
    sparse_structure_steps: int
    seed: int
    sparse_structure_cfg_strength: float
    slat_steps: int
    slat_cfg_strength: float
    formats: int
    multi_image_mode: int
    preprocess: int
    progress_callback: Any
    progress_user_data: Optional[int]
    remove_background: int
    guidance: int
    estimate_cameras: int
    _fields_ = [
        ("struct_size", c_uint32),
        ("sparse_structure_steps", c_uint32),
        ("seed", c_uint64),
        ("sparse_structure_cfg_strength", c_float),
        ("slat_steps", c_uint32),
        ("slat_cfg_strength", c_float),
        ("formats", c_uint32),
        ("multi_image_mode", c_int32),
        ("preprocess", c_int32),
        ("progress_callback", ProgressCallback),
        ("progress_user_data", c_void_p),
        # v2
        ("remove_background", c_int32),
        ("guidance", c_int32),
        # v3
        ("estimate_cameras", c_int32),
    ]


class Image(ctypes.Structure):
    """``recon_image``."""

    struct_size: int
    format: int
    data: Any
    size: int
    width: int
    height: int
    stride: int
    _fields_ = [
        ("struct_size", c_uint32),
        ("format", c_int32),
        ("data", POINTER(c_uint8)),
        ("size", c_size_t),
        ("width", c_uint32),
        ("height", c_uint32),
        ("stride", c_size_t),
    ]


class TexturedExportParams(ctypes.Structure):
    """``recon_textured_export_params``."""

    struct_size: int
    image_format: int
    simplify: float
    fill_holes: int
    fill_holes_max_size: float
    texture_size: int
    bake_mode: int
    bake_steps: int
    bake_lambda_tv: float
    views: int
    render_resolution: int
    vertex_colors_only: int
    jpeg_quality: int
    device: int
    fill_holes_views: int
    fill_holes_resolution: int
    seed: int
    _fields_ = [
        ("struct_size", c_uint32),
        ("image_format", c_int32),
        ("simplify", c_float),
        ("fill_holes", c_int32),
        ("fill_holes_max_size", c_float),
        ("texture_size", c_uint32),
        ("bake_mode", c_int32),
        ("bake_steps", c_uint32),
        ("bake_lambda_tv", c_float),
        ("views", c_uint32),
        ("render_resolution", c_uint32),
        ("vertex_colors_only", c_int32),
        ("jpeg_quality", c_uint32),
        ("device", c_int32),
        ("fill_holes_views", c_uint32),
        ("fill_holes_resolution", c_uint32),
        ("seed", c_uint64),
    ]


class TurntableParams(ctypes.Structure):
    """``recon_turntable_params``."""

    struct_size: int
    content: int
    frames: int
    resolution: int
    radius: float
    fov_degrees: float
    background: Any
    device: int
    fps: int
    mesh_ssaa: int
    _fields_ = [
        ("struct_size", c_uint32),
        ("content", c_int32),
        ("frames", c_uint32),
        ("resolution", c_uint32),
        ("radius", c_float),
        ("fov_degrees", c_float),
        ("background", c_float * 3),
        ("device", c_int32),
        ("fps", c_uint32),
        ("mesh_ssaa", c_uint32),
    ]


class Frame(ctypes.Structure):
    """``recon_frame``: one turntable frame, valid only during the callback."""

    struct_size: int
    index: int
    count: int
    width: int
    height: int
    rgba: Any
    _fields_ = [
        ("struct_size", c_uint32),
        ("index", c_uint32),
        ("count", c_uint32),
        ("width", c_uint32),
        ("height", c_uint32),
        ("rgba", POINTER(c_uint8)),
    ]


FrameCallback = ctypes.CFUNCTYPE(c_int32, POINTER(Frame), c_void_p)


# ---------------------------------------------------------------------------------------------
# Functions

_P = c_void_p  # opaque handles (recon_model*, recon_result*, recon_buffer*) travel as void*

#: name -> (restype, argtypes) for every function of the header, in its order.
SIGNATURES: Dict[str, Tuple[Any, List[Any]]] = {
    "recon_load_params_init": (None, [POINTER(LoadParams)]),
    "recon_load_params_init_sized": (c_int32, [POINTER(LoadParams), c_size_t]),
    "recon_load": (c_int32, [POINTER(LoadParams), POINTER(_P), POINTER(c_char), c_size_t]),
    "recon_free": (None, [_P]),
    "recon_model_last_error": (c_char_p, [_P]),
    "recon_cancel": (None, [_P]),
    "recon_model_pipeline_name": (c_char_p, [_P]),
    "recon_model_device": (c_int32, [_P]),
    "recon_model_num_networks": (c_size_t, [_P]),
    "recon_model_network": (c_int32, [_P, c_size_t, POINTER(NetworkInfo)]),
    "recon_result_free": (None, [_P]),
    "recon_result_last_error": (c_char_p, [_P]),
    "recon_result_gaussians": (c_int32, [_P, POINTER(Gaussians)]),
    "recon_result_mesh": (c_int32, [_P, POINTER(Mesh)]),
    "recon_result_num_cameras": (c_size_t, [_P]),
    "recon_result_camera": (c_int32, [_P, c_size_t, POINTER(Camera)]),
    "recon_result_camera_matrices": (c_int32, [_P, c_size_t, POINTER(c_float),
                                               POINTER(c_float)]),
    "recon_result_export": (c_int32, [_P, c_int32, c_char_p]),
    "recon_result_export_buffer": (c_int32, [_P, c_int32, POINTER(_P)]),
    "recon_buffer_data": (POINTER(c_uint8), [_P]),
    "recon_buffer_size": (c_size_t, [_P]),
    "recon_buffer_free": (None, [_P]),
    "recon_run_params_init": (None, [POINTER(RunParams)]),
    "recon_run_params_init_sized": (c_int32, [POINTER(RunParams), c_size_t]),
    "recon_image_init": (None, [POINTER(Image)]),
    "recon_run": (c_int32, [_P, POINTER(Image), c_size_t, POINTER(RunParams), POINTER(_P)]),
    "recon_abi_version": (c_uint32, []),
    "recon_version_string": (c_char_p, []),
    "recon_status_string": (c_char_p, [c_int32]),
    "recon_cuda_device_count": (c_int32, []),
    "recon_textured_export_params_init": (None, [POINTER(TexturedExportParams)]),
    "recon_textured_export_params_init_sized": (c_int32, [POINTER(TexturedExportParams),
                                                          c_size_t]),
    "recon_result_export_textured": (c_int32, [_P, c_int32, POINTER(TexturedExportParams),
                                               c_char_p]),
    "recon_result_export_textured_buffer": (c_int32, [_P, c_int32,
                                                      POINTER(TexturedExportParams),
                                                      POINTER(_P)]),
    "recon_turntable_params_init": (None, [POINTER(TurntableParams)]),
    "recon_turntable_params_init_sized": (c_int32, [POINTER(TurntableParams), c_size_t]),
    "recon_result_render_turntable": (c_int32, [_P, POINTER(TurntableParams), FrameCallback,
                                                c_void_p]),
    "recon_result_write_turntable": (c_int32, [_P, POINTER(TurntableParams), c_char_p,
                                               FrameCallback, c_void_p]),
    "recon_mp4_supported": (c_int32, []),
}


class Library(Protocol):
    """What :func:`lib` returns: librecon with every function of the header declared. Pointer
    arguments take ctypes pointers (``byref(...)``) or None for NULL; handles are ints (or
    None); ``const char*`` results arrive as bytes."""

    def recon_load_params_init(self, params: Any, /) -> None: ...
    def recon_load_params_init_sized(self, params: Any, size: int, /) -> int: ...

    def recon_load(self, params: Any, out_model: Any, error_buf: Any,
                   error_buf_len: int, /) -> int: ...

    def recon_free(self, model: Optional[int], /) -> None: ...

    def recon_model_last_error(self, model: Optional[int], /) -> bytes: ...

    def recon_cancel(self, model: Optional[int], /) -> None: ...

    def recon_model_pipeline_name(self, model: Optional[int], /) -> bytes: ...

    def recon_model_device(self, model: Optional[int], /) -> int: ...

    def recon_model_num_networks(self, model: Optional[int], /) -> int: ...

    def recon_model_network(self, model: Optional[int], index: int, out: Any, /) -> int: ...

    def recon_result_free(self, result: Optional[int], /) -> None: ...

    def recon_result_last_error(self, result: Optional[int], /) -> bytes: ...

    def recon_result_gaussians(self, result: Optional[int], out: Any, /) -> int: ...

    def recon_result_mesh(self, result: Optional[int], out: Any, /) -> int: ...

    def recon_result_num_cameras(self, result: Optional[int], /) -> int: ...

    def recon_result_camera(self, result: Optional[int], index: int, out: Any, /) -> int: ...

    def recon_result_camera_matrices(self, result: Optional[int], index: int,
                                     out_extrinsic_4x4: Any, out_intrinsic_3x3: Any,
                                     /) -> int: ...

    def recon_result_export(self, result: Optional[int], format: int,
                            path: Optional[bytes], /) -> int: ...

    def recon_result_export_buffer(self, result: Optional[int], format: int,
                                   out_buffer: Any, /) -> int: ...

    def recon_buffer_data(self, buffer: Any, /) -> Any: ...

    def recon_buffer_size(self, buffer: Any, /) -> int: ...

    def recon_buffer_free(self, buffer: Any, /) -> None: ...

    def recon_run_params_init(self, params: Any, /) -> None: ...
    def recon_run_params_init_sized(self, params: Any, size: int, /) -> int: ...

    def recon_image_init(self, image: Any, /) -> None: ...

    def recon_run(self, model: Optional[int], images: Any, num_images: int, params: Any,
                  out_result: Any, /) -> int: ...

    def recon_abi_version(self) -> int: ...

    def recon_version_string(self) -> bytes: ...

    def recon_status_string(self, status: int, /) -> bytes: ...

    def recon_cuda_device_count(self) -> int: ...

    def recon_textured_export_params_init(self, params: Any, /) -> None: ...
    def recon_textured_export_params_init_sized(self, params: Any, size: int, /) -> int: ...

    def recon_result_export_textured(self, result: Optional[int], format: int, params: Any,
                                     path: Optional[bytes], /) -> int: ...

    def recon_result_export_textured_buffer(self, result: Optional[int], format: int,
                                            params: Any, out_buffer: Any, /) -> int: ...

    def recon_turntable_params_init(self, params: Any, /) -> None: ...
    def recon_turntable_params_init_sized(self, params: Any, size: int, /) -> int: ...

    def recon_result_render_turntable(self, result: Optional[int], params: Any, callback: Any,
                                      user_data: Optional[int], /) -> int: ...

    def recon_result_write_turntable(self, result: Optional[int], params: Any,
                                     path: Optional[bytes], callback: Any,
                                     user_data: Optional[int], /) -> int: ...

    def recon_mp4_supported(self) -> int: ...


# ---------------------------------------------------------------------------------------------
# Loading

#: The library's file name on this platform.
LIBRARY_NAME = {"darwin": "librecon.dylib", "win32": "recon.dll"}.get(sys.platform, "librecon.so")

_LIB: Optional[Library] = None
_LIB_LOCK = threading.Lock()


def library_candidates() -> List[str]:
    """Where :func:`load_library` looks, in order: the RECON_LIBRARY environment variable
    alone when it is set; else the library file next to this package (a wheel that bundles
    it), then the bare file name for the system loader (LD_LIBRARY_PATH, the ld.so cache,
    RUNPATHs), then what ``ctypes.util.find_library("recon")`` finds."""
    env = os.environ.get("RECON_LIBRARY")
    if env:
        return [env]
    candidates = []
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)
    if os.path.exists(beside):
        candidates.append(beside)
    candidates.append(LIBRARY_NAME)
    found = ctypes.util.find_library("recon")
    if found and found not in candidates:
        candidates.append(found)
    return candidates


def _open(candidates: List[str]) -> ctypes.CDLL:
    failures = []
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate)
        except OSError as exc:
            failures.append(f"{candidate}: {exc}")
    raise OSError("librecon could not be loaded (set RECON_LIBRARY to the path of "
                  f"{LIBRARY_NAME}); tried " + "; ".join(failures))


def load_library(path: Optional[str] = None) -> Library:
    """Loads librecon from `path` (default: see :func:`library_candidates`), declares its
    functions and checks its ABI version. The package calls it on first use; call it earlier
    to choose the file. Raises OSError when no library loads or its ABI version differs."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is not None and path is None:
            return _LIB
        cdll = _open([path] if path is not None else library_candidates())
        for name, (restype, argtypes) in SIGNATURES.items():
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
        found = cdll.recon_abi_version()
        if found != ABI_VERSION:
            raise OSError(f"{cdll._name}: ABI version {found}, this package needs {ABI_VERSION}")
        _LIB = cast(Library, cdll)
        return _LIB


def lib() -> Library:
    """The loaded library (loading it on first use)."""
    return _LIB if _LIB is not None else load_library()


def library_path() -> str:
    """The file or name the library was loaded from."""
    return str(cast(Any, lib())._name)
