"""Checkpoints from diffusers < 0.14 name the VAE attention query/key/value/proj_attn; they must still load."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from depth2img.loading.legacy_keys import rename_legacy_attention_keys
from depth2img.loading.random_model import random_component
from depth2img.models import AutoencoderKL

MODERN_TO_LEGACY = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def _legacy_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state_dict.items():
        if ".attentions." in key:
            for modern, legacy in MODERN_TO_LEGACY.items():
                key = key.replace(modern, legacy)
        out[key] = tensor.clone()
    return out


def test_legacy_vae_attention_names_load(tmp_path):
    vae = random_component("vae", config="tiny", seed=3)
    vae.save_pretrained(tmp_path)
    legacy = _legacy_names(vae.state_dict())
    assert "encoder.mid_block.attentions.0.query.weight" in legacy  # the test really renames something
    assert "encoder.mid_block.attentions.0.proj_attn.bias" in legacy
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))

    loaded = AutoencoderKL.from_pretrained(tmp_path)
    for key, tensor in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_rename_leaves_modern_and_unrelated_keys_alone():
    tensor = torch.zeros(1)
    state = {"a.to_q.weight": tensor, "b.query.weight": tensor, "c.key.bias": tensor}
    renamed = rename_legacy_attention_keys(state, expected_keys={"a.to_q.weight", "c.to_k.bias"})
    # b.query has no modern counterpart the model expects: left for strict checking to report
    assert set(renamed) == {"a.to_q.weight", "b.query.weight", "c.to_k.bias"}
