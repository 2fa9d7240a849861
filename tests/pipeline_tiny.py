"""Tiny random-weight SD2-depth components for the pipeline tests (shared by tests/test_pipeline_*.py).

The reference pipeline is diffusers' ``StableDiffusionDepth2ImgPipeline`` built from diffusers' UNet/VAE/PNDM
(from our tiny configs), a tiny transformers CLIP text encoder with a byte-level tokenizer written here, and a
tiny DPT-hybrid depth estimator (BiT backbone + ViT, like the published one). diffusers saves it; our
``Depth2ImgPipeline.from_pretrained`` loads that folder with our UNet, VAE and schedulers.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import PIL.Image
import torch

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "depth2img" / "configs"
PROMPT_LENGTH = 16  # tokens; short keeps the text encoder trivial


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character map (every byte gets a visible stand-in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tokenizer_files(folder: Path) -> Path:
    """A CLIP tokenizer with only byte-level tokens (no merges): 514 tokens, so each character is a token."""
    units = list(_bytes_to_unicode().values())
    vocab = [*units, *(u + "</w>" for u in units), "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def build_reference(tmp: Path):
    """diffusers' depth2img pipeline from tiny random components (deterministic weights)."""
    import diffusers
    from transformers import (
        BitConfig,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessorPil,
    )

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(json.loads((CONFIGS / "tiny/unet/config.json").read_text()))
    vae = diffusers.AutoencoderKL.from_config(json.loads((CONFIGS / "tiny/vae/config.json").read_text()))
    scheduler_config = json.loads((CONFIGS / "sd2-depth/scheduler/scheduler_config.json").read_text())
    scheduler = diffusers.PNDMScheduler.from_config(scheduler_config)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=PROMPT_LENGTH,
            projection_dim=32,
            hidden_act="gelu",
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    ).eval()
    tokenizer = CLIPTokenizer(
        str(write_tokenizer_files(tmp / "vocab") / "vocab.json"),
        str(tmp / "vocab" / "merges.txt"),
        model_max_length=PROMPT_LENGTH,
    )
    backbone = BitConfig(
        global_padding="same",
        layer_type="bottleneck",
        depths=[1, 1, 1],
        out_features=["stage1", "stage2", "stage3"],
        embedding_dynamic_padding=True,
        hidden_sizes=[16, 32, 64, 128],
        embedding_size=8,
        num_groups=2,
    )
    depth_estimator = DPTForDepthEstimation(
        DPTConfig(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=37,
            backbone_out_indices=[0, 1, 2, 3],
            is_hybrid=True,
            backbone_config=backbone,
            backbone_featmap_shape=[1, 64, 2, 2],
            neck_hidden_sizes=[16, 32, 32, 32],
            fusion_hidden_size=16,
            reassemble_factors=[1, 1, 1, 0.5],
            readout_type="project",
        )
    ).eval()
    feature_extractor = DPTImageProcessorPil(
        size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    pipe = diffusers.StableDiffusionDepth2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        depth_estimator=depth_estimator,
        feature_extractor=feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def tiny_folder() -> Path:
    """The tiny reference pipeline saved by diffusers, built once per test process (removed at exit)."""
    from conftest import require

    require("diffusers")
    root = Path(tempfile.mkdtemp(prefix="depth2img-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    build_reference(root).save_pretrained(root / "pipeline")
    return root / "pipeline"


def load_ours(folder: Path, **kwargs):
    from depth2img import Depth2ImgPipeline

    pipe = Depth2ImgPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_reference(folder: Path, **kwargs):
    import diffusers

    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def random_pil(height: int = 24, width: int = 40, seed: int = 0) -> PIL.Image.Image:
    """A smooth-ish random RGB picture (non-square by default: catches swapped H/W)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 4 + 1, width // 4 + 1, 3))
    big = np.kron(coarse, np.ones((4, 4, 1)))[:height, :width]
    noise = rng.random((height, width, 3)) * 0.2
    return PIL.Image.fromarray((np.clip(big * 0.8 + noise, 0, 1) * 255).astype(np.uint8))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


class ModelsMustNotRun:
    """Context manager: any forward pass of the pipeline's models fails the test (for 'checked before any model
    runs')."""

    def __init__(self, pipe):
        self.modules = [m for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.depth_estimator) if m is not None]
        self.handles = []

    def __enter__(self):
        def refuse(module, args):
            raise AssertionError(f"{type(module).__name__} ran before the input was rejected")

        self.handles = [m.register_forward_pre_hook(refuse) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False
