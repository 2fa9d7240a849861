"""Adapters: textual inversion embeddings and LoRA weights on top of the base model.

Pipelines get them by inheriting ``TextualInversionLoaderMixin`` and ``LoraLoaderMixin`` (diffusers' method
names and semantics); the functions below work on single models for other uses.
"""

from __future__ import annotations

from .lora_keys import LoRAWeights, convert_lora_state_dict
from .lora_layer import LoRALayer
from .lora_pipeline import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE, LoraLoaderMixin, read_lora_file
from .textual_inversion import (
    TextualInversionLoaderMixin,
    expand_multi_vector_tokens,
    load_textual_inversion,
    unload_textual_inversion,
)

__all__ = [
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "LoRALayer",
    "LoRAWeights",
    "LoraLoaderMixin",
    "TextualInversionLoaderMixin",
    "convert_lora_state_dict",
    "expand_multi_vector_tokens",
    "load_textual_inversion",
    "read_lora_file",
    "unload_textual_inversion",
]
