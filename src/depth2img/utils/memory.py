"""Returning freed heap memory to the operating system, so resident memory reflects what is still in use."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim_heap"]


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc ``malloc_trim``); does nothing without glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    return ctypes.CDLL(name) if name else None
