"""depth2img's error classes: one hierarchy for the library, the command line, the web app and batch jobs.

Every error a user can cause derives from :class:`UserError`; front ends map it to "your input was wrong"
(exit status 2 on the command line) in ONE place, and everything else to "the run failed". The classes also
derive from the built-in type a Python caller would expect (``ValueError``, ``TypeError``,
``FileNotFoundError``, ``OSError``), so ``except ValueError`` keeps working. See docs/errors.md for the contract:
a message is one sentence that names the argument or file, the value, and what is allowed.

This module is a leaf: it imports nothing from depth2img, so every layer may raise these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "Depth2ImgError",
    "InputFileError",
    "MissingFileError",
    "ModelUnavailableError",
    "OutputWriteError",
    "UnsafeFileError",
    "UserError",
    "UserInputError",
    "UserTypeError",
    "as_user_errors",
    "exit_status",
    "one_line",
]

EXIT_FAILURE = 1  # the run failed: a model that cannot be loaded or downloaded, a full disk, a bug
EXIT_USAGE = 2  # the user's arguments or input files are wrong; found before any model is loaded
EXIT_SOME_FAILED = 3  # batch: the run finished, but some jobs failed (they are in OUTDIR/batch.jsonl)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)


class Depth2ImgError(Exception):
    """Base of every error depth2img raises on purpose; ``exit_status`` is what the command line exits with."""

    exit_status = EXIT_FAILURE


class UserError(Depth2ImgError):
    """The user's input is wrong (an argument, a file); fixing the input fixes the run. Exit status 2."""

    exit_status = EXIT_USAGE


class UserInputError(UserError, ValueError):
    """An argument has a value that is not allowed (out of range, NaN, wrong shape)."""


class UserTypeError(UserInputError, TypeError):
    """An argument has the wrong type (a string where a number is needed)."""


class InputFileError(UserInputError):
    """An input file cannot be used: truncated, not the format it claims, too large, or not fitting the model."""


class UnsafeFileError(InputFileError):
    """A file was refused because reading it could run code (a pickle naming a non-tensor global)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ModelUnavailableError(Depth2ImgError, FileNotFoundError):
    """Model files could not be found or downloaded (offline, network, unknown repo). Exit status 1."""


class OutputWriteError(Depth2ImgError, OSError):
    """An output could not be written (full disk, no permission). Exit status 1; nothing half-written is left."""


def exit_status(error: BaseException) -> int:
    """The command-line exit status for ``error``: its class's, 2 for a user error, else 1."""
    return getattr(error, "exit_status", EXIT_FAILURE)


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (newlines become spaces), cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


F = TypeVar("F", bound=Callable[..., Any])


def as_user_errors(function: F) -> F:
    """Re-raise the plain ``ValueError``/``TypeError`` of an argument-checking ``function`` as
    :class:`UserInputError`/:class:`UserTypeError` with the same message, so a check written with built-in
    exceptions is recognised as the user's mistake by every front end (and still satisfies ``except ValueError``).
    """

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Depth2ImgError:
            raise
        except TypeError as error:
            raise UserTypeError(str(error)) from error
        except ValueError as error:
            raise UserInputError(str(error)) from error

    return checked  # type: ignore[return-value]
