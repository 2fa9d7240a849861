"""Saving a pipeline while a LoRA is loaded must not write wrapped (``base_layer``) key names."""

from __future__ import annotations

import pytest
import torch

from depth2img import Depth2ImgPipeline
from depth2img.loading.random_model import write_random_pipeline


def test_save_pretrained_refuses_unfused_lora_and_works_after_fuse_and_unload(tmp_path):
    pipe = Depth2ImgPipeline.from_pretrained(write_random_pipeline(tmp_path / "tiny", config="tiny"))
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = pipe.unet.get_submodule(target)
    lora = {
        f"unet.{target}.lora_A.weight": torch.randn(2, layer.in_features),
        f"unet.{target}.lora_B.weight": torch.randn(layer.out_features, 2),
    }
    pipe.load_lora_weights(lora, adapter_name="style")

    with pytest.raises(ValueError, match=r"while LoRA adapters are loaded \(unet\.down_blocks\.0\..*fuse_lora"):
        pipe.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()  # refused before anything was written

    pipe.fuse_lora()
    fused = pipe.unet.get_submodule(target).weight.detach().clone()
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "saved")
    again = Depth2ImgPipeline.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.unet.get_submodule(target).weight, fused)
