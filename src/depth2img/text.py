"""Prompt encoding: tokenizer → CLIP text encoder → embeddings, with clip skip.

The pipeline wraps this with the adapters' steps (textual-inversion token expansion, the text encoder's LoRA
scale), so this file stays about CLIP alone.

Semantics follow the reference's ``encode_prompt`` (so seeded images are equal), except that clip skip works on
every transformers version: transformers 5's ``CLIPTextModel`` has no ``.text_model``, so the final layer norm
is looked up wherever the model keeps it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_clip_skip",
    "encode_prompt",
    "final_layer_norm",
    "negative_texts",
    "prompt_batch_size",
]

logger = logging.getLogger(__name__)


def prompt_batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """Number of prompts: 1 for a string, the list's length, else the embeddings' batch."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    """The CLIP text tower's final LayerNorm: ``text_model.final_layer_norm`` in transformers 4, a direct child in
    transformers 5, found by name in any other wrapping."""
    for owner in (text_encoder, getattr(text_encoder, "text_model", None)):
        norm = getattr(owner, "final_layer_norm", None) if owner is not None else None
        if isinstance(norm, nn.Module):
            return norm
    for name, module in text_encoder.named_modules():
        if name.endswith("final_layer_norm"):
            return module
    raise ValueError(f"clip_skip needs the text encoder's final layer norm, and {type(text_encoder).__name__} has none")


def _num_layers(text_encoder: nn.Module) -> int | None:
    return getattr(getattr(text_encoder, "config", None), "num_hidden_layers", None)


def check_clip_skip(clip_skip: Any, text_encoder: nn.Module | None) -> None:
    """``clip_skip`` must be a non-negative integer that leaves at least the embedding layer."""
    if clip_skip is None:
        return
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0:
        raise ValueError(f"clip_skip must be a non-negative integer (layers to skip) or None, got {clip_skip!r}")
    layers = _num_layers(text_encoder) if text_encoder is not None else None
    if layers is not None and clip_skip > layers:
        raise ValueError(
            f"clip_skip={clip_skip} is too large: the text encoder has only {layers} layers; use 0 to {layers} "
            "(layers skipped from the end) or None"
        )


def _tokenize(tokenizer: Any, texts: str | list[str], max_length: int) -> Any:
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")


def _attention_mask(text_encoder: nn.Module, tokens: Any, device: torch.device) -> torch.Tensor | None:
    if getattr(text_encoder.config, "use_attention_mask", False):
        return tokens.attention_mask.to(device)
    return None


PROMPT_PREVIEW_WORDS = 12  # words of a dropped prompt tail shown in the warning: enough to recognise it


def _warn_if_truncated(tokenizer: Any, prompt: str | list[str], input_ids: torch.Tensor) -> None:
    """One short warning per truncated prompt: how many tokens were dropped and how the dropped part starts
    (never the whole tail: a 10,000-word prompt would print a 60 KB line)."""
    tokens = tokenizer(prompt, padding="longest", return_tensors="pt", verbose=False)  # we say it below, shorter
    untruncated = tokens.input_ids
    if untruncated.shape[-1] < input_ids.shape[-1] or torch.equal(input_ids, untruncated):
        return
    limit = tokenizer.model_max_length
    mask = getattr(tokens, "attention_mask", None)
    for number, row in enumerate(untruncated):
        content = int(mask[number].sum()) if mask is not None else row.shape[-1]  # with start and end tokens
        dropped = max(0, content - limit)  # counts the start/end tokens as CLIP does
        if not dropped:
            continue
        words = tokenizer.decode(row[limit - 1 : limit - 1 + 4 * PROMPT_PREVIEW_WORDS], skip_special_tokens=True)
        start = " ".join(words.split()[:PROMPT_PREVIEW_WORDS])
        logger.warning(
            "the prompt is %d tokens long and CLIP reads at most %d, so %d tokens were dropped (from: %r...)",
            content, limit, dropped, start,
        )  # fmt: skip


def _encode_positive(
    tokenizer: Any, text_encoder: nn.Module, prompt: str | list[str], device: torch.device, clip_skip: int | None
) -> torch.Tensor:
    tokens = _tokenize(tokenizer, prompt, tokenizer.model_max_length)
    _warn_if_truncated(tokenizer, prompt, tokens.input_ids)
    input_ids = tokens.input_ids.to(device)
    mask = _attention_mask(text_encoder, tokens, device)
    if clip_skip is None:
        return text_encoder(input_ids, attention_mask=mask)[0]
    # hidden_states[0] is the embedding output, [i] the output of layer i; skipping k layers takes [-(k + 1)]
    # and, like the last hidden state, passes it through the final LayerNorm.
    output = text_encoder(input_ids, attention_mask=mask, output_hidden_states=True)
    return final_layer_norm(text_encoder)(output.hidden_states[-(clip_skip + 1)])


def _repeat_per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """(B, L, D) → (B·n, L, D) with each prompt's copies adjacent."""
    batch, seq_len, _ = embeds.shape
    return embeds.repeat(1, num_images_per_prompt, 1).view(batch * num_images_per_prompt, seq_len, -1)


def negative_texts(prompt: Any, negative_prompt: Any, batch_size: int) -> list[str]:
    """The unconditional texts for guidance, one per prompt; raises if ``negative_prompt`` does not fit ``prompt``."""
    if negative_prompt is None:
        return [""] * batch_size
    if prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(
            f"negative_prompt must be of the same type as prompt ({type(prompt).__name__}), "
            f"got {type(negative_prompt).__name__}"
        )
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    if len(negative_prompt) != batch_size:
        raise ValueError(
            f"negative_prompt has {len(negative_prompt)} entries but there are {batch_size} prompts; "
            "pass one negative prompt per prompt, or a single string"
        )
    return list(negative_prompt)


def encode_prompt(
    tokenizer: Any,
    text_encoder: nn.Module | None,
    prompt: str | list[str] | None,
    device: torch.device,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
    negative_prompt: str | list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    clip_skip: int | None = None,
    fallback_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode prompts into (prompt_embeds, negative_prompt_embeds), each repeated ``num_images_per_prompt`` times.

    Negative embeddings come from ``negative_prompt`` (or "" per prompt) only when guidance is on; as in the
    reference, ``clip_skip`` applies to the positive prompt only. Embeddings are cast to the text encoder's dtype
    (``fallback_dtype`` without one).
    """
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    if prompt_embeds is None:
        prompt_embeds = _encode_positive(tokenizer, text_encoder, prompt, device, clip_skip)
    dtype = text_encoder.dtype if text_encoder is not None else (fallback_dtype or prompt_embeds.dtype)
    prompt_embeds = _repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)

    if do_classifier_free_guidance and negative_prompt_embeds is None:
        texts = negative_texts(prompt, negative_prompt, batch_size)
        tokens = _tokenize(tokenizer, texts, prompt_embeds.shape[1])
        mask = _attention_mask(text_encoder, tokens, device)
        negative_prompt_embeds = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    if do_classifier_free_guidance:
        negative_prompt_embeds = _repeat_per_image(
            negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt
        )
    return prompt_embeds, negative_prompt_embeds
