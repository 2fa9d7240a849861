"""How the command fails: one clear line on stderr and an exit status, never a traceback for a user mistake."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "CliArgumentParser",
    "CliError",
    "warn",
]

EXIT_FAILURE = 1  # the run itself failed: a model that cannot be loaded, a file that cannot be written
EXIT_USAGE = 2  # invalid arguments or input files, found before any model is loaded (argparse uses 2 too)
EXIT_SOME_FAILED = 3  # batch: the run finished, but some jobs failed (they are in OUTDIR/batch.jsonl)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)


class CliError(Exception):
    """A failure the user can act on: ``message`` is printed as ``depth2img: error: <message>``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
