"""How the command fails: one clear line on stderr and an exit status, never a traceback for a user mistake."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_SOME_FAILED, EXIT_USAGE, Depth2ImgError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "CliArgumentParser",
    "CliError",
    "route_library_warnings",
    "warn",
]


class CliError(Depth2ImgError):
    """A failure the user can act on: ``message`` is printed as ``depth2img: error: <message>``.

    A command-line-only error (a flag combination, a missing prompt); the library's own errors
    (``depth2img.errors``) are reported by ``main`` the same way, with their class's exit status.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return self.exit_code


class CliArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become :class:`CliError` (one line) instead of usage + exit.

    ``main()`` prints every error the same way, so a bad flag and a missing file read alike.
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f" (see: depth2img {command} --help)" if command else " (see: depth2img --help)"
        raise CliError(message + hint, EXIT_USAGE)


def warn(message: str) -> None:
    """Print ``depth2img: warning: <message>`` on stderr (the run goes on)."""
    print(f"depth2img: warning: {message}", file=sys.stderr)


def route_library_warnings() -> None:
    """Print the library's logged warnings (a truncated prompt) as ``depth2img: warning: ...`` lines too."""
    import logging

    class StderrHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warn(record.getMessage())  # sys.stderr as it is now (tests and callers may have replaced it)

    logger = logging.getLogger("depth2img")
    if not any(type(handler).__name__ == "StderrHandler" for handler in logger.handlers):
        handler = StderrHandler(logging.WARNING)
        logger.addHandler(handler)
