"""UNet step per side and precision, each in its own process: ours, the reference (diffusers) and OpenVINO.

    nice python -m benchmarks.unet_sides --size 512 --repeats 3                  # all sides, float32 and bfloat16
    python -m benchmarks.unet_sides --config tiny --size 64 --sides ours,reference --precisions float32

Every side runs the same random weights (``random_component("unet", config, seed=0)``; the reference's UNet loads
our state dict, whose names are diffusers'; OpenVINO converts that reference module with
``openvino.convert_model(module, example_input=...)`` and compiles it for the CPU with ``INFERENCE_PRECISION_HINT``
f32 or bf16). One child process per (side, precision), so thread pools and allocators never share a process.
Each child times ``--repeats`` calls after one warm-up (for OpenVINO the conversion and compile are reported
apart) and saves its output; the parent reports the medians, the ratios to OpenVINO's time at the same
precision, and each output's relative error against ours in float32. Writes JSON and markdown to ``--out``.

OpenVINO is an optional benchmark-only dependency (``pip install -e ".[bench]"``); without it its rows say so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIDES = ("ours", "reference", "openvino")
PRECISIONS = ("float32", "bfloat16")
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- one child
def _inputs(size: int, config: str) -> dict[str, Any]:
    """The same (sample, timestep, text) for every side: batch 2 (classifier-free guidance), seeded."""
    import torch

    from depth2img.loading.random_model import random_component

    unet = random_component("unet", config=config, seed=0)
    generator = torch.Generator().manual_seed(0)
    latent = size // 8
    channels = unet.config.in_channels
    width = unet.config.cross_attention_dim
    return {
        "unet": unet.eval(),
        "sample": torch.randn(2, channels, latent, latent, generator=generator),
        "timestep": torch.tensor(500),
        "text": torch.randn(2, 77, width, generator=generator),
    }


def _reference_unet(ours: Any, config: str) -> Any:
    import diffusers

    from depth2img.configuration import load_json
    from depth2img.loading.single_file import architecture_folder

    reference = diffusers.UNet2DConditionModel.from_config(
        load_json(architecture_folder(config) / "unet" / "config.json")
    )
    reference.load_state_dict(ours.state_dict(), strict=True)
    return reference.eval()


class _ForwardOnly(torch.nn.Module):
    """The reference UNet as a module of plain tensors in and one tensor out, which OpenVINO can trace."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]


def run_child(side: str, precision: str, size: int, repeats: int, config: str, save: Path) -> dict[str, Any]:
    """Build ``side``'s UNet in ``precision``, time ``repeats`` calls after a warm-up, save the output."""
    import torch

    x = _inputs(size, config)
    dtype = getattr(torch, precision)
    extra: dict[str, Any] = {}
    if side == "openvino":
        import openvino

        module = _ForwardOnly(_reference_unet(x.pop("unet"), config)).eval()  # one copy of the weights at a time
        example = (x["sample"], x["timestep"], x["text"])
        start = time.perf_counter()
        with torch.no_grad():
            converted = openvino.convert_model(module, example_input=example)
        extra["convert_s"] = time.perf_counter() - start
        del module
        start = time.perf_counter()
        hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
        compiled = openvino.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        extra["compile_s"] = time.perf_counter() - start
        extra["openvino"] = openvino.__version__
        feeds = [t.numpy() for t in example]

        def call() -> np.ndarray:
            return np.asarray(compiled(feeds)[0])
    else:
        unet = x.pop("unet") if side == "ours" else _reference_unet(x.pop("unet"), config)
        unet.to(dtype)
        sample, text = x["sample"].to(dtype), x["text"].to(dtype)

        def call() -> np.ndarray:
            with torch.no_grad():
                out = unet(sample, x["timestep"], encoder_hidden_states=text, return_dict=False)[0]
            return out.float().numpy()

    start = time.perf_counter()
    output = call()
    extra["first_call_s"] = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = call()
        times.append(time.perf_counter() - start)
    np.save(save, output.astype(np.float32))
    return {"side": side, "precision": precision, "times_s": times, "median_s": statistics.median(times), **extra}


# ---------------------------------------------------------------------------------------------- the parent
def environment() -> dict[str, Any]:
    """The machine (``benchmarks.machine``), the load and the date."""
    from .machine import machine

    return {
        **machine(),
        "load_average_before": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _child(side: str, precision: str, args: argparse.Namespace, save: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.unet_sides", "--child", side, precision, "--size", str(args.size)]
    command += ["--repeats", str(args.repeats), "--config", args.config, "--save", str(save)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"side": side, "precision": precision, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"UNet step at {result['size']}², batch 2, {result['config']}, median of {result['repeats']}; "
        f"{env['cpu']} ({env['cpu_count']} cores, bf16 flags: {', '.join(env['bf16_flags']) or 'none'}), "
        f"torch {env['torch']}, {env['onednn']}; load before {env['load_average_before'][0]:.1f}.",
        "",
        "| side | precision | median s | × OpenVINO same precision | rel. error vs ours float32 | first call s |",
        "|---|---|---|---|---|---|",
    ]
    openvino = {r["precision"]: r.get("median_s") for r in result["rows"] if r["side"] == "openvino"}
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['side']} | {row['precision']} | unavailable: {row['error'][:80]} | | | |")
            continue
        base = openvino.get(row["precision"])
        ratio = f"{row['median_s'] / base:.2f}" if base else "–"
        rel = row.get("rel_error_vs_ours_float32")
        first = row["first_call_s"] + row.get("convert_s", 0) + row.get("compile_s", 0)
        lines.append(
            f"| {row['side']} | {row['precision']} | {row['median_s']:.2f} | {ratio} | "
            f"{'–' if rel is None else f'{rel:.1e}'} | {first:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="sd2-depth", help="sd2-depth (full size) or tiny")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--out", type=Path, help="result JSON (markdown next to it); default under results/")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(*args.child, args.size, args.repeats, args.config, args.save)))
        return None
    sides, precisions = args.sides.split(","), args.precisions.split(",")
    unknown = [s for s in sides if s not in SIDES] + [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise SystemExit(f"unknown side or precision: {', '.join(unknown)}; sides {SIDES}, precisions {PRECISIONS}")
    result: dict[str, Any] = {"size": args.size, "repeats": args.repeats, "config": args.config}
    result["environment"] = environment()
    rows = []
    with tempfile.TemporaryDirectory(prefix="depth2img-unet-sides-") as tmp:
        for precision in precisions:
            for side in sides:  # sides alternate within each precision
                save = Path(tmp) / f"{side}-{precision}.npy"
                row = _child(side, precision, args, save)
                row["output"] = str(save) if save.is_file() else None
                print(json.dumps({k: v for k, v in row.items() if k != "output"}), flush=True)
                rows.append(row)
        exact = Path(tmp) / "ours-float32.npy"
        base = np.load(exact).astype(np.float64) if exact.is_file() else None
        for row in rows:
            output = row.pop("output")
            if base is not None and output is not None:
                diff = np.load(output).astype(np.float64) - base
                row["rel_error_vs_ours_float32"] = float(np.linalg.norm(diff) / np.linalg.norm(base))
    result["rows"] = rows
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"unet-sides-{args.size}-{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
