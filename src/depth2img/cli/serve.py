"""``depth2img serve``: the browser UI (a gradio app, installed with ``pip install "depth2img[web]"``)."""

from __future__ import annotations

import argparse
from typing import Any

from . import argtypes
from .component_options import COMPONENT_DEFAULTS, add_component_arguments
from .errors import CliError
from .precision import add_precision_arguments
from .settings import DEFAULT_MODEL

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``serve`` and its flags."""
    from ..web.options import DEFAULT_HOST, DEFAULT_MAX_PIXELS, DEFAULT_PORT, DEFAULT_QUEUE_SIZE

    parser = subparsers.add_parser(
        "serve",
        parents=parents,
        help="the browser UI: generate, depth preview, PNG info (needs depth2img[web])",
        description="Serve a web app for depth-guided image generation. The model loads once, at start.",
        epilog="Example: depth2img serve -m tiny-model/ --port 7860   (then open the printed URL)",
    )
    parser.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub repo id, model folder or checkpoint file (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 opens it to the network)",
    )
    parser.add_argument(
        "--port", type=argtypes.int_at_least(1), default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})"
    )
    parser.add_argument("--auth", type=_auth, metavar="USER:PASS", help="require this user name and password")
    parser.add_argument(
        "--outdir", metavar="DIR", help="also keep every generated PNG in this folder (numbered like generate -o DIR/)"
    )
    parser.add_argument(
        "--max-pixels",
        type=argtypes.int_at_least(64),
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"largest upload in pixels, read from its header before decoding (default: {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--queue-size",
        type=argtypes.int_at_least(1),
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help=f"requests that may wait for the model; more are refused (default: {DEFAULT_QUEUE_SIZE})",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    add_precision_arguments(parser)  # --precision (and its deprecated alias --dtype), as for generate
    parser.add_argument("--offline", action="store_true", help="never download; use the local cache or folders")
    add_component_arguments(parser, vae=True)  # --vae, --depth-model, --depth-invert, --depth-normalize
    parser.set_defaults(run=run)


def _auth(text: str) -> tuple[str, str]:
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise argparse.ArgumentTypeError(f"expected USER:PASS with both parts non-empty, got {text!r}")
    return user, password


def run(args: argparse.Namespace) -> int:
    """Check the options, then load the model and serve until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CliError('serve needs the web extra: pip install "depth2img[web]"') from None
    from ..web.options import ServeOptions
    from ..web.server import serve
    from .outputs import ensure_writable_folder

    if args.outdir:
        from pathlib import Path

        ensure_writable_folder(Path(args.outdir).expanduser(), "--outdir")
    options = ServeOptions(
        model=args.model,
        host=args.host,
        port=args.port,
        auth=args.auth,
        outdir=args.outdir,
        max_pixels=args.max_pixels,
        queue_size=args.queue_size,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
        offline=args.offline,
        **{name: getattr(args, name) or default for name, default in COMPONENT_DEFAULTS.items()},
    )
    return serve(options)
