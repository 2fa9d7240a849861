"""The standard CLIP BPE vocabulary, shipped with the package so single-file loading works offline.

An original checkpoint (``512-depth-ema.ckpt``) holds no tokenizer: SD2 uses OpenAI's CLIP BPE (49408 tokens;
OpenCLIP reuses it unchanged). ``depth2img/data/clip-bpe/`` ships ``vocab.json`` and ``merges.txt`` gzip-compressed
(MIT licence, see the README there); the tokenizer settings come from the published SD2-depth tokenizer folder
(``configs/sd2-depth/tokenizer``), whose ``special_tokens_map.json`` pads with ``"!"``.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["clip_tokenizer", "write_clip_tokenizer_files"]

_VOCAB_FILES = ("vocab.json", "merges.txt")
_SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def write_clip_tokenizer_files(folder: str | Path, settings_folder: str | Path | None = None) -> Path:
    """Write a complete CLIP tokenizer folder (vocabulary, merges and the SD2 tokenizer settings) into ``folder``.

    ``settings_folder`` holds ``tokenizer_config.json`` / ``special_tokens_map.json``; by default the shipped
    SD2-depth ones. Returns ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = resources.files("depth2img") / "data" / "clip-bpe"
    for name in _VOCAB_FILES:
        with data.joinpath(name + ".gz").open("rb") as packed, gzip.open(packed) as unpacked:
            (folder / name).write_bytes(unpacked.read())
    settings = (
        Path(settings_folder)
        if settings_folder is not None
        else Path(str(resources.files("depth2img") / "configs" / "sd2-depth" / "tokenizer"))
    )
    for name in _SETTINGS_FILES:
        if (settings / name).is_file():
            shutil.copyfile(settings / name, folder / name)
    return folder


def clip_tokenizer(settings_folder: str | Path | None = None):
    """Build a transformers ``CLIPTokenizer`` from the shipped vocabulary, without network access.

    With the default settings it behaves like the tokenizer of the published SD2-depth checkpoint: 77 tokens,
    ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, padding with ``"!"`` (id 0).
    """
    from transformers import CLIPTokenizer

    # Going through a folder (rather than passing vocab/merges objects) works with every transformers release
    # we support and applies tokenizer_config.json / special_tokens_map.json exactly as the hub folder does.
    with tempfile.TemporaryDirectory(prefix="depth2img-clip-") as tmp:
        write_clip_tokenizer_files(tmp, settings_folder)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
