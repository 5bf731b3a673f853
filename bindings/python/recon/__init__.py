"""recon — Python bindings (ctypes, no compiled extension) for librecon's C ABI (include/recon.h).

    import recon
    with recon.Model("microsoft/TRELLIS-image-large", device="cuda:0") as model:
        with model.run([open("chair.png", "rb").read()], seed=1) as result:  # an RGBA cut-out
            gaussians = result.gaussians()  # numpy arrays: xyz, features_dc, scaling, ...
            result.export(recon.RECON_EXPORT_GLB, "chair.glb")
            ply = result.export_bytes(recon.RECON_EXPORT_PLY_GAUSSIANS)

A run can be stopped from another thread with `model.cancel()` (it raises CancelledError), or
by a `progress` callback returning False.

The library is found through the RECON_LIBRARY environment variable (a path to librecon.so),
else next to this package, else with ctypes.util.find_library("recon"). Failures raise a
ReconError subclass per status code, carrying `.status` and the library's message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
import threading
from ctypes import POINTER, byref, c_char, c_char_p, c_float, c_int32, c_size_t, c_uint8
from ctypes import c_uint32, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

try:  # numpy is optional: raw-pixel input and array outputs need it.
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

__all__ = [
    "ABI_VERSION", "Model", "Result", "NetworkInfo", "ReconError", "abi_version", "version",
    "cuda_device_count", "status_string", "lib", "load_library",
]

# ---------------------------------------------------------------------------------------------
# Constants (same names and values as recon.h)

#: The RECON_ABI_VERSION these bindings were written for; the library must report the same.
ABI_VERSION = RECON_ABI_VERSION = 1

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

RECON_IMAGE_ENCODED = 0
RECON_IMAGE_RGB8 = 1
RECON_IMAGE_RGBA8 = 2

RECON_FORMAT_GAUSSIANS = 1
RECON_FORMAT_MESH = 2
RECON_FORMAT_RADIANCE_FIELD = 4

RECON_MULTI_IMAGE_STOCHASTIC = 0
RECON_MULTI_IMAGE_MULTIDIFFUSION = 1

RECON_DEFAULT_CFG_STRENGTH = -1.0

RECON_STAGE_PREPROCESS = 1
RECON_STAGE_CONDITION = 2
RECON_STAGE_SPARSE_STRUCTURE = 3
RECON_STAGE_STRUCTURED_LATENT = 4
RECON_STAGE_DECODE = 5
RECON_STAGE_EXPORT = 6

RECON_EXPORT_GLB = 1
RECON_EXPORT_PLY_GAUSSIANS = 2
RECON_EXPORT_PLY_MESH = 3
RECON_EXPORT_OBJ = 4

# ---------------------------------------------------------------------------------------------
# Exceptions


class ReconError(Exception):
    """A failed recon call: `status` is the RECON_ERR_* code, `message` the library's text."""

    status: int = RECON_ERR_INTERNAL

    def __init__(self, status: int, message: str) -> None:
        text = status_string(status)
        super().__init__(f"{text}: {message}" if message else text)
        self.status = status
        self.message = message


class InvalidArgumentError(ReconError, ValueError):
    status = RECON_ERR_INVALID_ARGUMENT


class IoError(ReconError):
    status = RECON_ERR_IO


class NetworkError(ReconError):
    status = RECON_ERR_NETWORK


class FormatError(ReconError):
    status = RECON_ERR_FORMAT


class CheckpointError(ReconError):
    status = RECON_ERR_CHECKPOINT


class UnsupportedError(ReconError):
    status = RECON_ERR_UNSUPPORTED


class CancelledError(ReconError):
    status = RECON_ERR_CANCELLED


class OutOfMemoryError(ReconError, MemoryError):
    status = RECON_ERR_OUT_OF_MEMORY


class DeviceError(ReconError):
    status = RECON_ERR_DEVICE


class InternalError(ReconError):
    status = RECON_ERR_INTERNAL


_ERRORS: dict[int, type[ReconError]] = {
    cls.status: cls
    for cls in (InvalidArgumentError, IoError, NetworkError, FormatError, CheckpointError,
                UnsupportedError, CancelledError, OutOfMemoryError, DeviceError, InternalError)
}
__all__ += [cls.__name__ for cls in _ERRORS.values()]


def _check(status: int, message: Union[bytes, str, None]) -> None:
    """Raises the exception for `status` (nothing for RECON_OK)."""
    if status == RECON_OK:
        return
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    raise _ERRORS.get(status, ReconError)(status, message or "")


# ---------------------------------------------------------------------------------------------
# Structs: the same field order and types as src/ffi (append-only; struct_size first).

LogCallback = ctypes.CFUNCTYPE(None, c_int32, c_char_p, c_void_p)


class LoadParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("device", c_int32),
        ("model", c_char_p),
        ("offline", c_int32),
        ("log_level", c_int32),
        ("log_callback", LogCallback),
        ("log_user_data", c_void_p),
    ]


class NetworkInfoStruct(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("implemented", c_int32),
        ("num_elements", c_uint64),
        ("key", c_char_p),
        ("class_name", c_char_p),
        ("stem", c_char_p),
    ]


class Gaussians(ctypes.Structure):
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
    _fields_ = [
        ("struct_size", c_uint32),
        ("num_vertices", c_size_t),
        ("positions", POINTER(c_float)),
        ("colors", POINTER(c_float)),
        ("num_faces", c_size_t),
        ("indices", POINTER(c_uint32)),
    ]


class Camera(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("width", c_uint32),
        ("height", c_uint32),
        ("extrinsic", c_float * 12),
        ("intrinsic", c_float * 9),
    ]


class Progress(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("stage", c_int32),
        ("step", c_uint32),
        ("total", c_uint32),
    ]


ProgressCallback = ctypes.CFUNCTYPE(c_int32, POINTER(Progress), c_void_p)


class RunParams(ctypes.Structure):
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
    ]


class Image(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("format", c_int32),
        ("data", POINTER(c_uint8)),
        ("size", c_size_t),
        ("width", c_uint32),
        ("height", c_uint32),
        ("stride", c_size_t),
    ]


# ---------------------------------------------------------------------------------------------
# The library

_P = c_void_p  # opaque handles (recon_model*, recon_result*, recon_buffer*) travel as void*

# name: (restype, argtypes), as declared in recon.h.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "recon_abi_version": (c_uint32, []),
    "recon_version_string": (c_char_p, []),
    "recon_status_string": (c_char_p, [c_int32]),
    "recon_cuda_device_count": (c_int32, []),
    "recon_load_params_init": (None, [POINTER(LoadParams)]),
    "recon_load": (c_int32, [POINTER(LoadParams), POINTER(_P), POINTER(c_char), c_size_t]),
    "recon_free": (None, [_P]),
    "recon_model_last_error": (c_char_p, [_P]),
    "recon_cancel": (None, [_P]),
    "recon_model_pipeline_name": (c_char_p, [_P]),
    "recon_model_device": (c_int32, [_P]),
    "recon_model_num_networks": (c_size_t, [_P]),
    "recon_model_network": (c_int32, [_P, c_size_t, POINTER(NetworkInfoStruct)]),
    "recon_run_params_init": (None, [POINTER(RunParams)]),
    "recon_image_init": (None, [POINTER(Image)]),
    "recon_run": (c_int32, [_P, POINTER(Image), c_size_t, POINTER(RunParams), POINTER(_P)]),
    "recon_result_free": (None, [_P]),
    "recon_result_last_error": (c_char_p, [_P]),
    "recon_result_gaussians": (c_int32, [_P, POINTER(Gaussians)]),
    "recon_result_mesh": (c_int32, [_P, POINTER(Mesh)]),
    "recon_result_num_cameras": (c_size_t, [_P]),
    "recon_result_camera": (c_int32, [_P, c_size_t, POINTER(Camera)]),
    "recon_result_export": (c_int32, [_P, c_int32, c_char_p]),
    "recon_result_export_buffer": (c_int32, [_P, c_int32, POINTER(_P)]),
    "recon_buffer_data": (POINTER(c_uint8), [_P]),
    "recon_buffer_size": (c_size_t, [_P]),
    "recon_buffer_free": (None, [_P]),
}

_LIB: Optional[ctypes.CDLL] = None
_LIB_LOCK = threading.Lock()


def _library_path() -> str:
    env = os.environ.get("RECON_LIBRARY")
    if env:
        return env
    names = {"darwin": "librecon.dylib", "win32": "recon.dll"}
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          names.get(sys.platform, "librecon.so"))
    if os.path.exists(beside):
        return beside
    found = ctypes.util.find_library("recon")
    if not found:
        raise OSError("librecon not found: set RECON_LIBRARY to the path of librecon.so")
    return found


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Loads librecon (default: see the module docstring), declares its functions and checks
    its ABI version. Called on first use; call it first to pick another library file."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is None or path is not None:
            cdll = ctypes.CDLL(path or _library_path())
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(cdll, name)
                fn.restype, fn.argtypes = restype, argtypes
            found = cdll.recon_abi_version()
            if found != ABI_VERSION:
                raise OSError(f"{cdll._name}: ABI version {found}, "
                              f"these bindings need {ABI_VERSION}")
            _LIB = cdll
        return _LIB


def lib() -> ctypes.CDLL:
    """The loaded library, with argtypes/restype declared (for direct ABI calls)."""
    return _LIB if _LIB is not None else load_library()


def abi_version() -> int:
    return lib().recon_abi_version()


def version() -> str:
    return lib().recon_version_string().decode()


def cuda_device_count() -> int:
    return lib().recon_cuda_device_count()


def status_string(status: int) -> str:
    return lib().recon_status_string(status).decode()


# ---------------------------------------------------------------------------------------------
# Model, Result


@dataclass(frozen=True)
class NetworkInfo:
    key: str  # pipeline.json key, e.g. "sparse_structure_decoder"
    class_name: str  # upstream class, e.g. "SparseStructureDecoder"
    stem: str  # checkpoint stem, e.g. "ckpts/ss_dec_conv3d_16l8_fp16"
    implemented: bool  # False: recon only validated the checkpoint
    num_elements: int


# recon_run_params fields that Model.run accepts as keyword arguments.
_RUN_PARAM_NAMES = {name for name, _ in RunParams._fields_} - {
    "struct_size", "progress_callback", "progress_user_data"}

ImageInput = Union[bytes, bytearray, memoryview, "np.ndarray"]


def _device_index(device: Union[int, str]) -> int:
    if isinstance(device, int):
        return device
    if device == "auto":
        return RECON_DEVICE_AUTO
    if device == "cpu":
        return RECON_DEVICE_CPU
    if device.startswith("cuda"):
        return int(device.partition(":")[2] or 0)
    raise ValueError(f"device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or an index")


def _image_struct(image: ImageInput, keep: list) -> Image:
    """A recon_image borrowing `image`'s bytes; what must stay alive is appended to `keep`."""
    view = Image()
    lib().recon_image_init(byref(view))
    if isinstance(image, bytes):  # borrowed, no copy
        buf = c_char_p(image)
        view.format, view.size = RECON_IMAGE_ENCODED, len(image)
    elif isinstance(image, (bytearray, memoryview)):
        image = bytes(image)
        buf = c_char_p(image)
        view.format, view.size = RECON_IMAGE_ENCODED, len(image)
    elif np is not None and isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError("pixel arrays must be uint8 HxWx3 or HxWx4, "
                             f"got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image)
        buf = image.ctypes.data_as(POINTER(c_uint8))
        view.format = RECON_IMAGE_RGB8 if image.shape[2] == 3 else RECON_IMAGE_RGBA8
        view.size, view.stride = image.nbytes, image.strides[0]
        view.height, view.width = image.shape[:2]
    else:
        raise TypeError("an image is encoded bytes or a numpy uint8 array, "
                        f"not {type(image).__name__}")
    keep += [image, buf]
    view.data = ctypes.cast(buf, POINTER(c_uint8))
    return view


class Model:
    """A loaded pipeline (`recon_load`). Use as a context manager or call `close()`."""

    def __init__(self, model: Union[str, os.PathLike], *, device: Union[int, str] = "auto",
                 offline: Optional[bool] = None, log: Optional[Callable[[int, str], None]] = None,
                 log_level: int = RECON_LOG_INFO) -> None:
        self._handle: Optional[int] = None
        params = LoadParams()
        lib().recon_load_params_init(byref(params))
        params.model = os.fsencode(model)
        params.device = _device_index(device)
        params.offline = RECON_OFFLINE_FROM_ENV if offline is None else int(offline)
        params.log_level = log_level
        # The C callback object must outlive the model: the library keeps and calls it.
        self._log_callback = LogCallback(self._log_trampoline(log)) if log else LogCallback()
        params.log_callback = self._log_callback
        handle, err = c_void_p(), ctypes.create_string_buffer(1024)
        _check(lib().recon_load(byref(params), byref(handle), err, len(err)), err.value)
        self._handle = handle.value
        self.networks: list[NetworkInfo] = [self._network(i) for i in range(
            lib().recon_model_num_networks(self._handle))]

    @staticmethod
    def _log_trampoline(log: Callable[[int, str], None]) -> Callable[[int, bytes, Any], None]:
        def trampoline(level: int, message: bytes, _user_data: Any) -> None:
            try:
                log(level, message.decode("utf-8", "replace"))
            except Exception:  # an exception must not cross into the library
                pass
        return trampoline

    def _network(self, index: int) -> NetworkInfo:
        info = NetworkInfoStruct(struct_size=ctypes.sizeof(NetworkInfoStruct))
        self._call(lib().recon_model_network(self.handle, index, byref(info)))
        return NetworkInfo(info.key.decode(), info.class_name.decode(), info.stem.decode(),
                           bool(info.implemented), info.num_elements)

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("the model is closed")
        return self._handle

    def _call(self, status: int) -> None:
        if status != RECON_OK:
            _check(status, lib().recon_model_last_error(self.handle))

    @property
    def pipeline_name(self) -> str:
        return lib().recon_model_pipeline_name(self.handle).decode()

    @property
    def device(self) -> int:
        """RECON_DEVICE_CPU (-1) or the CUDA device index."""
        return lib().recon_model_device(self.handle)

    @property
    def last_error(self) -> str:
        return lib().recon_model_last_error(self.handle).decode("utf-8", "replace")

    def cancel(self) -> None:
        """Asks the run in progress (on another thread) to stop with CancelledError."""
        lib().recon_cancel(self.handle)

    def run(self, images: Sequence[ImageInput], *,
            progress: Optional[Callable[[int, int, int], Optional[bool]]] = None,
            **params: Any) -> "Result":
        """Generates a 3D asset from views of one object. `images` are encoded PNG/JPEG/WebP
        bytes or uint8 HxWx3/HxWx4 numpy arrays; with preprocessing on (the default) they must
        be cut-outs, transparent around the object (recon does not remove backgrounds yet:
        an opaque image raises UnsupportedError). `params` are recon_run_params fields (seed,
        sparse_structure_steps, sparse_structure_cfg_strength, slat_steps, slat_cfg_strength,
        formats, multi_image_mode, preprocess). `progress(stage, step, total)` returning False
        cancels. Raises a ReconError subclass on failure."""
        run_params = RunParams()
        lib().recon_run_params_init(byref(run_params))
        for name, value in params.items():
            if name not in _RUN_PARAM_NAMES:
                raise TypeError(f"run() got an unexpected keyword argument {name!r}")
            if name.endswith("cfg_strength") and value is None:
                value = RECON_DEFAULT_CFG_STRENGTH
            setattr(run_params, name, value)
        raised: list[BaseException] = []
        if progress is not None:
            def on_progress(report: Any, _user_data: Any) -> int:
                try:
                    p = report.contents
                    return 0 if progress(p.stage, p.step, p.total) is False else 1
                except BaseException as exc:  # re-raised after recon_run returns
                    raised.append(exc)
                    return 0
            run_params.progress_callback = ProgressCallback(on_progress)
        keep: list = []
        views = [_image_struct(image, keep) for image in images]
        array = (Image * max(len(views), 1))(*views)
        result = c_void_p()
        status = lib().recon_run(self.handle, array, len(views), byref(run_params), byref(result))
        if raised:
            raise raised[0]
        self._call(status)
        return Result(result.value)

    def close(self) -> None:
        if self._handle is not None:
            lib().recon_free(self._handle)
            self._handle = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and _LIB is not None:
            self.close()


class Result:
    """One run's outputs (`recon_result`); independent of its model. Arrays are copied out."""

    def __init__(self, handle: int) -> None:
        self._handle: Optional[int] = handle

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("the result is closed")
        return self._handle

    def _call(self, status: int) -> None:
        if status != RECON_OK:
            _check(status, lib().recon_result_last_error(self.handle))

    @staticmethod
    def _array(ptr: Any, *shape: int) -> "np.ndarray":
        count = math.prod(shape)
        if not ptr or count == 0:
            return np.zeros(shape, np.dtype(ptr._type_))
        return np.ctypeslib.as_array(ptr, shape=(count,)).reshape(shape).copy()

    def gaussians(self) -> dict[str, "np.ndarray"]:
        g = Gaussians(struct_size=ctypes.sizeof(Gaussians))
        self._call(lib().recon_result_gaussians(self.handle, byref(g)))
        n = g.count
        return {"xyz": self._array(g.xyz, n, 3), "features_dc": self._array(g.features_dc, n, 3),
                "scaling": self._array(g.scaling, n, 3), "rotation": self._array(g.rotation, n, 4),
                "opacity": self._array(g.opacity, n)}

    def mesh(self) -> dict[str, Optional["np.ndarray"]]:
        m = Mesh(struct_size=ctypes.sizeof(Mesh))
        self._call(lib().recon_result_mesh(self.handle, byref(m)))
        colors = self._array(m.colors, m.num_vertices, 3) if m.colors else None
        return {"positions": self._array(m.positions, m.num_vertices, 3), "colors": colors,
                "indices": self._array(m.indices, m.num_faces, 3)}

    @property
    def cameras(self) -> list[Camera]:
        out = []
        for i in range(lib().recon_result_num_cameras(self.handle)):
            cam = Camera(struct_size=ctypes.sizeof(Camera))
            self._call(lib().recon_result_camera(self.handle, i, byref(cam)))
            out.append(cam)
        return out

    def export(self, format: int, path: Union[str, os.PathLike]) -> None:
        self._call(lib().recon_result_export(self.handle, format, os.fsencode(path)))

    def export_bytes(self, format: int) -> bytes:
        buf = c_void_p()
        self._call(lib().recon_result_export_buffer(self.handle, format, byref(buf)))
        try:
            return ctypes.string_at(lib().recon_buffer_data(buf), lib().recon_buffer_size(buf))
        finally:
            lib().recon_buffer_free(buf)

    def close(self) -> None:
        if self._handle is not None:
            lib().recon_result_free(self._handle)
            self._handle = None

    def __enter__(self) -> "Result":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and _LIB is not None:
            self.close()
