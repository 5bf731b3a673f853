"""Model (load, run, cancel) and the marshalling of run inputs."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from contextlib import contextmanager
from ctypes import POINTER, byref, c_uint8, c_void_p
from typing import (Any, Callable, Iterable, Iterator, List, Optional, Protocol, Sequence,
                    Tuple, Union, cast)

import numpy as np
import numpy.typing as npt

from . import abi
from ._handle import Handle
from ._result import Result
from ._types import (BackgroundRemoval, CancelledError, Format, Guidance, LogLevel,
                     MultiImageMode, NetworkInfo, Stage, Status, enum_or_int, error_for, signed32,
                     unsigned)

PathLike = Union[str, "os.PathLike[str]"]
#: One view: encoded PNG/JPEG/WebP bytes (any bytes-like object), a path to such a file, or
#: uint8 pixels [H, W, 3] (RGB) or [H, W, 4] (RGBA, straight alpha) as a numpy array or
#: anything numpy.asarray turns into one (a PIL image, for instance).
ImageInput = Union[bytes, bytearray, memoryview, PathLike, npt.ArrayLike]
#: ``log(level, message)``; exceptions it raises are ignored.
LogFn = Callable[[LogLevel, str], object]
#: ``progress(stage, step, total)``; returning False cancels the run.
ProgressFn = Callable[[Stage, int, int], Optional[bool]]
FormatsLike = Union[Format, int, str, Iterable[Union[Format, str]]]
ModeLike = Union[MultiImageMode, int, str]
BackgroundRemovalLike = Union[BackgroundRemoval, int, str]
GuidanceLike = Union[Guidance, int, str]


class CancelSource(Protocol):
    """Anything with ``is_set()``, e.g. a :class:`threading.Event` or a :class:`CancelToken`."""

    def is_set(self) -> bool: ...


class CancelToken(threading.Event):
    """A :class:`threading.Event` that cancels the runs it is passed to (``run(...,
    cancel=token)``) the moment it is set: ``token.cancel()`` (or ``set()``) from any thread.
    A plain Event works too; it is polled every 50 ms instead. A token stays set: a run given
    a set token is cancelled at its first step."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: List[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._callbacks_lock:
            for callback in self._callbacks:
                callback()

    cancel = set

    @contextmanager
    def _subscribed(self, callback: Callable[[], None]) -> Iterator[None]:
        """Calls `callback` on set() while the block runs; once the block has ended it is
        never called again (set() and this share a lock)."""
        with self._callbacks_lock:
            self._callbacks.append(callback)
        try:
            yield
        finally:
            with self._callbacks_lock:
                self._callbacks.remove(callback)


_POLL_SECONDS = 0.05


@contextmanager
def _cancelling(source: Optional[CancelSource], cancel: Callable[[], None]) -> Iterator[None]:
    """Calls `cancel` (recon_cancel) when `source` is set during the block, and never after."""
    if source is None:
        yield
    elif isinstance(source, CancelToken):
        with source._subscribed(cancel):
            yield
    else:
        done = threading.Event()

        def watch() -> None:
            while not done.wait(_POLL_SECONDS):
                if source.is_set():
                    cancel()
                    return
        watcher = threading.Thread(target=watch, name="recon-cancel-watcher", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()


def _device_index(device: Union[int, str, None]) -> int:
    """A device as recon_load_params.device: "auto", "cpu", "cuda", "cuda:N" (or anything whose
    str() is one of those, such as a torch.device) or a CUDA index."""
    if device is None:
        return abi.RECON_DEVICE_AUTO
    if isinstance(device, int):
        return device
    name = str(device)
    if name in ("auto", "cpu"):
        return abi.RECON_DEVICE_AUTO if name == "auto" else abi.RECON_DEVICE_CPU
    kind, _, index = name.partition(":")
    if kind == "cuda" and (index == "" or index.isdigit()):
        return int(index or 0)
    raise ValueError(f"device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or an index")


def _device_name(index: int) -> str:
    return "cpu" if index == abi.RECON_DEVICE_CPU else f"cuda:{index}"


def _formats(formats: FormatsLike) -> int:
    items: Iterable[Union[Format, int, str]] = (
        [formats] if isinstance(formats, (int, str)) else formats)
    mask = 0
    for f in items:
        if isinstance(f, str):
            try:
                f = Format[f.strip().upper().replace("-", "_")]
            except KeyError:
                names = ", ".join(str(m.name).lower() for m in Format)
                raise ValueError(f"format {f!r}: use one of {names}") from None
        mask |= int(f)
    return unsigned("formats", mask, 32)


def _named(kind: Any, name: str, value: Union[int, str]) -> int:
    """An enum argument: a member of `kind`, its name (any case), or an int passed through for
    the library to check."""
    if isinstance(value, str):
        try:
            return int(kind[value.strip().upper()])
        except KeyError:
            names = ", ".join(m.name.lower() for m in kind)
            raise ValueError(f"{name} {value!r}: use one of {names}") from None
    return signed32(name, value)


def _mode(mode: ModeLike) -> int:
    return _named(MultiImageMode, "mode", mode)


def _encoded(data: Any, keep: List[object]) -> Tuple[int, int]:
    """(address, size) of bytes-like `data`, without copying when it is contiguous."""
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    array = np.frombuffer(view.cast("B"), np.uint8)
    keep.append(array)
    return array.ctypes.data, array.size


def _pixels(pixels: npt.NDArray[Any], keep: List[object]) -> Tuple[int, int, int, int, int, int]:
    """(format, address, size, width, height, stride) of uint8 [H, W, 3|4] pixels, passing
    the array's rows as they are when each row is contiguous (a crop of a wider image, say)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError("pixel arrays must be uint8 [H, W, 3] (RGB) or [H, W, 4] (RGBA), "
                         f"got {pixels.dtype} {list(pixels.shape)}")
    height, width, channels = pixels.shape
    row = width * channels
    if pixels.strides[2] != 1 or pixels.strides[1] != channels or pixels.strides[0] < row:
        pixels = np.ascontiguousarray(pixels)
    keep.append(pixels)
    stride = int(pixels.strides[0])
    size = stride * (height - 1) + row if height and width else 0
    fmt = abi.RECON_IMAGE_RGB8 if channels == 3 else abi.RECON_IMAGE_RGBA8
    return (fmt, pixels.ctypes.data, size, unsigned("image width", width, 32),
            unsigned("image height", height, 32), stride)


def _image(image: ImageInput, keep: List[object]) -> abi.Image:
    """A recon_image over `image`; what must outlive recon_run is appended to `keep`."""
    view = abi.Image()
    abi.lib().recon_image_init(byref(view))
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as file:
            image = file.read()
    if isinstance(image, (bytes, bytearray, memoryview)):
        address, view.size = _encoded(image, keep)
    elif isinstance(image, np.ndarray) or hasattr(image, "__array_interface__") \
            or hasattr(image, "__array__"):
        (view.format, address, view.size, view.width, view.height,
         view.stride) = _pixels(np.asarray(image), keep)
    else:
        raise TypeError("an image is encoded bytes, a file path or a uint8 pixel array, "
                        f"not {type(image).__name__}")
    view.data = ctypes.cast(address, POINTER(c_uint8))
    return view


def _image_list(images: Any) -> List[Any]:
    """The views of `images`: a list or tuple of images, a [N, H, W, C] array, or one image."""
    if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray)
                                             and images.ndim == 4):
        return list(images)
    return [images]


_LOGGING_LEVELS = {LogLevel.ERROR: logging.ERROR, LogLevel.WARN: logging.WARNING,
                   LogLevel.INFO: logging.INFO, LogLevel.DEBUG: logging.DEBUG}


def _log_trampoline(log: Union[LogFn, logging.Logger]) -> Callable[[int, bytes, Any], None]:
    if isinstance(log, logging.Logger):
        logger = log

        def log_fn(level: LogLevel, message: str) -> None:
            logger.log(_LOGGING_LEVELS.get(level, logging.INFO), "%s", message)
        log = log_fn

    def trampoline(level: int, message: bytes, _user_data: Any) -> None:
        try:
            log(cast(LogLevel, enum_or_int(LogLevel, level)), message.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - nothing may unwind into the library
            pass
    return trampoline


class Model:
    """A loaded pipeline (``recon_load``). Use it as a context manager or call :meth:`close`.

    `source` is a local directory in the published layout (pipeline.json + ckpts/) or a
    Hugging Face repo id such as "microsoft/TRELLIS-image-large" (optionally "@revision").
    `device` is "auto" (the first CUDA device if usable, else the CPU), "cpu", "cuda",
    "cuda:N" or a CUDA index. `offline` True uses only the local Hub cache, False downloads
    what is missing, None (default) follows HF_HUB_OFFLINE. `log(level, message)` receives the
    library's log messages up to `log_level` (default LogLevel.INFO; with a
    :class:`logging.Logger`, DEBUG when the logger is enabled for it); it is called on the
    thread that loads or runs. `low_vram` keeps only the running stage's networks on the
    device (identical outputs, slower runs); `vggt_model` (TRELLIS-VGGT) is VGGT's folder or
    Hub repo id (default "Stable-X/vggt-object-v0-1"); `background_model` is background
    removal's BiRefNet, a folder holding model.safetensors or a Hub repo id (default
    "ZhengPeng7/BiRefNet"), loaded by the first run that needs it. Raises a
    :class:`ReconError` subclass on failure.

    A model may be used from several threads: runs take turns (one run per model at a time;
    load several models for parallel runs), :meth:`cancel` works from any thread, and
    :meth:`close` never frees the model under a call in progress on another thread."""

    def __init__(self, source: PathLike, *, device: Union[int, str, None] = "auto",
                 offline: Optional[bool] = None,
                 log: Union[LogFn, logging.Logger, None] = None,
                 log_level: Optional[int] = None, low_vram: bool = False,
                 vggt_model: Optional[PathLike] = None,
                 background_model: Optional[PathLike] = None) -> None:
        self._handle: Optional[Handle] = None
        L = abi.lib()
        params = abi.LoadParams()
        status = L.recon_load_params_init_sized(byref(params), ctypes.sizeof(params))
        if status != abi.RECON_OK:
            raise error_for(status, "recon_load_params_init_sized refused this binding's struct")
        params.low_vram = int(bool(low_vram))
        if vggt_model is not None:
            params.vggt_model = os.fsencode(vggt_model)
        if background_model is not None:
            params.background_model = os.fsencode(background_model)
        params.model = os.fsencode(source)
        params.device = signed32("device", _device_index(device))
        params.offline = abi.RECON_OFFLINE_FROM_ENV if offline is None else int(bool(offline))
        if log_level is None and isinstance(log, logging.Logger):
            log_level = LogLevel.DEBUG if log.isEnabledFor(logging.DEBUG) else LogLevel.INFO
        if log_level is not None:
            params.log_level = signed32("log_level", log_level)
        # The library calls the log callback until recon_free: the Handle keeps it alive.
        callback = abi.LogCallback(_log_trampoline(log)) if log is not None else None
        if callback is not None:
            params.log_callback = callback
        handle, error = c_void_p(), ctypes.create_string_buffer(4096)
        status = L.recon_load(byref(params), byref(handle), error, len(error))
        if status != abi.RECON_OK:
            raise error_for(status, error.value)
        assert handle.value is not None
        self._handle = Handle(handle.value, "recon_free", callback)
        self._run_lock = threading.Lock()
        self._networks = tuple(self._network(i)
                               for i in range(L.recon_model_num_networks(handle.value)))

    @classmethod
    def load(cls, source: PathLike, *, device: Union[int, str, None] = "auto",
             offline: Optional[bool] = None, log: Union[LogFn, logging.Logger, None] = None,
             log_level: Optional[int] = None, low_vram: bool = False,
             vggt_model: Optional[PathLike] = None,
             background_model: Optional[PathLike] = None) -> Model:
        """Loads a pipeline; the same as ``Model(...)``."""
        return cls(source, device=device, offline=offline, log=log, log_level=log_level,
                   low_vram=low_vram, vggt_model=vggt_model, background_model=background_model)

    def _owner(self) -> Handle:
        handle = self._handle
        if handle is None:
            raise ValueError("the model is closed")
        return handle

    def _check(self, status: int, owner: Handle) -> None:
        if status != abi.RECON_OK:
            raise error_for(status, abi.lib().recon_model_last_error(owner.ptr))

    def _network(self, index: int) -> NetworkInfo:
        owner = self._owner()
        info = abi.NetworkInfo(struct_size=ctypes.sizeof(abi.NetworkInfo))
        self._check(abi.lib().recon_model_network(owner.ptr, index, byref(info)), owner)
        return NetworkInfo(key=(info.key or b"").decode(),
                           class_name=(info.class_name or b"").decode(),
                           stem=(info.stem or b"").decode(),
                           implemented=bool(info.implemented), num_elements=info.num_elements)

    @property
    def handle(self) -> int:
        """The ``recon_model*`` (an int) for direct ABI calls; ValueError once closed."""
        return self._owner().ptr

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def networks(self) -> Tuple[NetworkInfo, ...]:
        """The networks loaded: pipeline.json's models by key, then the image encoder."""
        return self._networks

    @property
    def pipeline_name(self) -> str:
        """pipeline.json's name, e.g. "TrellisImageTo3DPipeline"."""
        return abi.lib().recon_model_pipeline_name(self._owner().ptr).decode()

    @property
    def device(self) -> str:
        """The device the model runs on: "cpu" or "cuda:N"."""
        return _device_name(abi.lib().recon_model_device(self._owner().ptr))

    @property
    def last_error(self) -> str:
        """The message of the latest failed call on this model ("" when none)."""
        owner = self._owner()
        return abi.lib().recon_model_last_error(owner.ptr).decode("utf-8", "replace")

    def cancel(self) -> None:
        """Stops the run in progress on this model, if any (it raises CancelledError at its
        next step). Callable from any thread; does nothing when no run is active or the model
        is closed. To cancel one particular run, pass it a ``cancel`` token instead."""
        handle = self._handle
        if handle is not None:
            abi.lib().recon_cancel(handle.ptr)

    def run(self, images: Union[ImageInput, Sequence[ImageInput]], *,
            seed: Optional[int] = None,
            sparse_structure_steps: Optional[int] = None,
            sparse_structure_cfg_strength: Optional[float] = None,
            slat_steps: Optional[int] = None,
            slat_cfg_strength: Optional[float] = None,
            formats: Optional[FormatsLike] = None,
            mode: Optional[ModeLike] = None,
            preprocess: Optional[bool] = None,
            remove_background: Optional[BackgroundRemovalLike] = None,
            guidance: Optional[GuidanceLike] = None,
            estimate_cameras: Optional[bool] = None,
            progress: Optional[ProgressFn] = None,
            cancel: Optional[CancelSource] = None) -> Result:
        """Generates a 3D asset from one or more views of one object.

        `images` is one image or a sequence of them (see ``ImageInput``: encoded bytes, file
        paths, uint8 pixel arrays): cut-outs, transparent around the object, or photos, whose
        background is removed first. Every other argument left at None keeps the library's
        default: `seed` 42; the sampler `*_steps` and `*_cfg_strength` from pipeline.json;
        `formats` Gaussians + mesh (a :class:`Format` mask, or names such as
        ``("gaussians", "mesh")``); `mode` :class:`MultiImageMode` ("stochastic" or
        "multidiffusion") for several views; `preprocess` True; `remove_background`
        :class:`BackgroundRemoval` ("auto": views without a useful alpha channel go through
        BiRefNet, see `background_model`; "always"; "never": such views raise
        UnsupportedError), only when preprocessing; `guidance` :class:`Guidance` ("default":
        the pipeline's own formula, "trellis" or "reconviagen"); `estimate_cameras` True
        (TRELLIS-VGGT estimates a camera per view, see :attr:`Result.cameras`; False skips
        VGGT's camera and point heads and their registration: faster, less GPU memory, no
        cameras. TRELLIS estimates none either way).

        `progress(stage, step, total)` is called on this thread at every step; returning False
        cancels the run. An exception it raises cancels the run and is re-raised here.
        `cancel` (a :class:`CancelToken`, or any object with ``is_set()`` such as a
        threading.Event) cancels this run when set from another thread.

        Runs on one model take turns; a run waiting for its turn gives up when its `cancel`
        is set. Raises a :class:`ReconError` subclass on failure (CancelledError when
        cancelled); the model stays usable."""
        L = abi.lib()
        params = abi.RunParams()
        status = L.recon_run_params_init_sized(byref(params), ctypes.sizeof(params))
        if status != abi.RECON_OK:
            raise error_for(status, "recon_run_params_init_sized refused this binding's struct")
        if seed is not None:
            params.seed = unsigned("seed", seed, 64)
        if sparse_structure_steps is not None:
            params.sparse_structure_steps = unsigned(
                "sparse_structure_steps", sparse_structure_steps, 32)
        if slat_steps is not None:
            params.slat_steps = unsigned("slat_steps", slat_steps, 32)
        if sparse_structure_cfg_strength is not None:
            params.sparse_structure_cfg_strength = float(sparse_structure_cfg_strength)
        if slat_cfg_strength is not None:
            params.slat_cfg_strength = float(slat_cfg_strength)
        if formats is not None:
            params.formats = _formats(formats)
        if mode is not None:
            params.multi_image_mode = _mode(mode)
        if preprocess is not None:
            params.preprocess = int(bool(preprocess))
        if remove_background is not None:
            params.remove_background = _named(BackgroundRemoval, "remove_background",
                                              remove_background)
        if guidance is not None:
            params.guidance = _named(Guidance, "guidance", guidance)
        if estimate_cameras is not None:
            params.estimate_cameras = int(bool(estimate_cameras))

        raised: List[BaseException] = []
        callback = None
        if progress is not None or cancel is not None:
            def on_progress(report: Any, _user_data: Any) -> int:
                try:
                    # The token is checked here too: the library forgets a recon_cancel sent
                    # before the run has started, and this catches it at the first report.
                    if cancel is not None and cancel.is_set():
                        return 0
                    if progress is None:
                        return 1
                    r = report.contents
                    stage = cast(Stage, enum_or_int(Stage, r.stage))
                    return 0 if progress(stage, r.step, r.total) is False else 1
                except BaseException as exc:  # noqa: BLE001 - re-raised after recon_run
                    raised.append(exc)
                    return 0
            callback = abi.ProgressCallback(on_progress)
            params.progress_callback = callback

        keep: List[object] = []
        views = [_image(image, keep) for image in _image_list(images)]
        array = (abi.Image * max(len(views), 1))(*views)

        self._take_turn(cancel)
        try:
            owner = self._owner()
            out = c_void_p()
            with _cancelling(cancel, lambda: L.recon_cancel(owner.ptr)):
                status = L.recon_run(owner.ptr, array, len(views), byref(params), byref(out))
            # Read before the next run's turn, which could replace the model's last error.
            message = L.recon_model_last_error(owner.ptr) if status != abi.RECON_OK else b""
        finally:
            self._run_lock.release()
        result = Result(Handle(out.value, "recon_result_free")) if out.value else None
        if raised:
            raise raised[0]
        if status != abi.RECON_OK or result is None:
            raise error_for(status, message)
        return result

    def _take_turn(self, cancel: Optional[CancelSource]) -> None:
        """Waits until no other run of this model is in the library. One run at a time (the
        library serialises them anyway) means a cancel watcher's recon_cancel can only reach
        its own run."""
        if cancel is None:
            self._run_lock.acquire()
            return
        while not self._run_lock.acquire(timeout=_POLL_SECONDS):
            if cancel.is_set():
                raise CancelledError(Status.CANCELLED,
                                     "cancelled while waiting for another run on this model")

    def close(self) -> None:
        """Lets go of the model: it is freed now, or when calls still running on other
        threads have returned. Idempotent; other methods raise ValueError afterwards."""
        self._handle = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<recon.Model closed>"
        return f"<recon.Model {self.pipeline_name} on {self.device}>"
