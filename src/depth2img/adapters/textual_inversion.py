"""Textual inversion: new words whose embeddings were learned, added to the tokenizer and the text encoder.

File formats read:

- **diffusers**: ``{token: tensor}`` (``learned_embeds.safetensors`` / ``learned_embeds.bin``); the tensor is one
  vector ``(dim,)`` or several ``(n, dim)``.
- **A1111**: a ``.pt`` with ``{"string_to_param": {"*": (n, dim)}, "name": ...}``, or a ``.safetensors`` with
  ``{"emb_params": (n, dim)}`` (named after its file, as A1111 does, unless ``token`` is given).
- a bare tensor, with ``token`` given.

A multi-vector embedding (n > 1) becomes the tokens ``tok``, ``tok_1`` ... ``tok_{n-1}``, and prompts mentioning
``tok`` are rewritten to ``tok tok_1 ... tok_{n-1}`` before tokenizing (``maybe_convert_prompt``), as in
diffusers. Pickled files are read with ``torch.load(weights_only=True)``: nothing but tensors and plain
containers is unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import resolve_adapter_file

__all__ = [
    "embedding_matrix",
    "read_embedding_file",
    "TEXT_INVERSION_NAME",
    "TEXT_INVERSION_NAME_SAFE",
    "TextualInversionLoaderMixin",
    "expand_multi_vector_tokens",
    "load_textual_inversion",
    "unload_textual_inversion",
]

TEXT_INVERSION_NAME = "learned_embeds.bin"
TEXT_INVERSION_NAME_SAFE = "learned_embeds.safetensors"

Source = str | os.PathLike | Mapping[str, Any] | torch.Tensor


def load_textual_inversion(
    sources: Source | Sequence[Source],
    token: str | Sequence[str | None] | None = None,
    *,
    tokenizer: Any,
    text_encoder: nn.Module,
    weight_name: str | None = None,
    hub_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Add the embeddings of ``sources`` (files, folders, Hub repo ids, state dicts or tensors) as new tokens.

    ``token`` names the token of each source (default: the name stored in the file); a list goes with a list
    of sources, or splits one ``(n, dim)`` tensor into n single-vector tokens. Returns the tokens added (with the
    ``_1``... tokens of multi-vector embeddings). Everything is checked before the tokenizer or the text encoder
    changes. ``hub_options`` (``local_files_only``, ``revision``, ``cache_dir``, ``token``, ``subfolder``) apply to
    Hub repo ids.
    """
    sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    tokens = list(token) if isinstance(token, (list, tuple)) else [token] * len(sources)
    if len(sources) == 1 and len(tokens) > 1 and isinstance(sources[0], torch.Tensor):
        if sources[0].ndim != 2 or sources[0].shape[0] != len(tokens):
            raise ValueError(
                f"token lists {len(tokens)} tokens but the tensor holds {_count(sources[0])} embeddings; give one "
                "token per embedding"
            )
        sources = list(sources[0])
    if len(tokens) != len(sources):
        raise ValueError(
            f"token lists {len(tokens)} tokens for {len(sources)} embeddings; give one token per embedding"
        )
    named = [token for token in tokens if token is not None]
    if len(set(named)) != len(named):
        raise ValueError(f"token contains duplicates: {named}")

    vocab = tokenizer.get_vocab()
    width = text_encoder.get_input_embeddings().weight.shape[-1]
    new_tokens: list[str] = []
    vectors: list[torch.Tensor] = []
    for source, chosen in zip(sources, tokens):
        stored_token, embedding = _read_embedding(source, weight_name, hub_options or {})
        name = chosen or stored_token
        if not name:
            raise ValueError("this embedding is a bare tensor with no token name; pass token='<name>'")
        matrix = embedding_matrix(name, embedding, width)
        for expanded in _vector_token_names(name, matrix.shape[0]):
            if expanded in vocab:
                raise ValueError(
                    f"token {expanded!r} is already in the tokenizer's vocabulary; choose another token= or "
                    "unload_textual_inversion() first"
                )
            if expanded in new_tokens:
                raise ValueError(f"token {expanded!r} would be added twice")
            new_tokens.append(expanded)
        vectors.extend(matrix)

    tokenizer.add_tokens(new_tokens)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in new_tokens]
    _set_embedding_rows(text_encoder, ids, torch.stack(vectors))
    return new_tokens


def unload_textual_inversion(
    tokens: str | Sequence[str] | None = None, *, tokenizer: Any, text_encoder: nn.Module
) -> list[str]:
    """Remove added tokens (all non-special added tokens by default; a multi-vector token takes its ``_i`` with it).

    The remaining added tokens are renumbered and the embedding matrix shrunk to match. Returns the removed tokens.
    """
    added = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    if tokens is None:
        removed = dict(added)
    else:
        wanted = [tokens] if isinstance(tokens, str) else list(tokens)
        encoder = {content: i for i, content in added.items()}
        missing = [w for w in wanted if w not in encoder]
        if missing:
            raise ValueError(f"token(s) {missing} were not added to this tokenizer; added: {sorted(encoder)}")
        removed = {encoder[t]: t for w in wanted for t in _vector_tokens_present(w, encoder)}
    if not removed:
        return []
    _remove_added_tokens(tokenizer, set(removed))
    embeddings = text_encoder.get_input_embeddings()
    keep = torch.ones(embeddings.weight.shape[0], dtype=torch.bool)
    keep[[i for i in removed if i < keep.numel()]] = False
    _replace_embeddings(text_encoder, embeddings, embeddings.weight.detach()[keep.to(embeddings.weight.device)])
    return [removed[i] for i in sorted(removed)]


def expand_multi_vector_tokens(prompt: str | list[str], tokenizer: Any) -> str | list[str]:
    """Rewrite each multi-vector token ``tok`` in the prompt(s) as ``tok tok_1 ... tok_{n-1}``."""
    if isinstance(prompt, list):
        return [_expand_one(p, tokenizer) for p in prompt]
    return _expand_one(prompt, tokenizer)


def _expand_one(prompt: str, tokenizer: Any) -> str:
    added = tokenizer.added_tokens_encoder
    if not any(f"{token}_1" in added for token in added):
        return prompt  # no multi-vector token loaded: nothing to expand, no need to tokenize (a long prompt warns)
    for token in dict.fromkeys(tokenizer.tokenize(prompt)):
        if token in added and f"{token}_1" in added:
            prompt = prompt.replace(token, " ".join(_vector_tokens_present(token, added)))
    return prompt


def _vector_token_names(token: str, count: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def _vector_tokens_present(token: str, added: Mapping[str, int]) -> list[str]:
    names = [token]
    while f"{token}_{len(names)}" in added:
        names.append(f"{token}_{len(names)}")
    return names


def _count(tensor: torch.Tensor) -> int:
    return 1 if tensor.ndim == 1 else tensor.shape[0]


def embedding_matrix(name: str, embedding: torch.Tensor, width: int) -> torch.Tensor:
    """``embedding`` as an (n, width) matrix, or ``ValueError`` when it is not (dim,) / (n, dim) of the text
    encoder's ``width`` (``hidden_size``), or not finite floats."""
    matrix = embedding.reshape(1, -1) if embedding.ndim == 1 else embedding
    if matrix.ndim != 2 or matrix.numel() == 0:
        raise ValueError(f"the embedding for {name!r} has shape {tuple(embedding.shape)}; expected (dim,) or (n, dim)")
    if matrix.shape[1] != width:
        raise ValueError(
            f"the embedding for {name!r} has width {matrix.shape[1]} but this text encoder's is {width} (is it "
            "for another base model, e.g. SD 1.x with 768?)"
        )
    if not matrix.is_floating_point() or not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"the embedding for {name!r} must hold finite floating-point numbers")
    return matrix


# ---------------------------------------------------------------------------------------------------------------
# Reading embeddings


def read_embedding_file(path: str | os.PathLike) -> tuple[str | None, torch.Tensor]:
    """``(token stored in the file or None, embedding tensor)`` of an embedding file, or one clear error."""
    return _read_embedding(Path(path), None, {})


def _read_embedding(
    source: Source, weight_name: str | None, hub_kwargs: Mapping[str, Any]
) -> tuple[str | None, torch.Tensor]:
    """``(token stored in the source or None, embedding tensor)``."""
    if isinstance(source, torch.Tensor):
        return None, source
    file_stem = None
    if not isinstance(source, Mapping):
        path = resolve_adapter_file(
            source, weight_name, (TEXT_INVERSION_NAME_SAFE, TEXT_INVERSION_NAME), "textual inversion", **hub_kwargs
        )
        file_stem = path.stem
        source = _read_file(path)
    return _embedding_from_dict(source, file_stem)


def _read_file(path: Path) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        from ..loading.weights import read_state_dict

        return read_state_dict(path)  # a damaged file raises InvalidWeightsError, naming it
    from ..loading.torch_files import safe_torch_load

    loaded = safe_torch_load(path, "textual-inversion embedding")
    if isinstance(loaded, torch.Tensor):
        return {"": loaded}
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not an embedding dict or tensor")
    return loaded


def _embedding_from_dict(data: Mapping[str, Any], file_stem: str | None) -> tuple[str | None, torch.Tensor]:
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or "*" not in params:
            raise ValueError("A1111 embedding without string_to_param['*']")
        name = data.get("name")
        return (name if isinstance(name, str) and name else file_stem), params["*"]
    if "emb_params" in data:  # A1111 .safetensors
        return file_stem, data["emb_params"]
    if "clip_l" in data or "clip_g" in data:
        raise ValueError("this is an SDXL embedding (clip_l / clip_g); SD2-depth's text encoder cannot use it")
    if len(data) == 1:  # diffusers: {token: tensor}
        ((token, tensor),) = data.items()
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"the embedding for {token!r} is a {type(tensor).__name__}, not a tensor")
        return (token or None), tensor
    raise ValueError(
        f"unrecognised textual inversion file with keys {sorted(map(str, data))[:8]}: expected {{token: tensor}} "
        "(diffusers) or string_to_param / emb_params (A1111)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Changing the text encoder's embedding matrix and the tokenizer


def _set_embedding_rows(text_encoder: nn.Module, ids: list[int], vectors: torch.Tensor) -> None:
    embeddings = text_encoder.get_input_embeddings()
    old = embeddings.weight.detach()
    rows = max(old.shape[0], max(ids) + 1)
    weight = torch.zeros(rows, old.shape[1], dtype=old.dtype, device=old.device)
    weight[: old.shape[0]] = old
    weight[ids] = vectors.to(device=old.device, dtype=old.dtype)
    _replace_embeddings(text_encoder, embeddings, weight)


def _replace_embeddings(text_encoder: nn.Module, old: nn.Embedding, weight: torch.Tensor) -> None:
    new = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=old.padding_idx, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    text_encoder.set_input_embeddings(new)
    if getattr(text_encoder, "config", None) is not None and hasattr(text_encoder.config, "vocab_size"):
        text_encoder.config.vocab_size = weight.shape[0]


def _remove_added_tokens(tokenizer: Any, removed_ids: set[int]) -> None:
    """Drop added tokens by id and renumber the later ones, in a fast (tokenizers) or slow tokenizer."""

    def new_id(old: int) -> int:
        return old - sum(1 for r in removed_ids if r < old)

    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):  # transformers' fast tokenizers (all of them in v5)
        from tokenizers import Tokenizer

        data = json.loads(backend.to_str())
        data["added_tokens"] = [
            {**entry, "id": new_id(entry["id"])}
            for entry in data.get("added_tokens", [])
            if entry["id"] not in removed_ids
        ]
        tokenizer._tokenizer = Tokenizer.from_str(json.dumps(data))
        if hasattr(tokenizer, "_wrap_decode_method_backend_tokenizer"):  # CLIP's decode fix-up lives on the backend
            tokenizer._wrap_decode_method_backend_tokenizer()
        return
    # Slow (Python) tokenizers of transformers 4.x keep the added tokens in two dicts and a trie.
    decoder = {new_id(i): t for i, t in tokenizer._added_tokens_decoder.items() if i not in removed_ids}
    tokenizer._added_tokens_decoder = decoder
    tokenizer._added_tokens_encoder = {t.content: i for i, t in decoder.items()}
    for refresh in ("_update_trie", "_update_total_vocab_size"):
        if hasattr(tokenizer, refresh):
            getattr(tokenizer, refresh)()


class TextualInversionLoaderMixin:
    """Textual inversion for the ``tokenizer`` and ``text_encoder`` of the class that inherits this."""

    def load_textual_inversion(
        self,
        pretrained_model_name_or_path: Source | Sequence[Source],
        token: str | Sequence[str | None] | None = None,
        tokenizer: Any = None,
        text_encoder: nn.Module | None = None,
        weight_name: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Load textual inversion embeddings (diffusers or A1111 format; one or a list) as new prompt tokens.

        Args:
            pretrained_model_name_or_path: a file, folder or Hub repo id (``learned_embeds.safetensors`` /
                ``.bin`` unless ``weight_name`` says otherwise), a state dict, a tensor, or a list of them.
            token: the token to use (default: the name in the file); a list for a list of sources.
            tokenizer, text_encoder: default ``self.tokenizer`` / ``self.text_encoder``.
            kwargs: Hub options ``local_files_only``, ``revision``, ``cache_dir``, ``token``... see
                ``load_lora_weights``; the Hub token is ``hf_token`` here since ``token`` names the word.

        Returns the tokens added. Use the token in prompts; multi-vector tokens expand automatically.
        """
        hub_kwargs = _hub_kwargs(kwargs)
        tokenizer, text_encoder = self._ti_components(tokenizer, text_encoder)
        return load_textual_inversion(
            pretrained_model_name_or_path,
            token,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            weight_name=weight_name,
            hub_options=hub_kwargs,
        )

    def unload_textual_inversion(
        self, tokens: str | Sequence[str] | None = None, tokenizer: Any = None, text_encoder: nn.Module | None = None
    ) -> list[str]:
        """Remove textual inversion tokens (all by default) from the tokenizer and text encoder."""
        tokenizer, text_encoder = self._ti_components(tokenizer, text_encoder)
        return unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=text_encoder)

    def maybe_convert_prompt(self, prompt: str | list[str], tokenizer: Any = None) -> str | list[str]:
        """The prompt(s) with every multi-vector token ``tok`` spelled out as ``tok tok_1 ...``."""
        return expand_multi_vector_tokens(prompt, tokenizer or self.tokenizer)

    def _ti_components(self, tokenizer: Any, text_encoder: nn.Module | None) -> tuple[Any, nn.Module]:
        tokenizer = tokenizer if tokenizer is not None else getattr(self, "tokenizer", None)
        text_encoder = text_encoder if text_encoder is not None else getattr(self, "text_encoder", None)
        if tokenizer is None or text_encoder is None:
            raise ValueError(
                "textual inversion needs a tokenizer and a text_encoder (pass them or set them on the pipeline)"
            )
        return tokenizer, text_encoder


def _hub_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"local_files_only", "revision", "cache_dir", "subfolder", "hf_token"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"load_textual_inversion() got unexpected arguments {unknown}; allowed: {sorted(allowed)}")
    hub = {k: v for k, v in kwargs.items() if k != "hf_token"}
    if "hf_token" in kwargs:
        hub["token"] = kwargs["hf_token"]
    return hub
