"""What the model's config files tell before any weights load: enough to refuse flags that cannot fit it.

A model folder (or a cached Hub snapshot) holds ``text_encoder/config.json``, ``unet/config.json`` and
``scheduler/scheduler_config.json``; a single-file checkpoint is built from the configs shipped with the
package. From them: the text encoder's layer count (``--clip-skip``), the scheduler's training steps
(``--steps``), and models on the meta device (shapes, no memory) that a LoRA or embedding is checked against.
When a config cannot be had cheaply (a repo id not cached yet), the check is left to the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CliError
from .pipeline_setup import ModelSource

__all__ = [
    "DEFAULT_TRAIN_STEPS",
    "check_clip_skip_flag",
    "check_adapters_fit",
    "component_config",
    "train_steps",
]

DEFAULT_TRAIN_STEPS = 1000  # SD2's scheduler; --steps may not exceed the model's training steps
_CONFIG_NAMES = {"scheduler": "scheduler_config.json"}


def component_config(source: ModelSource, component: str) -> dict[str, Any] | None:
    """``component``'s config (``unet``, ``text_encoder``, ``scheduler``) as a dict, or None if not at hand."""
    name = _CONFIG_NAMES.get(component, "config.json")
    if source.kind == "file":
        from ..loading.random_model import architecture_folder

        path = architecture_folder("sd2-depth") / component / name  # what from_single_file builds
    elif source.kind == "folder":
        path = Path(source.location) / component / name
    else:
        path = _cached_repo_file(source.location, f"{component}/{name}")
        if path is None:
            return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a broken model folder is reported when it loads
    return config if isinstance(config, dict) else None


def _cached_repo_file(repo_id: str, file_name: str) -> Path | None:
    """A file of ``repo_id`` from the local Hugging Face cache only: a check never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache

        from ..loading.pipeline_folder import LEGACY_REPO_IDS

        found = try_to_load_from_cache(LEGACY_REPO_IDS.get(repo_id, repo_id), file_name)
    except Exception:  # noqa: BLE001 - no cache, a bad id: nothing to check against
        return None
    return Path(found) if isinstance(found, str) else None


def train_steps(source: ModelSource) -> int:
    """The model's ``num_train_timesteps`` (the most inference steps a scheduler can take), default 1000."""
    config = component_config(source, "scheduler") or {}
    steps = config.get("num_train_timesteps")
    return steps if isinstance(steps, int) and steps > 0 else DEFAULT_TRAIN_STEPS


def check_clip_skip_flag(clip_skip: int | None, layers: int | None) -> None:
    """``--clip-skip N`` counts as A1111 does (1 = the last layer), so N may go up to the layer count + 1."""
    if clip_skip is not None and layers is not None and clip_skip > layers + 1:
        raise CliError(
            f"--clip-skip: {clip_skip} is too large: this model's text encoder has {layers} layers, so use 1 to "
            f"{layers + 1} (1 = its last layer, 2 = the one before, ...)"
        )


def text_encoder_layers(source: ModelSource) -> int | None:
    """The text encoder's ``num_hidden_layers`` from its config, or None."""
    layers = (component_config(source, "text_encoder") or {}).get("num_hidden_layers")
    return layers if isinstance(layers, int) else None


def check_adapters_fit(
    source: ModelSource, loras: list[tuple[str, float]], embeddings: list[tuple[str, str | None]]
) -> None:
    """Read every LoRA and embedding file and check it against the model's shapes, built on the meta device from
    the configs (no weights): a file that is damaged, unsafe or made for another model fails here, exit 2."""
    if not loras and not embeddings:
        return
    from ..errors import Depth2ImgError

    models = _meta_models(source)
    for path, _ in loras:
        try:
            if models:
                from ..adapters.lora_pipeline import fitting_lora_weights

                fitting_lora_weights(path, models)
            else:
                from ..adapters.lora_pipeline import read_lora_file

                read_lora_file(path)
        except (Depth2ImgError, ValueError, KeyError) as error:
            raise CliError(_about("--lora", path, error)) from None
    width = (component_config(source, "text_encoder") or {}).get("hidden_size")
    for path, token in embeddings:
        from ..adapters.textual_inversion import embedding_matrix, read_embedding_file

        try:
            stored, embedding = read_embedding_file(path)
            if isinstance(width, int):
                embedding_matrix(token or stored or Path(path).stem, embedding, width)
        except (Depth2ImgError, ValueError, KeyError) as error:
            raise CliError(_about("--embedding", path, error)) from None


def _meta_models(source: ModelSource) -> dict[str, Any]:
    """The UNet and text encoder with parameters on the meta device (shapes only), from their configs."""
    unet_config = component_config(source, "unet")
    text_config = component_config(source, "text_encoder")
    if unet_config is None or text_config is None:
        return {}
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..loading.empty_init import parameters_on_meta
    from ..models.unet import UNet2DConditionModel

    try:
        with parameters_on_meta():
            unet = UNet2DConditionModel(**UNet2DConditionModel.extract_init_kwargs(unet_config))
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    except Exception:  # noqa: BLE001 - a config we cannot build from: the load will say why
        return {}
    return {"unet": unet, "text_encoder": text_encoder}


def _about(flag: str, path: str, error: BaseException) -> str:
    """``flag: path: reason``, without naming the path twice when the reason already does."""
    reason = _first_line(error)
    return f"{flag}: {reason}" if str(path) in reason else f"{flag}: {path}: {reason}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
