"""argparse ``type=`` converters that reject bad values with a sentence naming what is allowed."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["embedding_spec", "fraction", "int_at_least", "lora_spec", "non_negative_float", "seed"]


def fraction(text: str) -> float:
    """A float in [0, 1] (``--strength``)."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def non_negative_float(text: str) -> float:
    """A float ≥ 0 (``--guidance-scale``, ``--eta``)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; use a value >= 0")
    return value


def int_at_least(minimum: int):
    """A converter for integers ≥ ``minimum`` (``--steps``: 1, ``--clip-skip``: 1)."""

    def convert(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is less than {minimum}")
        return value

    convert.__name__ = f"integer >= {minimum}"  # argparse shows this name in 'invalid ... value' messages
    return convert


def seed(text: str) -> int:
    """-1 (pick a random seed) or an integer in [0, 2**63)."""
    value = _int(text)
    if not -1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not a seed; use -1 (random) or an integer in [0, 2**63)")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def lora_spec(text: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:SCALE`` (scale defaults to 1.0). A path that exists as typed is never split."""
    if Path(text).exists() or ":" not in text:
        return _adapter_path(text), 1.0
    path, scale = text.rsplit(":", 1)
    try:
        return _adapter_path(path), _float(scale)
    except argparse.ArgumentTypeError as error:
        if "path" in str(error):
            raise
        message = f"{text!r}: the scale after ':' must be a number, e.g. style.safetensors:0.8"
        raise argparse.ArgumentTypeError(message) from None


def embedding_spec(text: str) -> tuple[str, str | None]:
    """``PATH`` or ``PATH:TOKEN`` (token defaults to the one stored in the file)."""
    if Path(text).exists() or ":" not in text:
        return _adapter_path(text), None
    path, token = text.rsplit(":", 1)
    return _adapter_path(path), token or None


def _adapter_path(path: str) -> str:
    if not path.strip():
        raise argparse.ArgumentTypeError("the file path is empty; use PATH or PATH:VALUE")
    return path
