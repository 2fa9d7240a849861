"""Shared by the web tests: a tiny random model, and the app launched on a free localhost port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ROOM = ROOT / "examples" / "room.jpg"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load_tiny_engine(folder: Path, **options):
    """The tiny random model written to ``folder`` and loaded as ``depth2img serve`` loads it (CPU, float32)."""
    from depth2img.loading.random_model import write_random_pipeline
    from depth2img.web.options import ServeOptions
    from depth2img.web.server import load_engine

    write_random_pipeline(folder, "tiny")
    return load_engine(ServeOptions(model=str(folder), device="cpu", dtype="float32", **options))


@contextlib.contextmanager
def running(engine, **options) -> Iterator[object]:
    """The app over ``engine`` on a free port, with ``options`` replacing the engine's; closed afterwards."""
    from depth2img.web.server import start

    server_options = replace(engine.options, port=free_port(), **options)
    engine.options = server_options  # the limits the handlers check are the server's
    server = start(engine, server_options)
    try:
        yield server
    finally:
        server.close()


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
