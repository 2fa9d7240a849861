"""The gradio callbacks: turn the page's values into engine calls, and the engine's answers into updates.

Every user mistake arrives here as the command line's ``CliError`` and leaves as ``gr.Error`` with the same
sentence (HTML-escaped: gradio renders error text as HTML, and file names come from the browser). Anything
else is a bug and gradio shows a generic "Error" without a traceback (``show_error=False``).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image

from ..cli.errors import CliError
from ..cli.pngmeta import JSON_KEY, PARAMETERS_KEY, read_png_record
from .engine import Engine, GenerateRequest, Progress, RunStopped
from .sessions import Sessions
from .uploads import output_size

__all__ = ["Handlers"]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """``CliError`` → ``gr.Error`` with the same one sentence."""
    try:
        yield
    except CliError as error:
        raise gr.Error(html.escape(str(error)), print_exception=False) from None


class Handlers:
    """The page's callbacks, bound to one engine and the server's sessions."""

    def __init__(self, engine: Engine, sessions: Sessions) -> None:
        self.engine = engine
        self.sessions = sessions

    def generate(
        self,
        image: str | None,
        prompt: str,
        negative_prompt: str,
        strength: float,
        steps: int,
        guidance_scale: float,
        sampler: str | None,
        seed: int,
        num_images: int,
        clip_skip: int,
        size: int,
        depth_map: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way of asking for a progress bar)
    ) -> Iterator[tuple[list[tuple[str, str]], int, str]]:
        """Make images from an image and a prompt, keeping the image's depth.

        Parameters:
            image: the input photo (any size; resized so its longer side is `size`).
            prompt: what the new image should show.
            negative_prompt: what to keep out of it ("" for nothing).
            strength: how much to change the image, in (0, 1].
            steps: denoising steps for strength 1 (a run takes int(steps * strength)).
            guidance_scale: how strongly to follow the prompt (1 or less turns guidance off).
            sampler: a sampler name as `depth2img generate --sampler` takes it ("" for the model's own).
            seed: seed of the first image; image k uses seed + k (-1: random).
            num_images: how many images to make.
            clip_skip: as in A1111: 1 uses the text encoder's last layer, 2 the one before it.
            size: the longer side of the output in pixels (aspect kept, rounded down to a multiple of 8).
            depth_map: a depth map to use instead of estimating one (white = near), or None.
        Returns:
            the PNGs (each with its parameters embedded, as `depth2img generate` writes them), the first
            image's seed, and a one-line status.
        """
        session = self.sessions.get(request.session_hash)
        session.stop.clear()
        run = GenerateRequest(
            image=image or "", prompt=prompt or "", negative_prompt=negative_prompt or "", strength=strength,
            steps=_as_int(steps), guidance_scale=guidance_scale, sampler=sampler or None, seed=_as_int(seed),
            num_images=_as_int(num_images), clip_skip=_clip_skip(clip_skip), long_side=_as_int(size),
            depth_map=depth_map or None,
        )  # fmt: skip
        with user_errors():
            self.engine.check(run)
        made: list[tuple[str, str]] = []
        first_seed = seed

        def report(where: Progress) -> None:
            eta = where.eta_seconds()
            left = f" · about {eta:.0f} s left" if eta is not None else ""
            progress(
                (where.done, where.total),
                desc=f"image {where.image + 1}/{where.images} · step {where.done}/{where.total}{left}",
            )

        progress((0, 1), desc="starting")
        images = self.engine.generate(run, session.new_run_folder(), stop=session.stop, on_step=report)
        try:
            with user_errors():
                for path, image_seed in images:
                    if not made:
                        first_seed = image_seed
                    made.append((str(path), f"seed {image_seed}"))
                    yield list(made), first_seed, f"{len(made)} of {run.num_images} done"
        except RunStopped:
            yield list(made), first_seed, f"Stopped: kept {len(made)} of {run.num_images} images."
            return
        except torch.OutOfMemoryError:  # the CLI's advice, in the controls' words
            raise gr.Error(
                f"out of memory on {self.engine.pipe.device} after {len(made)} of {run.num_images} images; "
                "try a smaller size or fewer images",
                print_exception=False,
            ) from None
        yield (
            list(made),
            first_seed,
            f"Done: {len(made)} image{'s' if len(made) != 1 else ''}, first seed {first_seed}.",
        )

    def stop(self, request: gr.Request) -> str:
        """Stop this session's running generation after the current step; finished images are kept."""
        self.sessions.get(request.session_hash).stop.set()
        return "Stopping after this step…"

    def depth_preview(
        self, image: str | None, depth_map: str | None, size: int, request: gr.Request
    ) -> tuple[Any, str | None]:
        """The depth the next run will use, as a colour preview and a 16-bit PNG to download."""
        if not image:
            return None, None
        session = self.sessions.get(request.session_hash)
        with user_errors():
            out_size = output_size(self.engine.check_upload(image, "image"), _as_int(size))
            if depth_map:
                self.engine.check_upload(depth_map, "depth map")
            result = self.engine.depth_for(image, out_size, depth_map or None)
            preview = self.engine.depth_preview(result, out_size)
            name = f"depth-{result.key[0][:12]}-{out_size[0]}x{out_size[1]}.png"
            png16 = self.engine.write_depth_png16(result, out_size, session.folder / name)
        return preview, str(png16)

    def png_info(self, png: str | None) -> tuple[str, dict[str, Any] | None]:
        """The generation parameters stored in a PNG: A1111's text, and depth2img's record (None if absent)."""
        if not png:
            return "", None
        with user_errors():
            self.engine.check_upload(png, "PNG")
            path = Path(png)
            with Image.open(path) as opened:
                text = dict(getattr(opened, "text", {}) or {})
            if JSON_KEY not in text and PARAMETERS_KEY not in text:
                raise CliError(f"PNG: {path.name} holds no generation parameters")
            record = _renamed(read_png_record, path) if JSON_KEY in text else None
        return text.get(PARAMETERS_KEY, ""), record

    def send_to_generate(self, png: str | None) -> tuple[Any, ...]:
        """The Generate view's controls filled from a PNG's record, as ``generate --from-png`` reads it."""
        with user_errors():
            if not png:
                raise CliError("PNG: drop a PNG made by depth2img first")
            self.engine.check_upload(png, "PNG")
            record = _renamed(read_png_record, Path(png))
        size = record.get("size") or [record.get("width") or 0, record.get("height") or 0]
        long_side = max(record.get("width") or 0, record.get("height") or 0) or max(size)
        return (
            record.get("prompt", ""),
            record.get("negative_prompt") or "",
            record.get("strength"),
            record.get("steps"),
            record.get("guidance_scale"),
            record.get("scheduler") or "",
            record.get("seed"),
            1,  # a record is one image, with its own seed
            record.get("clip_skip") or 1,
            long_side,
            gr.Tabs(selected="generate-tab"),
        )

    def end_session(self, request: gr.Request) -> None:
        """The tab was closed: stop its run and delete its files."""
        self.sessions.end(request.session_hash)


def _renamed(read: Any, path: Path) -> Any:
    """The command line's PNG reader, its messages naming the file (not the server path) and the PNG Info view."""
    try:
        return read(path)
    except CliError as error:
        message = str(error).replace(str(path), path.name).replace("--from-png: ", "PNG: ", 1)
        raise CliError(message, error.exit_code) from None


def _as_int(value: Any) -> Any:
    """gradio Numbers and Sliders arrive as floats; whole numbers become ints, anything else stays for the checks."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _clip_skip(value: Any) -> int | None:
    """A1111's clip skip; 1 (the last layer) is what a run without it does, recorded as None like the CLI."""
    value = _as_int(value)
    return None if value in (None, 1) else value
