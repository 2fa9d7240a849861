"""The page: a Generate view and a PNG Info view, wired to the handlers.

Element ids are stable, for tests and for users' own scripts: ``prompt``, ``negative-prompt``,
``input-image``, ``depth-preview``, ``generate``, ``stop``, ``gallery``, ``seed``, ``strength``, ``steps``,
``sampler`` (and ``depth-map``, ``depth-download``, ``size``, ``guidance``, ``num-images``, ``clip-skip``,
``status``, ``png-info-image``, ``png-info-parameters``, ``send-to-generate``).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..cli.settings import GENERATION_DEFAULTS
from ..schedulers.registry import scheduler_names
from .components import UploadedImage
from .engine import Engine
from .handlers import Handlers
from .options import DEFAULT_OUTPUT_SIDE, MAX_IMAGES_PER_RUN, MAX_OUTPUT_SIDE, MAX_STEPS
from .sessions import Sessions

__all__ = ["CSS", "build_app"]

MODEL_QUEUE = "model"  # generation and depth estimation share the one loaded model: one job at a time

CSS = """
#generate { min-height: 3em; }
#status { min-height: 1.5em; }
.seed-buttons { gap: 4px; justify-content: center; }
footer { display: none !important; }
"""


def build_app(engine: Engine, sessions: Sessions) -> gr.Blocks:
    """The gradio Blocks app (not yet queued or launched)."""
    handlers = Handlers(engine, sessions)
    samplers = [("model's own", "")] + [(name, name) for name in scheduler_names()]
    # gradio keeps every result it served in its cache: files older than a day go, checked hourly
    with gr.Blocks(title="depth2img", delete_cache=(3600, 86400)) as app:
        gr.Markdown(
            f"## depth2img\nNew images from a photo and a prompt, keeping the photo's depth · model "
            f"`{Path(engine.model_label).name}`"  # a folder's name, not the server's path to it
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate-tab"), gr.Row():
                with gr.Column(scale=5):
                    with gr.Row():
                        image = UploadedImage(
                            label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                            elem_id="input-image", height=300,
                        )  # fmt: skip
                        depth_preview = gr.Image(
                            label="Depth (yellow = near)", interactive=False, elem_id="depth-preview", height=300,
                            format="png",
                        )  # fmt: skip
                    prompt = gr.Textbox(
                        label="Prompt", lines=2, elem_id="prompt", placeholder="a cosy log cabin interior in winter"
                    )
                    negative_prompt = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                        stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
                    with gr.Accordion("Settings", open=True):
                        with gr.Row():
                            strength = gr.Slider(
                                0.01,
                                1.0,
                                value=GENERATION_DEFAULTS["strength"],
                                step=0.01,
                                label="Strength",
                                elem_id="strength",
                            )
                            steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps", elem_id="steps")
                        with gr.Row():
                            guidance = gr.Slider(
                                0.0,
                                30.0,
                                value=GENERATION_DEFAULTS["guidance_scale"],
                                step=0.5,
                                label="Guidance (CFG)",
                                elem_id="guidance",
                            )
                            sampler = gr.Dropdown(
                                samplers, value="", label="Sampler", elem_id="sampler", allow_custom_value=True
                            )
                        with gr.Row():
                            seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed", scale=4)
                            with gr.Column(scale=1, min_width=100, elem_classes="seed-buttons"):
                                random_seed = gr.Button("Random", elem_id="random-seed", size="sm")
                                reuse_seed = gr.Button("Reuse last", elem_id="reuse-seed", size="sm")
                        with gr.Row():
                            num_images = gr.Slider(
                                1, MAX_IMAGES_PER_RUN, value=1, step=1, label="Images", elem_id="num-images"
                            )
                            clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id="clip-skip")
                            size = gr.Slider(
                                64,
                                MAX_OUTPUT_SIDE,
                                value=DEFAULT_OUTPUT_SIDE,
                                step=8,
                                label="Size (long side)",
                                elem_id="size",
                            )
                    with gr.Accordion("Depth map", open=False):
                        depth_map = UploadedImage(
                            label="Use this depth map instead (white = near)", type="filepath", image_mode=None,
                            sources=["upload"], elem_id="depth-map", height=200,
                        )  # fmt: skip
                        depth_download = gr.File(
                            label="Depth as 16-bit PNG", elem_id="depth-download", interactive=False
                        )
                with gr.Column(scale=4):
                    gallery = gr.Gallery(
                        label="Results", elem_id="gallery", format="png", columns=2, height=520, type="filepath"
                    )
                    status = gr.Markdown(label="status", elem_id="status")
                    last_seed = gr.State(-1)
            with gr.Tab("PNG Info", id="png-info-tab"), gr.Row():
                with gr.Column():
                    png = UploadedImage(
                        label="PNG",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="png-info-image",
                        height=360,
                    )
                    send = gr.Button("Send to Generate", variant="primary", elem_id="send-to-generate")
                with gr.Column():
                    parameters = gr.Textbox(
                        label="parameters", lines=6, elem_id="png-info-parameters", buttons=["copy"]
                    )
                    record = gr.JSON(label="depth2img record", elem_id="png-info-record")

        controls = [
            image,
            prompt,
            negative_prompt,
            strength,
            steps,
            guidance,
            sampler,
            seed,
            num_images,
            clip_skip,
            size,
            depth_map,
        ]
        run = generate.click(
            handlers.generate, controls, [gallery, last_seed, status], api_name="generate",
            concurrency_id=MODEL_QUEUE, concurrency_limit=1, show_progress_on=[gallery],
        )  # fmt: skip
        prompt.submit(
            handlers.generate, controls, [gallery, last_seed, status], api_visibility="private",
            concurrency_id=MODEL_QUEUE, concurrency_limit=1, show_progress_on=[gallery],
        )  # fmt: skip
        del run
        stop.click(handlers.stop, None, [status], api_name="stop", queue=False)
        random_seed.click(lambda: -1, None, [seed], api_visibility="private", queue=False)
        reuse_seed.click(lambda last: last, [last_seed], [seed], api_visibility="private", queue=False)
        for trigger in (image.change, depth_map.change, size.release):
            trigger(
                handlers.depth_preview, [image, depth_map, size], [depth_preview, depth_download],
                api_name="depth_preview" if trigger == image.change else None,
                api_visibility="public" if trigger == image.change else "private",
                concurrency_id=MODEL_QUEUE, concurrency_limit=1, show_progress_on=[depth_preview],
            )  # fmt: skip
        png.change(handlers.png_info, [png], [parameters, record], api_name="png_info", concurrency_limit=None)
        send.click(
            handlers.send_to_generate, [png],
            [prompt, negative_prompt, strength, steps, guidance, sampler, seed, num_images, clip_skip, size, tabs],
            api_name="send_to_generate", concurrency_limit=None,
        )  # fmt: skip
        app.unload(handlers.end_session)
    return app
