"""The ``depth2img`` command: ``generate``, ``batch``, ``depth``, ``serve``, ``random-model`` and ``info``.

Each subcommand lives in its own module, named after it (``random-model``: ``random_model.py``), with
``add_parser(subparsers, parents)`` and ``run(args) -> int``.
Modules import torch and the models only inside ``run``, so ``--help`` and argument errors are instant.
``main`` turns every failure into one line on stderr, ``depth2img: error: ...``, and an exit status
(2 bad arguments or input files, 1 a failed run, 3 a batch with failed jobs, 130 interrupted; see
docs/errors.md); ``--debug`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import Depth2ImgError, exit_status, one_line
from . import batch, depth, generate, info, random_model, serve
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, CliArgumentParser, CliError

__all__ = ["build_parser", "main"]

SUBCOMMANDS = (generate, batch, depth, serve, random_model, info)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (top level plus every subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    parser = CliArgumentParser(
        prog="depth2img",
        parents=[common],
        description="Text-guided, depth-preserving image-to-image generation with Stable Diffusion 2 depth.",
        epilog="Run 'depth2img COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"depth2img {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliArgumentParser)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # known before parsing, so even argument errors can show where they came from
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # reported here so the hint names the subcommand whose --help lists the valid flags
            where = f"depth2img {args.command}" if args.command else "depth2img"
            raise CliError(f"unrecognized arguments: {' '.join(unknown)} (see: {where} --help)")
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return 2
        return int(args.run(args) or 0)
    except SystemExit as exit_request:  # --help and --version
        return exit_request.code if isinstance(exit_request.code, int) else 0
    except Depth2ImgError as error:  # CliError and the library's errors (depth2img.errors): exit 2 = user mistake
        _report(str(error), debug)
        return exit_status(error)
    except KeyboardInterrupt:
        _report("interrupted", debug)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug or an environment problem: still one line, unless --debug
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _report(f"{type(error).__name__}: {reason}" + ("" if debug else " (run with --debug for the traceback)"), debug)
        return EXIT_FAILURE


def _report(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"depth2img: error: {one_line(message, limit=2000)}", file=sys.stderr)
