"""Ownership of library handles."""

from __future__ import annotations

import weakref

from . import abi


def _free(free: str, ptr: int, keep: object) -> None:
    """Calls `free` (recon_free or recon_result_free) on `ptr`; `keep` (a callback the library
    holds) is an argument only so that it stays alive until then."""
    del keep
    getattr(abi.lib(), free)(ptr)


class Handle:
    """Owns one library handle and frees it when the last Python reference goes.

    The wrappers (Model, Result) hold one reference and drop it on close(); array views and
    calls in progress on other threads hold others. So a handle is never freed under a call
    or a view: close() frees it at once when nothing else uses it, else when the last user
    lets go. Handles still alive at interpreter exit are not freed (a daemon thread may still
    be inside the library then); the process's end reclaims them."""

    __slots__ = ("ptr", "__weakref__")

    def __init__(self, ptr: int, free: str, keep: object = None) -> None:
        self.ptr = ptr
        finalizer = weakref.finalize(self, _free, free, ptr, keep)
        finalizer.atexit = False  # type: ignore[misc]  # a documented attribute
