"""``--precision auto|float32|bfloat16|float16`` for every command that runs models, written once.

A command adds the flag with ``add_precision_arguments(group)`` and resolves it with ``resolve_precision(...)``
after its cheap checks (it imports torch). ``--dtype`` stays as a deprecated alias (the same values, plus their
old short forms fp32/fp16/half/bf16). What ``auto`` picks per device and CPU, and why, is
``depth2img.precision``'s business; this module only turns flags and a PNG's record into a ``Precision``.

Replaying a PNG (``--from-png``) uses the dtypes it records for each model, not ``auto`` again: another machine
might resolve ``auto`` differently, and the pixels depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import CliError, warn

__all__ = [
    "PRECISION_HELP",
    "add_precision_arguments",
    "canonical_precision",
    "load_pipeline_in",
    "loading_dtype",
    "resolve_precision",
]

PRECISION_CHOICES = ("auto", "float32", "bfloat16", "float16")
PRECISION_HELP = (
    "auto (float16 on CUDA; bfloat16 on CPUs with AMX or AVX512-BF16, depth estimator float32; float32 otherwise), "
    "float32 (the reference's exact arithmetic), bfloat16 or float16"
)
# --dtype's old spellings; each is an alias of one precision.
_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def add_precision_arguments(group: Any, default: str | None = None) -> None:
    """Add ``--precision`` and its deprecated alias ``--dtype`` to ``group`` (a parser or argument group).

    ``default=None`` lets a command tell typed flags from defaults (``generate``'s ``--from-png`` needs that).
    """
    group.add_argument("--precision", metavar="P", default=default, help=PRECISION_HELP)
    group.add_argument("--dtype", metavar="DTYPE", default=default, help="deprecated alias of --precision")


def canonical_precision(name: str, flag: str = "--precision") -> str:
    """``name`` (any case, aliases like fp16 accepted) as one of auto/float32/bfloat16/float16, or a CliError."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in PRECISION_CHOICES:
        raise CliError(f"{flag}: unknown precision {name!r}; use {', '.join(PRECISION_CHOICES)}")
    return key


def requested_precision(precision: str | None, dtype: str | None) -> str:
    """The one request of ``--precision`` and ``--dtype`` (None: not given); a conflict between them is an error."""
    wanted = canonical_precision(precision) if precision is not None else None
    alias = canonical_precision(dtype, "--dtype") if dtype is not None else None
    if alias is not None:
        warn("--dtype is deprecated; use --precision (same values)")
    if wanted is not None and alias is not None and wanted != alias:
        raise CliError(f"--precision {wanted} and --dtype {alias} disagree; give only --precision")
    return wanted or alias or "auto"


def resolve_precision(
    precision: str | None, dtype: str | None, device: Any, record: Mapping[str, Any] | None = None
) -> Any:
    """The ``depth2img.precision.Precision`` for the typed flags on ``device``; with neither flag typed, the
    per-model dtypes of ``record`` (a PNG's stored parameters) when it has them, else ``auto``."""
    from ..precision import choose_precision, precision_from_record

    if precision is None and dtype is None and record:
        try:
            replayed = precision_from_record(record)
        except ValueError as error:
            raise CliError(f"--from-png: {error}") from None
        if replayed is not None:
            return replayed
        if record.get("dtype"):  # a PNG from before --precision: its dtype was the uniform precision
            return choose_precision(canonical_precision(record["dtype"], "--from-png dtype"), device)
    return choose_precision(requested_precision(precision, dtype), device)


def loading_dtype(precision: Any) -> Any:
    """The dtype to load the models in: the compute dtype when all share it, else float32 (each model is then
    cast with ``depth2img.precision.apply_precision``, so a float32 model keeps its exact weights)."""
    import torch

    return precision.dtype if precision.uniform else torch.float32


def load_pipeline_in(source: Any, precision: Any, **options: Any) -> Any:
    """``pipeline_setup.load_pipeline(source, **options)`` with each model in its ``precision`` dtype: the one call
    a command needs after ``resolve_precision`` (``generate`` uses it; ``batch`` and ``serve`` can too)."""
    from ..precision import apply_precision
    from .pipeline_setup import load_pipeline

    return apply_precision(load_pipeline(source, dtype=loading_dtype(precision), **options), precision)
