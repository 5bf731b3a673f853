"""Result: the outputs of one run."""

from __future__ import annotations

import ctypes
import math
import os
from ctypes import byref, c_void_p
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import abi
from ._handle import Handle
from ._types import (Camera, ExportFormat, Gaussians, Mesh, TurntableContent, error_for,
                     signed32, unsigned)

PathLike = Union[str, "os.PathLike[str]"]
ExportFormatLike = Union[ExportFormat, int, str]
TurntableContentLike = Union[TurntableContent, int, str]
#: ``on_frame(index, rgba)`` of the turntable methods: `rgba` is a ``[H, W, 4]`` uint8 array
#: (a copy); returning False stops the render (CancelledError).
FrameFn = Callable[[int, "npt.NDArray[np.uint8]"], Optional[bool]]

_CONTENT_NAMES = {"gaussians": TurntableContent.GAUSSIANS,
                  "normals": TurntableContent.MESH_NORMALS,
                  "mesh_normals": TurntableContent.MESH_NORMALS,
                  "colors": TurntableContent.MESH_COLORS,
                  "mesh_colors": TurntableContent.MESH_COLORS}


def turntable_content(content: TurntableContentLike) -> int:
    """A turntable content as the library's int: a :class:`TurntableContent`, a name
    ("gaussians", "normals", "colors") or an int (passed on for the library to judge)."""
    if isinstance(content, str):
        try:
            return _CONTENT_NAMES[content.strip().lower().replace("-", "_")]
        except KeyError:
            raise ValueError(f"turntable content {content!r}: use gaussians, normals or "
                             "colors") from None
    return int(content)


_TEXTURE_FORMATS = {"png": abi.RECON_TEXTURE_PNG, "jpeg": abi.RECON_TEXTURE_JPEG,
                    "jpg": abi.RECON_TEXTURE_JPEG, "webp": abi.RECON_TEXTURE_WEBP}
_BAKE_MODES = {"fast": abi.RECON_BAKE_FAST, "optimize": abi.RECON_BAKE_OPTIMIZE,
               "opt": abi.RECON_BAKE_OPTIMIZE}


def _choice(name: str, table: Dict[str, int], value: Union[int, str]) -> int:
    if isinstance(value, str):
        try:
            return table[value.strip().lower()]
        except KeyError:
            raise ValueError(f"{name} {value!r}: use one of {', '.join(table)}") from None
    return int(value)


def _device_index(device: Union[int, str, None]) -> int:
    from ._model import _device_index as index  # one spelling of devices for the package
    return index(device)


class _Borrowed:
    """Exposes library memory to numpy (``__array_interface__``, read-only) and holds the
    result's handle: an array made from it keeps the memory alive."""

    __slots__ = ("__array_interface__", "owner")

    def __init__(self, owner: Handle, address: int, shape: Tuple[int, ...],
                 typestr: str) -> None:
        self.owner = owner
        self.__array_interface__: Dict[str, Any] = {
            "version": 3, "shape": shape, "typestr": typestr, "data": (address, True)}


def _view(owner: Handle, ptr: Any, dtype: npt.DTypeLike, *shape: int) -> npt.NDArray[Any]:
    """A read-only array over `ptr` (a ctypes pointer borrowed from `owner`'s result)."""
    address = ctypes.cast(ptr, c_void_p).value
    if not address or math.prod(shape) == 0:
        array: npt.NDArray[Any] = np.empty(shape, dtype)
    else:
        typestr = np.dtype(dtype).newbyteorder("=").str
        array = np.asarray(_Borrowed(owner, address, shape, typestr))
    array.flags.writeable = False
    return array


def export_format(format: ExportFormatLike) -> int:
    """An export format as the library's int: an :class:`ExportFormat`, a name such as "glb"
    or "ply_gaussians", or an int (passed on as is, for the library to judge)."""
    if isinstance(format, str):
        try:
            return ExportFormat[format.strip().upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(f.name.lower() for f in ExportFormat)
            raise ValueError(f"export format {format!r}: use one of {names}") from None
    return int(format)


class Result:
    """The outputs of one :meth:`Model.run` (``recon_result``), independent of the model.

    Use it as a context manager or call :meth:`close`. :attr:`gaussians` and :attr:`mesh`
    return read-only numpy **views** of the library's arrays, not copies. Each view holds a
    reference to the underlying result, so it stays valid as long as it exists: closing the
    Result frees the library's memory at once when no view is left, and otherwise when the
    last view is garbage-collected. Call ``.copy()`` (on an array, or on the Gaussians/Mesh)
    for writable arrays that do not pin the result's memory.

    A Result may be read from several threads; close() never frees memory that a call on
    another thread is still reading."""

    def __init__(self, handle: Handle) -> None:
        self._handle: Optional[Handle] = handle

    def _owner(self) -> Handle:
        handle = self._handle
        if handle is None:
            raise ValueError("the result is closed")
        return handle

    @property
    def handle(self) -> int:
        """The ``recon_result*`` (an int) for direct ABI calls; ValueError once closed."""
        return self._owner().ptr

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _check(self, status: int, owner: Handle) -> None:
        if status != abi.RECON_OK:
            raise error_for(status, abi.lib().recon_result_last_error(owner.ptr))

    @property
    def last_error(self) -> str:
        """The message of the latest failed call on this result ("" when none)."""
        owner = self._owner()
        return abi.lib().recon_result_last_error(owner.ptr).decode("utf-8", "replace")

    @property
    def gaussians(self) -> Gaussians:
        """The 3D Gaussians, as views (see the class doc). InvalidArgumentError when the run
        did not produce them (formats without Format.GAUSSIANS)."""
        owner = self._owner()
        g = abi.Gaussians(struct_size=ctypes.sizeof(abi.Gaussians))
        self._check(abi.lib().recon_result_gaussians(owner.ptr, byref(g)), owner)
        n, f32 = g.count, np.float32
        return Gaussians(xyz=_view(owner, g.xyz, f32, n, 3),
                         features_dc=_view(owner, g.features_dc, f32, n, 3),
                         scaling=_view(owner, g.scaling, f32, n, 3),
                         rotation=_view(owner, g.rotation, f32, n, 4),
                         opacity=_view(owner, g.opacity, f32, n))

    @property
    def mesh(self) -> Mesh:
        """The triangle mesh, as views (see the class doc). InvalidArgumentError when the run
        did not produce one (formats without Format.MESH)."""
        owner = self._owner()
        m = abi.Mesh(struct_size=ctypes.sizeof(abi.Mesh))
        self._check(abi.lib().recon_result_mesh(owner.ptr, byref(m)), owner)
        nv, nf = m.num_vertices, m.num_faces
        colors = _view(owner, m.colors, np.float32, nv, 3) if m.colors else None
        return Mesh(positions=_view(owner, m.positions, np.float32, nv, 3), colors=colors,
                    indices=_view(owner, m.indices, np.uint32, nf, 3))

    @property
    def cameras(self) -> List[Camera]:
        """One camera per input view when the pipeline estimates poses, else empty."""
        owner = self._owner()
        return [self.camera(i) for i in range(abi.lib().recon_result_num_cameras(owner.ptr))]

    def camera(self, index: int) -> Camera:
        """Camera `index` (InvalidArgumentError when out of range)."""
        owner = self._owner()
        c = abi.Camera(struct_size=ctypes.sizeof(abi.Camera))
        index = unsigned("camera index", index, 64)
        self._check(abi.lib().recon_result_camera(owner.ptr, index, byref(c)), owner)
        extrinsic_4x4, _ = self.camera_matrices(index)
        return Camera(width=c.width, height=c.height,
                      extrinsic=np.array(c.extrinsic, np.float32).reshape(3, 4),
                      intrinsic=np.array(c.intrinsic, np.float32).reshape(3, 3),
                      extrinsic_4x4=extrinsic_4x4)

    def camera_matrices(self, index: int) -> Tuple[npt.NDArray[np.float32],
                                                   npt.NDArray[np.float32]]:
        """Camera `index` as (extrinsic [4, 4], intrinsic [3, 3]) float32 arrays: the
        camera-from-world [R | t] over 0 0 0 1, and the intrinsics in pixels (conventions of
        :class:`Camera`). InvalidArgumentError when out of range."""
        owner = self._owner()
        index = unsigned("camera index", index, 64)
        extrinsic = (ctypes.c_float * 16)()
        intrinsic = (ctypes.c_float * 9)()
        self._check(abi.lib().recon_result_camera_matrices(owner.ptr, index, extrinsic,
                                                           intrinsic), owner)
        return (np.array(extrinsic, np.float32).reshape(4, 4),
                np.array(intrinsic, np.float32).reshape(3, 3))

    def export(self, path: PathLike, format: ExportFormatLike) -> None:
        """Writes the result to the file `path` as `format` (:class:`ExportFormat`, or "glb",
        "glb_with_cameras", "ply_gaussians", "ply_mesh", "obj"). The file appears whole or not
        at all."""
        owner = self._owner()
        fmt = export_format(format)
        self._check(abi.lib().recon_result_export(owner.ptr, fmt, os.fsencode(path)), owner)

    def export_bytes(self, format: ExportFormatLike) -> bytes:
        """The file that :meth:`export` would write, as bytes."""
        owner = self._owner()
        fmt = export_format(format)
        L = abi.lib()
        buffer = c_void_p()
        self._check(L.recon_result_export_buffer(owner.ptr, fmt, byref(buffer)), owner)
        try:
            return ctypes.string_at(L.recon_buffer_data(buffer), L.recon_buffer_size(buffer))
        finally:
            L.recon_buffer_free(buffer)

    def _turntable_params(self, content: TurntableContentLike, frames: int, resolution: int,
                          radius: float, fov_degrees: float, background: Sequence[float],
                          device: Union[int, str, None], fps: int,
                          mesh_ssaa: int) -> abi.TurntableParams:
        params = abi.TurntableParams()
        status = abi.lib().recon_turntable_params_init_sized(byref(params), ctypes.sizeof(params))
        if status != abi.RECON_OK:
            raise error_for(status, "recon_turntable_params_init_sized failed")
        params.content = signed32("content", turntable_content(content))
        params.frames = unsigned("frames", frames, 32)
        params.resolution = unsigned("resolution", resolution, 32)
        params.radius = float(radius)
        params.fov_degrees = float(fov_degrees)
        rgb = [float(c) for c in background]
        if len(rgb) != 3:
            raise ValueError(f"background must be three values (RGB in 0..1), got {background!r}")
        params.background = (ctypes.c_float * 3)(*rgb)
        params.device = signed32("device", _device_index(device))
        params.fps = unsigned("fps", fps, 32)
        params.mesh_ssaa = unsigned("mesh_ssaa", mesh_ssaa, 32)
        return params

    @staticmethod
    def _frame_callback(on_frame: Optional[FrameFn], keep: Optional[List[Any]],
                        raised: List[BaseException]) -> Any:
        """A recon_frame_callback that copies each frame into an array and hands it to
        `on_frame` and/or appends it to `keep`; an exception is kept for re-raising."""
        def deliver(frame: Any, _user_data: Any) -> int:
            try:
                f = frame.contents
                n = f.width * f.height * 4
                pixels = np.ctypeslib.as_array(f.rgba, shape=(n,)).copy()
                rgba = pixels.reshape(f.height, f.width, 4)
                if keep is not None:
                    keep.append(rgba)
                if on_frame is not None and on_frame(f.index, rgba) is False:
                    return 0
                return 1
            except BaseException as exc:  # noqa: BLE001 - re-raised after the call
                raised.append(exc)
                return 0
        return abi.FrameCallback(deliver)

    def render_turntable(self, *, content: TurntableContentLike = "gaussians",
                         frames: int = 120, resolution: int = 512, radius: float = 2.0,
                         fov_degrees: float = 40.0,
                         background: Sequence[float] = (0.0, 0.0, 0.0),
                         device: Union[int, str, None] = "auto", mesh_ssaa: int = 4,
                         on_frame: Optional[FrameFn] = None
                         ) -> List["npt.NDArray[np.uint8]"]:
        """Renders a turntable (TRELLIS's orbit: yaw once around, pitch 0.25 ± 0.5 rad) of
        `content` ("gaussians", "normals" or "colors" of the mesh, or a
        :class:`TurntableContent`) as ``[resolution, resolution, 4]`` uint8 RGBA frames: RGB
        over `background` (RGB in 0..1), alpha the coverage. `device` as for models ("auto",
        "cpu", "cuda:N"). Without `on_frame` the frames are returned as a list; with it, each
        is passed to ``on_frame(index, rgba)`` as it is rendered (returning False stops with
        CancelledError) and the list is empty, so long turntables need not sit in memory."""
        owner = self._owner()
        params = self._turntable_params(content, frames, resolution, radius, fov_degrees,
                                        background, device, 30, mesh_ssaa)
        kept: List[Any] = []
        raised: List[BaseException] = []
        callback = self._frame_callback(on_frame, kept if on_frame is None else None, raised)
        status = abi.lib().recon_result_render_turntable(owner.ptr, byref(params), callback,
                                                         None)
        if raised:
            raise raised[0]
        self._check(status, owner)
        return kept

    def write_turntable(self, path: PathLike, *, content: TurntableContentLike = "gaussians",
                        frames: int = 120, resolution: int = 512, radius: float = 2.0,
                        fov_degrees: float = 40.0,
                        background: Sequence[float] = (0.0, 0.0, 0.0),
                        device: Union[int, str, None] = "auto", fps: int = 30,
                        mesh_ssaa: int = 4, on_frame: Optional[FrameFn] = None) -> None:
        """Renders a turntable (options of :meth:`render_turntable`) into `path`: an MP4
        (H.264, `fps` frames per second) when it ends in ".mp4", else a folder of
        frame_0000.png, frame_0001.png, ... (RGBA). The file or folder appears whole or not at
        all. ``on_frame(index, rgba)``, when given, sees each frame once it is written and may
        stop the render by returning False. MP4 needs :func:`recon.mp4_supported`."""
        owner = self._owner()
        params = self._turntable_params(content, frames, resolution, radius, fov_degrees,
                                        background, device, fps, mesh_ssaa)
        raised: List[BaseException] = []
        callback = (self._frame_callback(on_frame, None, raised) if on_frame is not None
                    else abi.FrameCallback())
        status = abi.lib().recon_result_write_turntable(owner.ptr, byref(params),
                                                        os.fsencode(path), callback, None)
        if raised:
            raise raised[0]
        self._check(status, owner)

    @staticmethod
    def _textured_params(simplify: float = 0.95, fill_holes: bool = True,
                         fill_holes_max_size: float = 0.04, texture_size: int = 1024,
                         bake: Union[int, str] = "optimize", bake_steps: int = 2500,
                         bake_lambda_tv: float = 0.01, views: int = 100,
                         render_resolution: int = 1024, vertex_colors_only: bool = False,
                         image_format: Union[int, str] = "png", jpeg_quality: int = 90,
                         device: Union[int, str, None] = "auto", fill_holes_views: int = 1000,
                         fill_holes_resolution: int = 1024,
                         seed: int = 0) -> abi.TexturedExportParams:
        params = abi.TexturedExportParams()
        status = abi.lib().recon_textured_export_params_init_sized(byref(params),
                                                                   ctypes.sizeof(params))
        if status != abi.RECON_OK:
            raise error_for(status, "recon_textured_export_params_init_sized failed")
        params.image_format = signed32("image_format",
                                       _choice("image_format", _TEXTURE_FORMATS, image_format))
        params.simplify = float(simplify)
        params.fill_holes = 1 if fill_holes else 0
        params.fill_holes_max_size = float(fill_holes_max_size)
        params.texture_size = unsigned("texture_size", texture_size, 32)
        params.bake_mode = signed32("bake", _choice("bake", _BAKE_MODES, bake))
        params.bake_steps = unsigned("bake_steps", bake_steps, 32)
        params.bake_lambda_tv = float(bake_lambda_tv)
        params.views = unsigned("views", views, 32)
        params.render_resolution = unsigned("render_resolution", render_resolution, 32)
        params.vertex_colors_only = 1 if vertex_colors_only else 0
        params.jpeg_quality = unsigned("jpeg_quality", jpeg_quality, 32)
        params.device = signed32("device", _device_index(device))
        params.fill_holes_views = unsigned("fill_holes_views", fill_holes_views, 32)
        params.fill_holes_resolution = unsigned("fill_holes_resolution",
                                                fill_holes_resolution, 32)
        params.seed = unsigned("seed", seed, 64)
        return params

    def export_textured(self, path: PathLike, format: ExportFormatLike = "glb",
                        **options: Any) -> None:
        """TRELLIS's ``to_glb``: simplifies the mesh, removes hidden faces and fills holes,
        unwraps UVs and bakes a base-colour texture from the Gaussians, then writes `path` as
        `format` "glb" (one file), "glb_with_cameras" or "obj" (the OBJ plus its .mtl and
        texture image beside it). Options and their defaults (the reference's): simplify=0.95,
        fill_holes=True, fill_holes_max_size=0.04, texture_size=1024, bake="optimize" (or
        "fast"), bake_steps=2500, bake_lambda_tv=0.01, views=100, render_resolution=1024,
        vertex_colors_only=False, image_format="png" ("jpeg", "webp"), jpeg_quality=90,
        device="auto", fill_holes_views=1000, fill_holes_resolution=1024, seed=0. Minutes on
        a CPU with the defaults; files appear whole or not at all."""
        owner = self._owner()
        params = self._textured_params(**options)
        fmt = export_format(format)
        self._check(abi.lib().recon_result_export_textured(owner.ptr, fmt, byref(params),
                                                           os.fsencode(path)), owner)

    def export_textured_bytes(self, format: ExportFormatLike = "glb", **options: Any) -> bytes:
        """The GLB :meth:`export_textured` would write ("glb" or "glb_with_cameras"), as
        bytes."""
        owner = self._owner()
        params = self._textured_params(**options)
        fmt = export_format(format)
        L = abi.lib()
        buffer = c_void_p()
        self._check(L.recon_result_export_textured_buffer(owner.ptr, fmt, byref(params),
                                                          byref(buffer)), owner)
        try:
            return ctypes.string_at(L.recon_buffer_data(buffer), L.recon_buffer_size(buffer))
        finally:
            L.recon_buffer_free(buffer)

    def close(self) -> None:
        """Lets go of the result: its memory is freed now, or when the last array view of it
        goes. Idempotent; every other method raises ValueError afterwards."""
        self._handle = None

    def __enter__(self) -> Result:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else hex(self._handle.ptr)
        return f"<recon.Result {state}>"
