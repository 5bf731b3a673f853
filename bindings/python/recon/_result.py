"""Result: the outputs of one run."""

from __future__ import annotations

import ctypes
import math
import os
from ctypes import byref, c_void_p
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import abi
from ._handle import Handle
from ._types import Camera, ExportFormat, Gaussians, Mesh, error_for, unsigned

PathLike = Union[str, "os.PathLike[str]"]
ExportFormatLike = Union[ExportFormat, int, str]


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
