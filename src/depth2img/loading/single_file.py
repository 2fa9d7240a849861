"""Original single-file checkpoints (``512-depth-ema.ckpt`` / ``.safetensors``) → a ``Depth2ImgPipeline``.

The file holds all four networks under their original prefixes; the architecture comes from shipped configs
(``configs/sd2-depth``, or a caller-given folder in the same layout), the scheduler, tokenizer and image
processor from shipped files. Steps:

1. ``read_checkpoint``: one reader per format, chosen from the file's first bytes (not its suffix):
   safetensors (memory-mapped, tensors read on demand) or ``torch.save`` (zip or legacy), read with
   ``torch.load(weights_only=True)`` so no pickled code ever runs; a Lightning ``{"state_dict": ...}`` wrapper
   is unwrapped.
2. ``detect.require_depth_checkpoint``: the tensor shapes say what the file is; anything but SD2-depth is
   refused with a sentence saying what it is.
3. each network is built on the meta device from its config and filled by its key map (``keymaps/``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..components import COMPONENT_NAMES
from ..configuration import load_json
from ..utils.arguments import refuse_unknown_arguments
from .detect import NotADepthCheckpointError, require_depth_checkpoint
from .empty_init import parameters_on_meta
from .keymaps import KeyMap, convert_state_dict, ldm_unet, ldm_vae, midas_dpt, open_clip
from .load_options import resolve_dtypes
from .model_folder import fill_model
from .weights import InvalidWeightsError

__all__ = ["ARCHITECTURES", "architecture_folder", "depth_estimator_config", "load_single_file", "read_checkpoint"]

ARCHITECTURES = ("tiny", "sd2-depth")  # the architecture config folders shipped with the package (configs/)

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


# ---------------------------------------------------------------------------------------------- reading


class SafetensorsCheckpoint(Mapping):
    """A safetensors file as a read-only ``{key: tensor}`` mapping; tensors are read when asked for."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
            self._keys = list(self._file.keys())  # noqa: SIM118 (safe_open is no dict)
        except SafetensorError as error:
            raise InvalidWeightsError(f"{path} is not a valid safetensors file ({error})") from None
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape, read from the header (no data is loaded)."""
        return tuple(self._file.get_slice(key).get_shape())


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """Open an original checkpoint as ``{key: tensor}``; the format is detected from the file's content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with path.open("rb") as file:
        head = file.read(9)
    # safetensors first: its header length may well start with the byte 0x80 that also opens a pickle.
    if _looks_like_safetensors(head, path.stat().st_size):
        return SafetensorsCheckpoint(path)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save: zip archive, or a legacy raw pickle
        return _read_torch(path, zipped=zipfile.is_zipfile(path))
    raise InvalidWeightsError(f"{path} is neither a safetensors file nor a PyTorch checkpoint (.ckpt/.pt/.pth)")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # 8 bytes little-endian header length, then a JSON object.
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 2 <= header_length <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


def _read_torch(path: Path, zipped: bool) -> dict[str, torch.Tensor]:
    try:
        # weights_only: only tensors and plain containers are unpickled, never code. mmap needs the zip format.
        if path.name.endswith(".safetensors"):  # torch.load would hand such a name to safetensors: pass a file
            with path.open("rb") as file:
                loaded = torch.load(file, map_location="cpu", weights_only=True)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError...: all mean "not readable safely"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidWeightsError(
            f"{path} could not be read with torch.load(weights_only=True), which refuses anything but tensors "
            f"so that no code in the file runs: {reason}"
        ) from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # PyTorch Lightning checkpoints wrap the weights
    if not isinstance(loaded, Mapping):
        raise InvalidWeightsError(f"{path} holds a {type(loaded).__name__}, not a mapping of names to tensors")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def checkpoint_shapes(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every key's shape, without reading tensor data where the format allows it."""
    if isinstance(checkpoint, SafetensorsCheckpoint):
        return {key: checkpoint.shape(key) for key in checkpoint}
    return {key: tuple(tensor.shape) for key, tensor in checkpoint.items()}


# ---------------------------------------------------------------------------------------------- architectures
def architecture_folder(config: str | os.PathLike) -> Path:
    """The folder of configs for ``"tiny"`` / ``"sd2-depth"`` (shipped with the package) or a given folder."""
    if str(config) in ARCHITECTURES:
        return Path(str(resources.files("depth2img") / "configs" / str(config)))
    folder = Path(config)
    if not folder.is_dir():
        raise ValueError(f"config must be one of {', '.join(ARCHITECTURES)} or a folder of configs, got {config!r}")
    return folder


def depth_estimator_config(folder: Path) -> Path:
    """The depth estimator's config in an architecture folder: ``depth_estimator/config.json``, or for sd2-depth
    the derived one shipped beside the others (the published checkpoint has none)."""
    for path in (folder / "depth_estimator" / "config.json", folder / "depth_estimator_config.derived.json"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder} has no depth_estimator/config.json")


# ---------------------------------------------------------------------------------------------- building


def load_single_file(
    pipeline_class: type,
    path: str | os.PathLike,
    *,
    torch_dtype: Any = None,
    config: str | os.PathLike | None = None,
    **components: Any,
) -> Any:
    """Build ``pipeline_class`` from an original checkpoint; see ``Depth2ImgPipeline.from_single_file``."""
    refuse_unknown_arguments(
        "from_single_file",
        components,
        COMPONENT_NAMES,
        f"torch_dtype, config, and components to use as they are: {', '.join(COMPONENT_NAMES)}",
    )
    dtypes = resolve_dtypes(torch_dtype)  # one dtype, or one per component (load_options.py)
    folder = architecture_folder("sd2-depth" if config is None else config)
    path = Path(path)
    checkpoint = read_checkpoint(path)
    kind = require_depth_checkpoint(checkpoint_shapes(checkpoint), str(path))
    if "depth_estimator" not in components and not kind.has_depth_model:
        raise NotADepthCheckpointError(
            f"{path} has an SD2-depth UNet but no depth estimator weights (depth_model.model.*); pass "
            "depth_estimator=DPTForDepthEstimation.from_pretrained(...) to from_single_file"
        )

    built = dict(components)
    loaders = {
        "unet": lambda: _load_unet(folder, checkpoint, path, dtypes.for_component("unet")),
        "vae": lambda: _load_vae(folder, checkpoint, path, dtypes.for_component("vae")),
        "text_encoder": lambda: _load_text_encoder(folder, checkpoint, path, dtypes.for_component("text_encoder")),
        "depth_estimator": lambda: _load_depth_estimator(
            folder, checkpoint, path, dtypes.for_component("depth_estimator")
        ),
        "tokenizer": lambda: _load_tokenizer(folder),
        "scheduler": lambda: _load_scheduler(folder),
        "feature_extractor": lambda: _load_feature_extractor(folder),
    }
    for name in COMPONENT_NAMES:
        if name not in built:
            built[name] = loaders[name]()
    return pipeline_class(**built)


def _load_unet(folder: Path, checkpoint: Mapping, path: Path, dtype: torch.dtype | None):
    from ..models.unet import UNet2DConditionModel

    config = load_json(folder / "unet" / "config.json")
    with parameters_on_meta():
        model = UNet2DConditionModel.from_config(config)
    return _fill(model, ldm_unet.keymap(config), checkpoint, path, dtype)


def _load_vae(folder: Path, checkpoint: Mapping, path: Path, dtype: torch.dtype | None):
    from ..models.vae import AutoencoderKL

    config = load_json(folder / "vae" / "config.json")
    with parameters_on_meta():
        model = AutoencoderKL.from_config(config)
    return _fill(model, ldm_vae.keymap(config), checkpoint, path, dtype)


def _load_text_encoder(folder: Path, checkpoint: Mapping, path: Path, dtype: torch.dtype | None):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = load_json(folder / "text_encoder" / "config.json")
    with parameters_on_meta():
        model = CLIPTextModel(CLIPTextConfig.from_dict(config))
    return _fill(model, open_clip.keymap(config), checkpoint, path, dtype)


def _load_depth_estimator(folder: Path, checkpoint: Mapping, path: Path, dtype: torch.dtype | None):
    from transformers import DPTConfig, DPTForDepthEstimation

    config = load_json(depth_estimator_config(folder))
    with parameters_on_meta():
        model = DPTForDepthEstimation(DPTConfig.from_dict(config))
    return _fill(model, midas_dpt.keymap(config), checkpoint, path, dtype)


def _fill(model: torch.nn.Module, keymap: KeyMap, checkpoint: Mapping, path: Path, dtype: torch.dtype | None):
    """Put the converted tensors into a meta-built ``model`` (float32 unless ``dtype``); returns it in eval mode."""
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    state_dict = convert_state_dict(checkpoint, keymap, expected, str(path), dtype or torch.get_default_dtype())
    return fill_model(model, state_dict, path, dtype)


def _load_tokenizer(folder: Path):
    from .clip_vocab import clip_tokenizer

    settings = folder / "tokenizer"
    if (settings / "vocab.json").is_file():  # a full tokenizer folder (e.g. a test vocabulary) wins
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(settings), local_files_only=True)
    return clip_tokenizer(settings if settings.is_dir() else None)


def _load_scheduler(folder: Path):
    from ..schedulers import scheduler_class

    config = load_json(folder / "scheduler" / "scheduler_config.json")
    return scheduler_class(config.get("_class_name", "PNDMScheduler")).from_config(config)


def _load_feature_extractor(folder: Path):
    from ..depth import DPTPreprocessor  # what the folder loader uses too

    return DPTPreprocessor.from_pretrained(folder / "feature_extractor")
