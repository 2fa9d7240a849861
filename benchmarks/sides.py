"""The two sides of every comparison — ours (depth2img) and the reference (diffusers) — and our variants.

A *variant* is one way of running our pipeline: ``default``, or a speed/memory mode. Exact variants must give
the reference's images (the harness reports their max abs difference); approximate ones (reduced precision,
feature caching...) are reported by PSNR against the exact output instead. Variants that need something this
depth2img does not have yet are reported as unavailable rather than failing the run.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

OURS = "ours"
REFERENCE = "reference"
SIDES = (OURS, REFERENCE)


@dataclass(frozen=True)
class Variant:
    """How our pipeline is loaded and run: ``from_pretrained`` keywords, a setup step and a run-time context."""

    name: str
    exact: bool  # must match the reference within 1e-4 (else: an approximate mode, reported by PSNR)
    description: str
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype | None = None  # the weights' dtype, instead of the suite's (inputs are cast to it too)
    load_dtype: torch.dtype | None = None  # load in this one instead, when ``setup`` casts each model itself
    setup: Callable[[Any], None] | None = None  # called on the loaded pipeline
    context: Callable[[], contextlib.AbstractContextManager] | None = None  # wraps every timed call

    def unavailable_reason(self) -> str | None:
        """Why this variant cannot run with the installed depth2img, or None."""
        from depth2img import Depth2ImgPipeline

        if self.setup is _precision_auto and _auto_precision() is None:
            return "this depth2img has no depth2img.precision (--precision) yet"

        accepted = inspect.signature(Depth2ImgPipeline.from_pretrained).parameters
        missing = [key for key in self.load_kwargs if key not in accepted]
        if missing:
            return f"Depth2ImgPipeline.from_pretrained has no {', '.join(missing)} argument yet"
        return None

    def running(self) -> contextlib.AbstractContextManager:
        return self.context() if self.context is not None else contextlib.nullcontext()


def _vae_channels_last(pipe: Any) -> None:
    from depth2img.speed import enable_cpu_speedups

    enable_cpu_speedups(pipe, channels_last=True)


def _reference_arithmetic(pipe: Any) -> None:
    pipe.use_reference_arithmetic()


def _auto_precision() -> Any:
    """What ``--precision auto`` resolves to for the CPU (None with a depth2img from before --precision)."""
    try:
        from depth2img.precision import choose_precision
    except ImportError:
        return None
    return choose_precision("auto", "cpu")


def _precision_auto(pipe: Any) -> None:
    from depth2img.precision import apply_precision

    apply_precision(pipe, _auto_precision())


def _compile_unet(pipe: Any) -> None:
    from depth2img.speed import enable_cpu_speedups

    enable_cpu_speedups(pipe, channels_last=True, compile_unet=True)


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("default", True, "Depth2ImgPipeline.from_pretrained(folder)"),
        Variant(
            "reference_arithmetic",
            True,
            "pipe.use_reference_arithmetic(): the UNet and VAE do the reference's float operations exactly (no "
            "folded upsampling), for bit-identical models",
            setup=_reference_arithmetic,
        ),
        Variant(
            "low_memory",
            True,
            "from_pretrained(folder, low_memory=True): each model in memory only while its stage runs",
            load_kwargs={"low_memory": True},
        ),
        Variant(
            "channels_last",
            True,
            "depth2img.speed.enable_cpu_speedups(pipe): NHWC convolutions in the VAE (float32, not the reference's "
            "rounding)",
            setup=_vae_channels_last,
        ),
        Variant(
            "compile",
            True,
            "enable_cpu_speedups(pipe, compile_unet=True): channels_last, and torch.compile of the UNet with inductor "
            "freezing (a compile of minutes per image size, shown as the first call's time)",
            setup=_compile_unet,
        ),
        Variant(
            "bf16",
            False,
            "from_pretrained(folder, torch_dtype=torch.bfloat16): bfloat16 weights and activations (approximate)",
            dtype=torch.bfloat16,
        ),
        Variant(
            "precision_auto",
            False,
            "--precision auto on this CPU: bfloat16 UNet, VAE and text encoder where the CPU has amx_bf16 or "
            "avx512_bf16 (depth estimator float32), float32 elsewhere (depth2img.precision; approximate)",
            dtype=getattr(_auto_precision(), "dtype", None),
            load_dtype=torch.float32,
            setup=_precision_auto,
        ),
        Variant(
            "low_memory_bf16",
            False,
            "low_memory=True and torch_dtype=torch.bfloat16 (approximate)",
            load_kwargs={"low_memory": True},
            dtype=torch.bfloat16,
        ),
    )
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def quiet_libraries() -> None:
    """No progress bars or repeated warnings from the libraries: they would flood the output of every repeat."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # The reference wraps DPT in torch.autocast(device, dtype=float32), which warns on the CPU at every call.
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
    warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated")
    warnings.filterwarnings("ignore", message=".*ignoring unknown key.*")
    warnings.filterwarnings("ignore", message=".*requires torchvision.*")
    with contextlib.suppress(ImportError):
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


def _quiet_diffusers() -> None:
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def load_pipeline(
    side: str, folder: str | os.PathLike, variant_name: str = "default", device: str = "cpu", dtype=torch.float32
) -> Any:
    """Load ``side``'s depth-to-image pipeline from ``folder`` (a variant applies to ours only)."""
    if side == REFERENCE:
        import diffusers

        _quiet_diffusers()
        pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(str(folder), torch_dtype=dtype)
    elif side == OURS:
        from depth2img import Depth2ImgPipeline

        chosen = variant(variant_name)
        dtype = chosen.load_dtype or chosen.dtype or dtype
        pipe = Depth2ImgPipeline.from_pretrained(str(folder), torch_dtype=dtype, **chosen.load_kwargs)
        if chosen.setup is not None:
            chosen.setup(pipe)
    else:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    pipe.set_progress_bar_config(disable=True)
    if device != "cpu":
        pipe.to(device)
    return pipe


@contextlib.contextmanager
def running(side: str, variant_name: str) -> Iterator[None]:
    """The context every timed call of ``side`` runs in (a variant's autocast, for instance)."""
    with torch.no_grad(), variant(variant_name).running() if side == OURS else contextlib.nullcontext():
        yield
