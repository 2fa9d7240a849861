"""``depth2img serve``: load the model once, build the page, queue it, listen (localhost unless told otherwise).

The queue is gradio's: ``default_concurrency_limit=1`` and one shared ``concurrency_id`` make generation and
depth estimation take turns on the one model; ``max_size`` bounds how many requests may wait (the next one is
refused with gradio's "Queue is full" message). Uploads above the byte limit are refused by gradio before they
reach the disk; every other check is the command line's (see ``uploads``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Any

from .options import ServeOptions

__all__ = ["RunningServer", "load_engine", "serve", "start"]


@dataclass
class RunningServer:
    """A launched app: its URL, and ``close()`` to stop it and delete the sessions' files."""

    app: Any
    url: str
    sessions: Any

    def close(self) -> None:
        self.app.close()
        self.sessions.close()


def load_engine(options: ServeOptions) -> Any:
    """Check ``--model`` and the component flags, load the pipeline once on the chosen device, and wrap it in an
    ``Engine``."""
    from ..cli.component_options import apply_component_options, component_choice, load_components
    from ..cli.devices import resolve_device
    from ..cli.pipeline_setup import check_model
    from ..cli.precision import load_pipeline_in, loading_dtype, resolve_precision
    from .engine import Engine

    choice = component_choice(options)  # the flags checked before anything loads
    source = check_model(options.model, options.offline)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, options.dtype, device)
    components = load_components(choice, dtype=loading_dtype(precision), offline=options.offline)
    pipe = load_pipeline_in(source, precision, offline=options.offline, quiet=True, components=components)
    apply_component_options(pipe, choice)
    pipe = pipe.to(device)
    # recorded in the PNGs as resolved (an absolute folder, "taesd"), as generate records them
    options = dataclasses.replace(options, depth_model=choice.depth_model, vae=choice.vae)
    label = source.location if source.kind != "repo" else options.model  # what `generate` records as the model
    return Engine(pipe, options, label, precision)


def start(engine: Any, options: ServeOptions, *, quiet: bool = True) -> RunningServer:
    """Build, queue and launch the app without blocking; returns where it listens."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    import gradio as gr

    from .layout import CSS, build_app
    from .sessions import Sessions

    sessions = Sessions()
    app = build_app(engine, sessions)
    app.queue(max_size=options.queue_size, default_concurrency_limit=1)
    app.launch(
        server_name=options.host,
        server_port=options.port,
        auth=options.auth,
        max_file_size=options.max_upload_bytes,
        prevent_thread_lock=True,
        show_error=False,  # only gr.Error sentences reach the page; a bug shows "Error", never a traceback
        quiet=quiet,
        ssr_mode=False,
        theme=gr.themes.Soft(primary_hue="indigo"),
        css=CSS,
    )
    return RunningServer(app, app.local_url, sessions)


def serve(options: ServeOptions) -> int:
    """Load, launch, print the URL, and serve until Ctrl-C."""
    engine = load_engine(options)
    server = start(engine, options)
    print(f"depth2img: serving {engine.model_label} at {server.url}", file=sys.stderr)
    print(server.url, flush=True)  # stdout: the address alone, for scripts
    try:
        server.app.block_thread()
    finally:
        server.close()
    return 0
