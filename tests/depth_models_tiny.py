"""Tiny random transformers depth models (Depth Anything relative and metric, ZoeDepth, GLPN) and their image
processors, built from small configs and saved as folders: no download. Shared by the depth-model tests."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch

KINDS = ("depth_anything", "depth_anything_metric", "zoedepth", "glpn")


def _dinov2_backbone():
    import transformers

    return transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=28,
        patch_size=14, out_features=["stage1", "stage2"], reshape_hidden_states=False,
    )  # fmt: skip


def build(kind: str):
    """(model, processor) of ``kind``, seeded; weights spread wider than the libraries' init (whose tiny heads
    predict an almost constant map) so that depth maps have structure the tests can see."""
    import transformers

    torch.manual_seed(0)
    if kind.startswith("depth_anything"):
        metric = kind.endswith("metric")
        config = transformers.DepthAnythingConfig(
            backbone_config=_dinov2_backbone(), reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
            fusion_hidden_size=16, head_hidden_size=16, reassemble_factors=[2, 1], patch_size=14,
            depth_estimation_type="metric" if metric else "relative", max_depth=20 if metric else 1,
        )  # fmt: skip
        model = transformers.DepthAnythingForDepthEstimation(config)
        processor = transformers.DPTImageProcessorPil(
            size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        )  # fmt: skip
    elif kind == "zoedepth":
        config = transformers.ZoeDepthConfig(
            backbone_config=_dinov2_backbone(), backbone_hidden_size=32, reassemble_factors=[2, 1],
            neck_hidden_sizes=[16, 32], fusion_hidden_size=16, bottleneck_features=16, num_relative_features=8,
            patch_size=14, bin_embedding_dim=16, num_attractors=[4, 2, 1, 1],
            bin_configurations=[{"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0}], use_pretrained_backbone=False,
        )  # fmt: skip
        model = transformers.ZoeDepthForDepthEstimation(config)
        processor = transformers.ZoeDepthImageProcessorPil(size={"height": 28, "width": 42}, ensure_multiple_of=14)
    elif kind == "depth_pro":
        # Depth Pro's own image processor needs torchvision (never installed here); it resizes to the model's fixed
        # size and normalises with mean = std = 0.5, which the DPT processor below does too (bilinear resize).
        backbone = {
            "model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
            "intermediate_size": 37, "image_size": 32, "patch_size": 8,
        }  # fmt: skip
        config = transformers.DepthProConfig(
            fusion_hidden_size=16, patch_size=32, intermediate_hook_ids=[1, 0], intermediate_feature_dims=[16, 16],
            scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.25],
            scaled_images_feature_dims=[16, 16], use_fov_model=False, image_model_config=backbone,
            patch_model_config=backbone, fov_model_config=backbone,
        )  # fmt: skip
        model = transformers.DepthProForDepthEstimation(config)
        processor = transformers.DPTImageProcessorPil(size={"height": 64, "width": 64}, resample=2)
    elif kind == "glpn":
        config = transformers.GLPNConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
            strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=8, max_depth=10,
        )  # fmt: skip
        model = transformers.GLPNForDepthEstimation(config)
        processor = transformers.GLPNImageProcessorPil(size_divisor=8)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0.0, 0.1)
    return model.eval(), processor


@cache
def saved(kind: str) -> Path:
    """``kind`` saved as a folder (model + processor), as load_depth_estimator reads it; removed at exit."""
    root = Path(tempfile.mkdtemp(prefix=f"depth2img-{kind}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model, processor = build(kind)
    model.save_pretrained(root)
    processor.save_pretrained(root)
    return root
