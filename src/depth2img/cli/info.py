"""``depth2img info``: what this installation can do — versions, devices, attention backends, model cache.

Paste its output into bug reports. ``--json`` prints the same facts for scripts.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any

from .. import __version__
from .settings import DEFAULT_MODEL

__all__ = ["add_parser", "collect", "run"]

PACKAGES = ("torch", "transformers", "huggingface_hub", "safetensors", "numpy", "pillow", "tqdm")
OPTIONAL_PACKAGES = ("xformers", "peft", "diffusers")  # diffusers: the test oracle, never used by depth2img


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``info``."""
    parser = subparsers.add_parser(
        "info",
        parents=parents,
        help="versions, devices, attention backends and the model cache",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.set_defaults(run=run)


def _version(package: str) -> str | None:
    if package == "torch":  # the build too (2.13.0+cpu, 2.6.0+cu124): the distribution's metadata omits it
        import torch

        return torch.__version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices() -> dict[str, Any]:
    import torch

    from .devices import accelerators, resolve_device

    cuda = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            cuda.append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}",
                }
            )
    return {
        "auto": str(resolve_device("auto")),
        "accelerators": accelerators(),
        "cuda_runtime": torch.version.cuda,
        "cuda_devices": cuda,
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
    }


def _attention_backends() -> dict[str, Any]:
    import torch

    backends: dict[str, Any] = {
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "sliced": True,  # --attention-slicing works everywhere
    }
    if torch.cuda.is_available():
        backends["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
        backends["sdpa_memory_efficient"] = torch.backends.cuda.mem_efficient_sdp_enabled()
    try:
        backends["xformers"] = importlib.import_module("xformers").__version__
    except Exception:  # not installed, or installed but broken for this torch: either way not usable
        backends["xformers"] = None
    return backends


def _model_cache() -> dict[str, Any]:
    import huggingface_hub
    from huggingface_hub import constants

    from ..loading.hub import hub_offline

    cached = huggingface_hub.try_to_load_from_cache(DEFAULT_MODEL, "model_index.json")
    return {
        "hub_cache": str(constants.HF_HUB_CACHE),
        "offline": hub_offline(),
        "default_model": DEFAULT_MODEL,
        "default_model_cached": isinstance(cached, str) and os.path.isfile(cached),
    }


def _schedulers() -> list[str]:
    try:
        from ..schedulers.registry import scheduler_names
    except ImportError:
        return []
    return list(scheduler_names())


def collect() -> dict[str, Any]:
    """Every fact ``info`` reports, as a JSON-ready dict."""
    return {
        "depth2img": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "optional_packages": {name: _version(name) for name in OPTIONAL_PACKAGES},
        "devices": _devices(),
        "attention": _attention_backends(),
        "model_cache": _model_cache(),
        "schedulers": _schedulers(),
    }


def _text(facts: dict[str, Any]) -> str:
    devices, attention, cache = facts["devices"], facts["attention"], facts["model_cache"]
    gpus = [f"{d['name']} ({d['memory_gib']} GiB, sm {d['compute_capability']})" for d in devices["cuda_devices"]]
    lines = [
        f"depth2img        {facts['depth2img']} (Python {facts['python']}, {facts['platform']})",
        "packages         " + ", ".join(f"{k} {v or 'missing'}" for k, v in facts["packages"].items()),
        "optional         " + ", ".join(f"{k} {v or 'not installed'}" for k, v in facts["optional_packages"].items()),
        f"device (auto)    {devices['auto']}; {devices['cpu_threads']} CPU threads",
        "accelerators     " + (", ".join(devices["accelerators"]) or "none (CPU only)"),
    ]
    if gpus:
        lines.append(f"cuda             runtime {devices['cuda_runtime']}; " + "; ".join(gpus))
    sdpa = "sdpa" if attention["sdpa"] else "no sdpa"
    if "sdpa_flash" in attention:
        kernels = [name for name in ("flash", "memory_efficient") if attention[f"sdpa_{name}"]]
        sdpa += f" ({', '.join(kernels) or 'math only'})"
    xformers = f"xformers {attention['xformers']}" if attention["xformers"] else "xformers not installed"
    lines.append(f"attention        {sdpa}, sliced, {xformers}")
    lines.append(
        f"model cache      {cache['hub_cache']}" + (" (offline: HF_HUB_OFFLINE is set)" if cache["offline"] else "")
    )
    state = "cached" if cache["default_model_cached"] else "not downloaded yet"
    lines.append(f"default model    {cache['default_model']} ({state})")
    if facts["schedulers"]:
        lines.append("schedulers       " + ", ".join(facts["schedulers"]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the facts."""
    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else _text(facts))
    sys.stdout.flush()
    return 0
