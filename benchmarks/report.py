"""Benchmark JSON → markdown table, and the README's performance table spliced in from a recorded run.

    python -m benchmarks.report benchmarks/results/cpu.json                       # print the README's table
    python -m benchmarks.report benchmarks/results/cpu.json --all-rows            # every row
    python -m benchmarks.report benchmarks/results/cpu.json --out benchmarks/results/README_TABLE.md
    python -m benchmarks.report benchmarks/results/cpu.json --readme README.md    # replace the marked block

The README block lies between ``<!-- perf-table:start -->`` and ``<!-- perf-table:end -->``; everything outside
the markers is left byte for byte as it was.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from depth2img.utils.files import atomic_write_text

START_MARKER = "<!-- perf-table:start -->"
END_MARKER = "<!-- perf-table:end -->"

STAGE_LABELS = {
    "load": "Pipeline load (warm file cache)",
    "text_encode": "Text encode (CLIP)",
    "depth_estimate": "Depth estimate (DPT)",
    "vae_encode": "VAE encode",
    "unet_step": "UNet step (batch 2, guidance)",
    "vae_decode": "VAE decode",
    "full_pipeline": "Full pipeline",
    "cold_start": "Cold start to first image",
    "peak_rss": "Peak RSS, load + 1 image",
    "peak_cuda": "Peak CUDA memory, load + 1 image",
}


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def _value(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} GiB" if metric == "GiB" else _seconds(value)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _fidelity(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("value") is None:
        return "—"
    value = cell["value"]
    if cell["kind"] == "psnr_db":
        return "PSNR ∞ (equal)" if math.isinf(value) and value > 0 else f"PSNR {value:.1f} dB (approx.)"
    return "identical (0)" if value == 0 else f"max abs diff {value:.1e}"


def _variant(row: dict[str, Any]) -> str:
    """The variant, with its first call's time when that was a one-off cost (e.g. torch.compile) worth knowing."""
    first = max(row.get("ours_warmup") or [0.0])
    if row["ours"] and first > 1.0 and first > 3 * row["ours"]:
        return f"{row['variant']} (first call {_seconds(first)})"
    return row["variant"]


def _stage_label(row: dict[str, Any], settings: dict[str, Any]) -> str:
    label = STAGE_LABELS.get(row["stage"], row["stage"])
    if row["stage"] in ("full_pipeline", "cold_start", "peak_rss", "peak_cuda"):
        label += f" ({settings['steps']} steps, strength {settings['strength']:g})"
    return label


# The README's table: every default row, and the other variants where they matter to a user (whole generations,
# memory, cold start); the full table stays in benchmarks/results/.
README_STAGES = ("full_pipeline", "peak_rss", "peak_cuda", "cold_start")


def readme_rows(row: dict[str, Any]) -> bool:
    return row["variant"] == "default" or row["stage"] in README_STAGES


def markdown_table(result: dict[str, Any], keep: Any = None) -> str:
    """The comparison table of one run (the rows ``keep(row)`` accepts, default all), with a line saying what was
    measured, where and how."""
    settings, env = result["settings"], result["environment"]
    lines = [
        f"Suite `{result['suite']}`: {settings['architecture']} architecture with random weights, "
        f"{env['device_name']}, {settings['threads_label']}, {settings['dtype']}; medians of {settings['repeats']} "
        f"interleaved rounds (reference, ours, reference, ours, …); load average {env['load_average_before'][0]:.1f} → "
        f"{env['load_average_after'][0]:.1f}. Ratio < 1: ours is faster / smaller. "
        f"Reference: diffusers {env['diffusers']} `StableDiffusionDepth2ImgPipeline` on the same folder.",
        "",
        f"Command: `{result['command']}` ({result['created'][:10]}, depth2img {env['depth2img_commit']})",
        "",
        "| Stage | Size | Ours (variant) | Ours | Reference | Ours / ref. | Fidelity (ours vs ref.) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        if keep is not None and not keep(row):
            continue
        size = f"{row['size']}²" if row.get("size") else "—"
        lines.append(
            f"| {_stage_label(row, settings)} | {size} | {_variant(row)} | {_value(row['ours'], row['metric'])} | "
            f"{_value(row['reference'], row['metric'])} | {_ratio(row['ratio'])} | {_fidelity(row.get('fidelity'))} |"
        )
    for skipped in result.get("skipped", []):
        lines.append(f"\nNot measured: `{skipped['variant']}` — {skipped['reason']}.")
    return "\n".join(lines) + "\n"


def splice(readme: str, table: str) -> str:
    """``readme`` with the text between the perf-table markers replaced by ``table``."""
    start, end = readme.find(START_MARKER), readme.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"the README needs the markers {START_MARKER} and then {END_MARKER} around the table")
    return readme[: start + len(START_MARKER)] + "\n" + table.rstrip("\n") + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="a JSON file written by python -m benchmarks.run")
    parser.add_argument("--out", type=Path, help="write the table to this markdown file")
    parser.add_argument("--readme", type=Path, help="replace the perf-table block of this README")
    parser.add_argument("--all-rows", action="store_true", help="every row (default: the README's selection)")
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text(encoding="utf-8"))
    table = markdown_table(result, keep=None if args.all_rows else readme_rows)
    if not args.all_rows:
        table += f"\nAll rows (every variant and stage): `{args.result.with_suffix('.md').as_posix()}`.\n"
    if args.out:
        atomic_write_text(args.out, table)
    if args.readme:
        atomic_write_text(args.readme, splice(args.readme.read_text(encoding="utf-8"), table))
    if not args.out and not args.readme:
        print(table, end="")


if __name__ == "__main__":
    main()
