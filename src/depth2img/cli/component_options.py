"""Flags that swap pipeline components, shared by every command that builds a pipeline.

``add_component_arguments(parser)`` adds ``--depth-model``, ``--depth-invert``, ``--depth-normalize`` and ``--vae``
(one call, so ``generate``, ``depth``, ``batch`` and ``serve`` spell and check them alike; ``vae=False`` leaves
``--vae`` out for commands that decode nothing). Then, in order:
``component_choice(args)`` checks the values before anything loads, ``load_components(choice, ...)`` loads the
chosen models as ``from_pretrained`` overrides, and ``apply_component_options(pipe, choice)`` sets the depth
options on the loaded pipeline. Defaults are None in the parser so ``generate --from-png`` can tell typed flags
from defaults; ``component_choice`` fills them in.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILURE, CliError, warn

__all__ = [
    "COMPONENT_DEFAULTS",
    "ComponentChoice",
    "add_component_arguments",
    "apply_component_options",
    "component_choice",
    "load_components",
]

COMPONENT_DEFAULTS: dict[str, Any] = {
    "depth_model": None,
    "depth_invert": "auto",
    "depth_normalize": "image",
    "vae": None,
}
TAESD_NAME = "taesd"  # --vae taesd: madebyollin's TAESD from the Hub
TAESD_REPO_ID = "madebyollin/taesd"
_INVERT = {"auto": None, "yes": True, "no": False}
_VAE_CLASSES = ("AutoencoderTiny", "AutoencoderKL")


def add_component_arguments(parser: argparse.ArgumentParser | Any, vae: bool = True) -> None:
    """Add the component flags to ``parser`` (a parser or an argument group), in a group of their own."""
    if vae:
        vae_group = parser.add_argument_group("VAE") if hasattr(parser, "add_argument_group") else parser
        vae_group.add_argument(
            "--vae", metavar="taesd|PATH",
            help=f"decode (and encode) with another VAE: 'taesd' ({TAESD_REPO_ID}, tiny and fast, softer details) "
            "or a VAE folder (config.json + weights)",
        )  # fmt: skip
    group = parser.add_argument_group("depth model") if hasattr(parser, "add_argument_group") else parser
    group.add_argument(
        "--depth-model", metavar="NAME_OR_PATH",
        help="any transformers depth model (Hub repo id or folder), e.g. depth-anything/Depth-Anything-V2-Small-hf "
        "(default: the checkpoint's own DPT-hybrid); see docs/depth-models.md",
    )  # fmt: skip
    group.add_argument(
        "--depth-invert", choices=tuple(_INVERT),
        help="treat the depth model's output as distance and invert it (yes), as inverse depth (no), or decide "
        "from its config (auto, the default)",
    )  # fmt: skip
    group.add_argument(
        "--depth-normalize", choices=("image", "batch"),
        help="scale each depth map by its own range (image, default) or all of the run's by one range (batch: "
        "consistent video frames)",
    )  # fmt: skip


@dataclass(frozen=True)
class ComponentChoice:
    """The checked values of the component flags."""

    depth_model: str | None = None
    depth_invert: bool | None = None
    depth_normalize: str = "image"
    vae: str | None = None  # "taesd" or an absolute folder
    vae_class: str | None = None  # AutoencoderTiny or AutoencoderKL, read from the folder's config

    @property
    def vae_can_tile(self) -> bool:
        """TAESD has no tiled decoding: --vae-tiling with it is refused before loading."""
        return self.vae_class != "AutoencoderTiny"


def component_choice(values: Any) -> ComponentChoice:
    """``values`` (parsed args, or settings with the same attribute names) checked; raises ``CliError``."""

    def get(name: str) -> Any:
        value = getattr(values, name, None)
        return COMPONENT_DEFAULTS[name] if value is None else value

    model = get("depth_model")
    if model is not None:
        model = str(model)
        path = Path(model).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise CliError(f"--depth-model: folder {path} has no config.json (a transformers depth model folder)")
            model = str(path.resolve())
        elif path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
            raise CliError(f"--depth-model: {model} not found (not a model folder nor a Hub repo id owner/name)")
    invert = get("depth_invert")
    if invert not in _INVERT:
        raise CliError(f"--depth-invert: {invert!r} is not one of {', '.join(_INVERT)}")
    normalize = get("depth_normalize")
    if normalize not in ("image", "batch"):
        raise CliError(f"--depth-normalize: {normalize!r} is not one of image, batch")
    return ComponentChoice(model, _INVERT[invert], normalize, *_check_vae(get("vae")))


def _check_vae(vae: Any) -> tuple[str | None, str | None]:
    """(the --vae value, resolved; its class name)."""
    if vae is None:
        return None, None
    if vae == TAESD_NAME:
        return vae, "AutoencoderTiny"
    path = Path(str(vae)).expanduser()
    if not path.is_dir():
        raise CliError(f"--vae: {vae} is neither '{TAESD_NAME}' nor a folder")
    config = path / "config.json"
    if not config.is_file():
        raise CliError(f"--vae: folder {path} has no config.json (a VAE folder in the diffusers layout)")
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
        class_name = values.get("_class_name") or ", ".join(values.get("architectures") or []) or "no model class"
    except (OSError, ValueError, AttributeError) as error:
        raise CliError(f"--vae: {config} is not a valid config file ({error})") from None
    if class_name not in _VAE_CLASSES:
        raise CliError(f"--vae: {config} describes {class_name}, not a VAE; supported: {', '.join(_VAE_CLASSES)}")
    return str(path.resolve()), class_name


def load_components(choice: ComponentChoice, *, dtype: Any, offline: bool) -> dict[str, Any]:
    """The chosen components as ``from_pretrained`` keyword overrides (empty: keep the checkpoint's own).
    A licence notice is printed as one warning line; loading failures become one-line errors."""
    components = _load_vae(choice, dtype, offline) if choice.vae else {}
    if choice.depth_model is None:
        return components
    from ..loading.depth_estimator import load_depth_estimator

    try:
        with warnings.catch_warnings(record=True) as notices:
            warnings.simplefilter("always")
            model, processor = load_depth_estimator(choice.depth_model, torch_dtype=dtype, local_files_only=offline)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"--depth-model: cannot load {choice.depth_model}: {reason}", EXIT_FAILURE) from error
    for notice in notices:
        if "licensed" in str(notice.message):
            warn(str(notice.message))
    return {**components, "depth_estimator": model, "feature_extractor": processor}


def _load_vae(choice: ComponentChoice, dtype: Any, offline: bool) -> dict[str, Any]:
    from .. import models
    from ..loading.hub import ModelFilesNotFoundError

    source = TAESD_REPO_ID if choice.vae == TAESD_NAME else choice.vae
    model_class = getattr(models, choice.vae_class)
    try:
        model = model_class.from_pretrained(source, torch_dtype=dtype, local_files_only=offline)
    except ModelFilesNotFoundError as error:
        raise CliError(f"--vae: {error}", EXIT_FAILURE) from None
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"--vae: cannot load {source}: {reason}", EXIT_FAILURE) from error
    return {"vae": model}


def apply_component_options(pipe: Any, choice: ComponentChoice, depth_range: tuple[float, float] | None = None) -> None:
    """Set the depth options on ``pipe``; ``depth_range`` (low, high) replaces per-call normalisation with one
    range (what ``--depth-normalize batch`` means for a command that makes one call per input)."""
    pipe.set_depth_options(invert=choice.depth_invert, normalize=depth_range or choice.depth_normalize)
