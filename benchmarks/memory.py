"""Resident memory of the current process (Linux): peak and current, split into anonymous and file-backed.

Memory-mapped safetensors count as *file-backed* resident pages once touched; both count in the peak
(``ru_maxrss`` / ``VmHWM``), which is what a user sees in ``top`` and what an out-of-memory killer weighs.
"""

from __future__ import annotations

import resource

from depth2img.utils.memory import trim_heap

__all__ = ["GIB", "memory_status", "peak_rss_gib", "trim_heap"]

GIB = 1024**3


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB.

    ``VmHWM`` (this process image's high-water mark) rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` over
    ``fork``/``exec``, so a child's value is never below its parent's RSS at the time of the fork — a small
    child of a large parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux, bytes on macOS


def memory_status() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) RSS, and the current anonymous / file-backed parts, in GiB."""
    fields = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0]) * 1024 / GIB
    except OSError:  # not Linux: only the peak is known
        fields["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    return fields
