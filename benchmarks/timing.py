"""Interleaved timing (A B A B …), medians, and the fidelity measures of the comparison table.

Interleaving puts both sides under the same background load: on a shared machine the load drifts over minutes,
and timing all of A, then all of B, would charge the drift to whichever ran second.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Timed:
    """The samples (seconds) of one runner and its last output."""

    samples: list[float] = field(default_factory=list)
    warmup_samples: list[float] = field(default_factory=list)  # one-off costs show here (e.g. torch.compile)
    output: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer stops when the work is done rather than when it is queued."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    runners: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    wrap: Callable[[str], Any] | None = None,
) -> dict[str, Timed]:
    """Time each runner ``repeats`` times in rounds (every runner once per round, in the given order).

    ``warmup`` untimed rounds come first (one-off costs: kernel selection, lazy initialisation, page faults).
    ``wrap(name)`` gives a context manager each call of that runner runs in.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    results = {name: Timed() for name in runners}

    def call(name: str) -> tuple[float, Any]:
        gc.collect()
        with wrap(name) if wrap is not None else contextlib.nullcontext():
            synchronize(device)
            start = time.perf_counter()
            output = runners[name]()
            synchronize(device)
            return time.perf_counter() - start, output

    for _ in range(warmup):
        for name in runners:
            seconds, results[name].output = call(name)
            results[name].warmup_samples.append(seconds)
    for _ in range(repeats):
        for name in runners:
            seconds, output = call(name)
            results[name].samples.append(seconds)
            results[name].output = output
    return results


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of two arrays of the same shape (inf if the shapes differ)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).max()) if a.size else 0.0


def psnr_db(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Peak signal-to-noise ratio of ``approximate`` against ``exact``, in dB; the peak is the exact output's
    range (1 for images in [0, 1]). inf when they are equal."""
    approximate, exact = np.asarray(approximate, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    if approximate.shape != exact.shape:
        return -math.inf
    mse = float(np.mean((approximate - exact) ** 2))
    peak = float(exact.max() - exact.min()) or 1.0
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def fidelity(ours: np.ndarray, reference: np.ndarray, exact: bool) -> dict[str, Any]:
    """The fidelity cell: max abs difference for exact modes, PSNR against the exact output for approximate ones."""
    if exact:
        return {"kind": "max_abs_diff", "value": max_abs_diff(ours, reference)}
    return {"kind": "psnr_db", "value": psnr_db(ours, reference), "max_abs_diff": max_abs_diff(ours, reference)}
