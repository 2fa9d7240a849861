"""What makes benchmark results from different machines incomparable, recorded in every result: the CPU model and
its SIMD/matrix flags, torch's dispatch level, and the oneDNN version torch was built with."""

from __future__ import annotations

import os
from typing import Any

import torch

# Flag families that decide which kernels oneDNN and torch can use (float32, bfloat16, int8).
_RELEVANT = ("avx2", "fma", "avx512", "avx_vnni", "amx")


def onednn_version() -> str:
    """oneDNN as torch reports its build (``Intel(R) MKL-DNN v3.12.0 (Git Hash ...)``), or ''."""
    lines = torch.__config__.show().splitlines()
    return next((line.strip(" -") for line in lines if "DNN v" in line), "")


def machine() -> dict[str, Any]:
    """CPU model, core count, relevant flags, the bfloat16 flags ``--precision auto`` looks at, torch, oneDNN."""
    from depth2img.precision import BF16_CPU_FLAGS, cpu_flags, cpu_model_name

    flags = cpu_flags()
    return {
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": sorted(flag for flag in flags if flag.startswith(_RELEVANT)),
        "bf16_flags": [flag for flag in BF16_CPU_FLAGS if flag in flags],
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": onednn_version(),
        "torch_threads": torch.get_num_threads(),
    }
