"""From ``--model`` and the option flags to a ready ``Depth2ImgPipeline``.

``check_model`` runs before anything heavy: it decides whether ``--model`` is a folder, a single checkpoint
file or a Hub repo id, and (offline) whether the cache holds it. ``load_pipeline`` then loads it, and
``apply_options`` sets the scheduler, memory options, LoRAs and embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILURE, CliError

__all__ = ["ModelSource", "apply_options", "check_adapter_support", "check_model", "load_pipeline"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """What ``--model`` names: ``kind`` is "folder", "file" or "repo"; ``location`` an absolute path or repo id."""

    kind: str
    location: str


def check_model(model: str, offline: bool) -> ModelSource:
    """Classify ``--model`` and fail early when it cannot be used (missing path; offline and not cached)."""
    if offline:  # --offline is HF_HUB_OFFLINE=1, for our loaders and transformers' alike
        os.environ["HF_HUB_OFFLINE"] = "1"
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CliError(
                f"--model: folder {path} has no model_index.json; point at a model folder in the diffusers "
                f"layout or at a single {'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint"
            )
        return ModelSource("folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise CliError(f"--model: {path} is not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}) nor a folder")
        return ModelSource("file", str(path.resolve()))
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise CliError(f"--model: {model} not found (not a folder, a checkpoint file or a Hub repo id owner/name)")
    from ..loading.hub import ModelFilesNotFoundError, hub_offline, resolve_folder

    if hub_offline():
        try:  # only the index: enough to know whether the snapshot is cached, costs no download
            resolve_folder(model, allow_patterns=["model_index.json"])
        except (ModelFilesNotFoundError, FileNotFoundError) as error:
            if not _cached_under_new_id(model):
                raise CliError(f"--model: {error}", EXIT_FAILURE) from None
    return ModelSource("repo", model)


def _cached_under_new_id(model: str) -> bool:
    """Whether a moved checkpoint's old repo id (stabilityai/...) is cached under its new id, which loading uses."""
    from ..components import LEGACY_REPO_IDS
    from ..loading.hub import ModelFilesNotFoundError, resolve_folder

    if model not in LEGACY_REPO_IDS:
        return False
    try:
        resolve_folder(LEGACY_REPO_IDS[model], allow_patterns=["model_index.json"])
    except (ModelFilesNotFoundError, FileNotFoundError):
        return False
    return True


def check_adapter_support(loras: list[tuple[str, float]], embeddings: list[tuple[str, str | None]]) -> None:
    """Fail before loading when LoRA or embedding files are missing, or this version cannot load them."""
    if not loras and not embeddings:
        return
    from ..pipeline import Depth2ImgPipeline

    for flag, paths, method in (
        ("--lora", [path for path, _ in loras], "load_lora_weights"),
        ("--embedding", [path for path, _ in embeddings], "load_textual_inversion"),
    ):
        if not paths:
            continue
        if not hasattr(Depth2ImgPipeline, method):
            raise CliError(f"{flag} is not supported yet: this depth2img has no Depth2ImgPipeline.{method}")
        for path in paths:
            if not Path(path).exists():
                raise CliError(f"{flag}: file not found: {path}")


def load_pipeline(
    source: ModelSource,
    *,
    dtype: Any,
    offline: bool,
    quiet: bool,
    depth_only: bool = False,
    low_memory: bool = False,
    components: dict[str, Any] | None = None,
) -> Any:
    """Load the pipeline from ``source`` in ``dtype``; loading failures become one-line errors.

    ``depth_only`` skips the UNet, VAE and text encoder of a folder or repo (``depth2img depth`` needs only
    the estimator): nothing of theirs is read or downloaded. ``components`` are used instead of the model's own
    (``component_options.load_components``: --depth-model).
    """
    from transformers.utils import logging as transformers_logging

    from ..loading.hub import ModelFilesNotFoundError
    from ..pipeline import Depth2ImgPipeline

    transformers_logging.disable_progress_bar()  # per-tensor "Loading weights" bars: noise on a command line
    options: dict[str, Any] = {"torch_dtype": dtype, **(components or {})}
    if low_memory:  # folders and repo ids only: checked before loading (generate._check_low_memory)
        options["low_memory"] = True
    try:
        if source.kind == "file":
            pipe = Depth2ImgPipeline.from_single_file(source.location, **options)
        else:
            skipped = dict.fromkeys(("unet", "vae", "text_encoder", "tokenizer")) if depth_only else {}
            pipe = Depth2ImgPipeline.from_pretrained(source.location, local_files_only=offline, **options, **skipped)
    except ModelFilesNotFoundError as error:
        raise CliError(str(error), EXIT_FAILURE) from error
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CliError(f"cannot load model {source.location}: {_first_line(error)}", EXIT_FAILURE) from error
    if quiet and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_options(
    pipe: Any,
    *,
    scheduler: str | None,
    attention_slicing: bool,
    vae_tiling: bool,
    loras: list[tuple[str, float]],
    embeddings: list[tuple[str, str | None]],
) -> None:
    """Swap the scheduler, switch memory options on, load LoRAs (with their scales) and embeddings."""
    if scheduler:
        from ..schedulers.registry import get_scheduler

        pipe.scheduler = get_scheduler(scheduler, pipe.scheduler.config)
    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_tiling:
        if hasattr(pipe, "enable_vae_tiling"):
            pipe.enable_vae_tiling()
        else:
            pipe.vae.enable_tiling()
    try:
        names = []
        for number, (path, _) in enumerate(loras):
            names.append(f"lora_{number}")
            pipe.load_lora_weights(path, adapter_name=names[-1])
        if names:
            pipe.set_adapters(names, [scale for _, scale in loras])
        for path, token in embeddings:
            pipe.load_textual_inversion(path, token=token)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CliError(f"cannot load adapter: {_first_line(error)}", EXIT_FAILURE) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
