"""Random-weight models of a real architecture: for tests, benchmarks and trying the pipeline offline.

``random_component("unet", config="sd2-depth")`` builds one component of the published SD2-depth
architecture (or of the ``"tiny"`` one, a few hundred thousand parameters per model) with random weights;
``write_random_pipeline(folder)`` writes a complete folder in the published diffusers layout
(``model_index.json``, one subfolder per component) that our loader and diffusers both load. Such a model
produces noise: the folder says so in ``README.txt``.

Initialisation is fast even for the 866M-parameter UNet: parameters are created on the meta device and each
one is filled once, in place (biases 0, normalisation scales 1, other weights uniform with standard deviation
0.02), instead of running every layer's own initialiser. Outputs are finite but meaningless.

The tokenizer of ``sd2-depth`` is the real CLIP BPE vocabulary (49408 tokens, shipped with the package);
``tiny`` uses its first 1000 tokens (the 512 byte symbols, the first 486 merges, the two special tokens), so
a tiny tokenizer splits text the way the real one does, only into shorter pieces.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..components import COMPONENT_NAMES, DEFAULT_REPO_ID, LARGE_MODELS
from ..configuration import load_json
from .empty_init import materialize_parameters, parameters_on_meta
from .single_file import ARCHITECTURES, architecture_folder, depth_estimator_config

__all__ = [
    "clip_vocabulary",
    "init_random_",
    "random_component",
    "write_random_pipeline",
]

WEIGHT_STD = 0.02  # the usual transformer initialiser scale; keeps activations finite through the full UNet
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_BYTE_SYMBOLS = 512  # 256 byte symbols, then the same with "</w>" (end of word)

README = """RANDOM WEIGHTS: this is NOT a trained model.

Written by depth2img.loading.random_model.write_random_pipeline(config={config!r}, seed={seed}).
It has the layout and the architecture of Stable Diffusion 2 depth ({description}) but every weight is random:
images generated with it are noise. Use it for tests, benchmarks and trying the pipeline offline.
For the real weights see https://huggingface.co/{repo_id}.
"""


def init_random_(module: nn.Module, seed: int = 0, std: float = WEIGHT_STD, dtype: torch.dtype | None = None) -> None:
    """Give every meta parameter of ``module`` random values in place (deterministic for a ``seed``).

    Biases are zero, 1-D weights of normalisation layers one, and every other tensor uniform on
    [-a, a] with a = std·√3 (standard deviation ``std``; uniform is several times faster than normal).
    """
    generator = torch.Generator().manual_seed(seed)
    bound = std * math.sqrt(3.0)

    def fill(owner: nn.Module, name: str, tensor: torch.Tensor) -> None:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias" or leaf.endswith("_bias"):
            tensor.zero_()
        elif tensor.ndim == 1 and "norm" in type(owner).__name__.lower():
            tensor.fill_(1.0)
        else:
            tensor.uniform_(-bound, bound, generator=generator)

    materialize_parameters(module, fill, dtype=dtype)


def _random_module(build, seed: int, dtype: torch.dtype | None) -> nn.Module:
    with parameters_on_meta():
        module = build()
    init_random_(module, seed=seed, dtype=dtype)
    if dtype is not None:
        module.to(dtype)  # floating buffers too
    return module.eval()


def random_component(
    name: str, config: str | os.PathLike = "tiny", seed: int = 0, dtype: torch.dtype | None = None
) -> Any:
    """One component of the ``config`` architecture, random where it has weights.

    ``name``: unet, vae (ours), text_encoder (transformers ``CLIPTextModel``), tokenizer (``CLIPTokenizer``),
    depth_estimator (``DPTForDepthEstimation``), feature_extractor (DPT image processor) or scheduler (ours,
    from ``scheduler_config.json``). ``dtype`` casts the floating weights (default float32).
    """
    if name not in COMPONENT_NAMES:
        # the models first, then the components without weights
        choices = [*LARGE_MODELS, *(name for name in COMPONENT_NAMES if name not in LARGE_MODELS)]
        raise ValueError(f"unknown component {name!r}; choose one of {', '.join(choices)}")
    folder = architecture_folder(config)
    if name == "unet":
        from ..models.unet import UNet2DConditionModel

        kwargs = UNet2DConditionModel.extract_init_kwargs(load_json(folder / "unet" / "config.json"))
        return _random_module(lambda: UNet2DConditionModel(**kwargs), seed, dtype)
    if name == "vae":
        from ..models.vae import AutoencoderKL

        kwargs = AutoencoderKL.extract_init_kwargs(load_json(folder / "vae" / "config.json"))
        return _random_module(lambda: AutoencoderKL(**kwargs), seed, dtype)
    if name == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        text_config = CLIPTextConfig.from_json_file(str(folder / "text_encoder" / "config.json"))
        return _random_module(lambda: CLIPTextModel(text_config), seed, dtype)
    if name == "depth_estimator":
        from transformers import DPTConfig, DPTForDepthEstimation

        depth_config = DPTConfig.from_json_file(str(depth_estimator_config(folder)))
        return _random_module(lambda: DPTForDepthEstimation(depth_config), seed, dtype)
    if name == "tokenizer":
        from transformers import CLIPTokenizer

        with tempfile.TemporaryDirectory(prefix="depth2img-tokenizer-") as tmp:
            _write_tokenizer(folder, Path(tmp))
            return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    if name == "feature_extractor":
        return dpt_image_processor_class().from_pretrained(str(folder / "feature_extractor"), local_files_only=True)
    from ..schedulers import scheduler_class

    scheduler_config = load_json(folder / "scheduler" / "scheduler_config.json")
    return scheduler_class(scheduler_config["_class_name"]).from_config(scheduler_config)


def dpt_image_processor_class() -> type:
    """transformers' DPT image processor; its PIL flavour when torchvision (the default backend's need) is absent."""
    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "DPTImageProcessorPil"):
        return transformers.DPTImageProcessorPil
    return transformers.DPTImageProcessor


def clip_vocabulary(vocab_size: int = 49408) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of the CLIP BPE cut to ``vocab_size`` tokens: byte symbols, first merges, special tokens.

    The full size is the real vocabulary; smaller sizes keep its first merges, so they form a valid BPE whose
    token ids agree with the real one except for the two special tokens, which stay last.
    """
    import gzip

    data = resources.files("depth2img") / "data" / "clip-bpe"
    with data.joinpath("merges.txt.gz").open("rb") as packed, gzip.open(packed) as text:
        all_merges = [line for line in text.read().decode("utf-8").split("\n")[1:] if line]
    with data.joinpath("vocab.json.gz").open("rb") as packed, gzip.open(packed) as text:
        real_vocab = json.loads(text.read().decode("utf-8"))
    merge_count = vocab_size - _BYTE_SYMBOLS - len(_SPECIAL_TOKENS)
    if not 0 <= merge_count <= len(all_merges):
        raise ValueError(f"vocab_size must be between {_BYTE_SYMBOLS + 2} and {len(real_vocab)}, got {vocab_size}")
    by_id = sorted(real_vocab, key=real_vocab.__getitem__)
    tokens = by_id[: _BYTE_SYMBOLS + merge_count] + list(_SPECIAL_TOKENS)
    return {token: index for index, token in enumerate(tokens)}, all_merges[:merge_count]


def _write_tokenizer(folder: Path, target: Path) -> None:
    """Copy ``folder/tokenizer``; when it has no vocabulary (sd2-depth ships settings only), add the real one."""
    source = folder / "tokenizer"
    target.mkdir(parents=True, exist_ok=True)
    for file_name in TOKENIZER_FILES:
        if (source / file_name).is_file():
            shutil.copyfile(source / file_name, target / file_name)
    if not (target / "vocab.json").is_file():
        vocab, merges = clip_vocabulary()
        (target / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def write_random_pipeline(
    out_dir: str | os.PathLike,
    config: str | os.PathLike = "tiny",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a complete random-weight pipeline folder in the published diffusers layout; returns its path.

    unet/vae: ``config.json`` + ``diffusion_pytorch_model.safetensors``; text_encoder/depth_estimator:
    transformers' ``config.json`` + ``model.safetensors``; tokenizer, feature_extractor, scheduler: their
    config files; ``model_index.json`` naming the diffusers/transformers classes as the published one does;
    ``README.txt`` saying the weights are random. The folder appears complete or not at all. Each component
    gets its own seed (``seed`` + its index), so components do not share random streams.
    """
    out_dir = Path(out_dir)
    folder = architecture_folder(config)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass overwrite=True or a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_components(folder, tmp, seed)
        description = str(config) if str(config) in ARCHITECTURES else f"configs from {folder}"
        (tmp / "README.txt").write_text(
            README.format(config=str(config), seed=seed, description=description, repo_id=DEFAULT_REPO_ID)
        )
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_components(folder: Path, target: Path, seed: int) -> None:
    shutil.copyfile(folder / "model_index.json", target / "model_index.json")
    for index, name in enumerate(LARGE_MODELS):
        module = random_component(name, folder, seed=seed + index)
        if name in ("unet", "vae"):
            module.save_pretrained(target / name)
        else:
            _save_transformers_model(module, target / name)
        del module  # one full-size model in memory at a time
    _write_tokenizer(folder, target / "tokenizer")
    for name, file_name in (("feature_extractor", "preprocessor_config.json"), ("scheduler", "scheduler_config.json")):
        (target / name).mkdir()
        shutil.copyfile(folder / name / file_name, target / name / file_name)


def _save_transformers_model(model: nn.Module, folder: Path) -> None:
    """``config.json`` + ``model.safetensors`` as transformers' ``save_pretrained`` writes them (no progress bars)."""
    from .weights import write_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.to_json_file(str(folder / "config.json"))
    write_state_dict(model.state_dict(), folder / "model.safetensors")


def _swap_in(new: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an existing ``out_dir`` is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(new, out_dir)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
