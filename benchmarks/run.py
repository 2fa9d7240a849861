"""Side-by-side benchmark of depth2img against diffusers on identical random weights, in one run.

    python -m benchmarks.run --suite tiny                    # seconds; the CI smoke test
    nice python -m benchmarks.run --suite cpu                # full-size SD2-depth at 256² and 512² (long)
    python -m benchmarks.run --suite gpu                     # 512² and 768², float16 (needs CUDA)
    python -m benchmarks.run --suite cpu --sizes 512 --stages unet_step,vae_decode --repeats 3

Both pipelines load the same folder written by ``write_random_pipeline`` (cached between runs). Then:

1. *load*: ``from_pretrained`` of each side, interleaved, with the folder in the page cache;
2. *stages*: text encode, depth estimate, VAE encode, UNet step, VAE decode, full pipeline — per size, each
   runner timed in rounds (reference, ours, reference, ours, …) after a warm-up round; medians and the ratio
   ours / reference; the fidelity column compares the two sides' outputs of the last round;
3. *memory*: one fresh child process per side and variant (``benchmarks.child``): peak RSS of load + one
   generation, and the time from process start to the first image (cold start, warm file cache).

Writes ``--out`` (JSON, default ``benchmarks/results/<suite>-<date>.json``) and the markdown table next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cases import STAGE_FUNCTIONS, STAGES, as_array, make_inputs
from .machine import machine
from .memory import trim_heap
from .report import markdown_table
from .sides import OURS, REFERENCE, load_pipeline, quiet_libraries, running, variant
from .timing import fidelity, interleaved

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
SCHEMA = "depth2img-benchmark/1"
# (row stage, key of the child's report, unit) of each child-process row
CHILD_ROWS = (
    ("peak_rss", "peak_rss_gib", "GiB"),
    ("peak_cuda", "peak_cuda_gib", "GiB"),  # GPU runs only
    ("cold_start", "first_image_s", "seconds"),
)


@dataclass(frozen=True)
class Suite:
    """What one suite measures; every field can be overridden from the command line."""

    architecture: str  # "tiny" or "sd2-depth" (write_random_pipeline config)
    sizes: tuple[int, ...]  # image sides for the stage timings
    memory_sizes: tuple[int, ...]  # image sides for the child-process runs (peak RSS, cold start)
    steps: int  # num_inference_steps of full-pipeline runs (strength 0.8 runs 80% of them)
    repeats: int  # timed rounds per stage
    memory_repeats: int  # child processes per side and variant
    warmup: int  # untimed rounds before the timed ones (stages other than the full pipeline)
    threads: int  # torch threads; 0 = torch's default (all cores)
    device: str
    dtype: str
    variants: tuple[str, ...]  # our variants in the stage timings
    memory_variants: tuple[str, ...]  # our variants in the child runs
    stages: tuple[str, ...] = STAGES


SUITES = {
    "tiny": Suite(
        architecture="tiny",
        sizes=(64,),
        memory_sizes=(64,),
        steps=4,
        repeats=3,
        memory_repeats=1,
        warmup=1,
        threads=1,  # tiny models spend their time synchronising threads on a busy machine
        device="cpu",
        dtype="float32",
        variants=("default", "low_memory", "channels_last", "bf16", "precision_auto"),
        memory_variants=("default", "low_memory"),
    ),
    "cpu": Suite(
        architecture="sd2-depth",
        sizes=(256, 512),
        memory_sizes=(256, 512),
        steps=5,
        repeats=2,
        memory_repeats=1,
        warmup=1,
        threads=0,
        device="cpu",
        dtype="float32",
        variants=("default", "reference_arithmetic", "channels_last", "compile", "bf16", "precision_auto"),
        memory_variants=("default", "low_memory", "low_memory_bf16", "precision_auto"),
    ),
    "gpu": Suite(
        architecture="sd2-depth",
        sizes=(512, 768),
        memory_sizes=(512,),
        steps=25,
        repeats=5,
        memory_repeats=1,
        warmup=2,
        threads=0,
        device="cuda",
        dtype="float16",
        variants=("default",),
        memory_variants=("default", "low_memory"),
    ),
}


# ---------------------------------------------------------------------------------------------- setup
def check_device(device: str) -> None:
    """One clear sentence when the suite's device is not there, before anything heavy."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise SystemExit(
            f"the gpu suite needs a CUDA device, but torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, {build}); run --suite cpu or --suite tiny instead"
        )


def model_cache() -> Path:
    """Where the random-weight folders are kept between runs (the full-size one is 5.6 GB)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "depth2img" / "benchmarks"
    return Path(os.environ.get("DEPTH2IMG_BENCH_CACHE", default))


def ensure_model_folder(architecture: str, model_dir: Path | None, seed: int = 0) -> Path:
    """The random-weight pipeline folder of ``architecture``, written once (atomically) and then reused."""
    from depth2img.loading.random_model import write_random_pipeline

    folder = model_dir if model_dir is not None else model_cache() / f"{architecture}-seed{seed}"
    if not (folder / "model_index.json").is_file():
        print(f"writing a random-weight {architecture} pipeline to {folder} (once) ...", flush=True)
        start = time.perf_counter()
        write_random_pipeline(folder, config=architecture, seed=seed, overwrite=True)
        print(f"  written in {time.perf_counter() - start:.1f} s", flush=True)
    return folder


def warm_file_cache(folder: Path) -> float:
    """Read every file of the folder once, so all measurements start from the page cache; returns GiB read."""
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as file:
                while chunk := file.read(64 * 1024 * 1024):
                    total += len(chunk)
    return total / 1024**3


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return commit + ("+uncommitted src changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    import depth2img

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{_cpu_name()} ({os.cpu_count()} cores)"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "depth2img": depth2img.__version__,
        "depth2img_commit": _git_commit(),
        "device": device,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        **machine(),  # CPU model and flags, torch's dispatch level, oneDNN
    }


# ---------------------------------------------------------------------------------------------- measurements
def _row(
    stage: str,
    size: int | None,
    variant_name: str,
    metric: str,
    ours: list[float],
    reference: list[float],
    fidelity_cell: dict[str, Any] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One line of the table: medians of both sides, their ratio, the fidelity cell and the raw samples."""
    ours_median = statistics.median(ours) if ours else None
    reference_median = statistics.median(reference) if reference else None
    ratio = ours_median / reference_median if ours_median is not None and reference_median else None
    return {
        "stage": stage,
        "size": size,
        "variant": variant_name,
        "metric": metric,
        "ours": ours_median,
        "reference": reference_median,
        "ratio": ratio,
        "ours_samples": ours,
        "reference_samples": reference,
        "fidelity": fidelity_cell,
        "exact": variant(variant_name).exact,
        **details,
    }


def measure_load(folder: Path, suite: Suite, variants: list[str], log) -> list[dict[str, Any]]:
    """``from_pretrained`` of each side, interleaved; the pipeline is dropped after every load."""
    dtype = getattr(torch, suite.dtype)
    runners = {REFERENCE: lambda: load_pipeline(REFERENCE, folder, dtype=dtype)}
    for name in variants:
        runners[name] = lambda name=name: load_pipeline(OURS, folder, name, dtype=dtype)

    timed = interleaved(_dropping(runners), repeats=max(suite.repeats, 3), warmup=1)
    rows = []
    for name in variants:
        rows.append(_row("load", None, name, "seconds", timed[name].samples, timed[REFERENCE].samples))
        log(rows[-1])
    return rows


def _dropping(runners: dict[str, Any]) -> dict[str, Any]:
    """Runners that discard what they built (a loaded pipeline), so no two loads hold memory at once."""

    def drop(runner):
        def run():
            runner()
            return None

        return run

    return {name: drop(runner) for name, runner in runners.items()}


def measure_stages(folder: Path, suite: Suite, variants: list[str], log) -> list[dict[str, Any]]:
    """Every stage at every size: reference and each of our variants, interleaved."""
    dtype = getattr(torch, suite.dtype)
    pipes = {REFERENCE: load_pipeline(REFERENCE, folder, device=suite.device, dtype=dtype)}
    for name in variants:
        pipes[name] = load_pipeline(OURS, folder, name, device=suite.device, dtype=dtype)
    rows = []
    for size in suite.sizes:
        # The same seeded inputs for everyone, cast to the dtype of each variant's weights.
        inputs = {
            name: make_inputs(folder, size, suite.steps, device=suite.device, dtype=_dtype_of(name, dtype))
            for name in pipes
        }
        for stage in suite.stages:
            runners = {
                name: STAGE_FUNCTIONS[stage](pipe, REFERENCE if name == REFERENCE else OURS, inputs[name])
                for name, pipe in pipes.items()
            }
            timed = interleaved(
                runners,
                repeats=suite.repeats,
                # The full pipeline runs last, after the stages warmed every kernel at this size.
                warmup=0 if stage == "full_pipeline" and len(suite.stages) > 1 else suite.warmup,
                device=suite.device,
                wrap=lambda name: running(REFERENCE if name == REFERENCE else OURS, name),
            )
            reference_out = as_array(timed[REFERENCE].output)
            for name in variants:
                cell = fidelity(as_array(timed[name].output), reference_out, variant(name).exact)
                warmups = {
                    "ours_warmup": timed[name].warmup_samples,
                    "reference_warmup": timed[REFERENCE].warmup_samples,
                }
                rows.append(
                    _row(stage, size, name, "seconds", timed[name].samples, timed[REFERENCE].samples, cell, **warmups)
                )
                log(rows[-1])
            del runners, timed
    pipes.clear()  # free both sides' models before the child processes run
    gc.collect()
    trim_heap()
    return rows


def _dtype_of(name: str, suite_dtype: torch.dtype) -> torch.dtype:
    return suite_dtype if name == REFERENCE else (variant(name).dtype or suite_dtype)


def _run_child(side: str, folder: Path, size: int, suite: Suite, variant_name: str, save: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.child", "--side", side, "--folder", str(folder), "--variant", variant_name,
        "--size", str(size), "--steps", str(suite.steps), "--threads", str(suite.threads), "--device", suite.device,
        "--dtype", suite.dtype, "--save", str(save), "--spawned-at", repr(time.time()),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {side}/{variant_name} at {size}² failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(folder: Path, suite: Suite, variants: list[str], log) -> list[dict[str, Any]]:
    """Peak RSS and cold start of load + one generation, one fresh child process per side and variant."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="depth2img-bench-") as tmp:
        for size in suite.memory_sizes:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (REFERENCE, *variants)}
            for repeat in range(suite.memory_repeats):
                for name in runs:
                    side = REFERENCE if name == REFERENCE else OURS
                    save = Path(tmp) / f"{name}-{size}-{repeat}.npy"
                    child_variant = "default" if side == REFERENCE else name
                    runs[name].append(_run_child(side, folder, size, suite, child_variant, save))
                    runs[name][-1]["images"] = str(save)

            reference_images = np.load(runs[REFERENCE][-1]["images"])
            for name in variants:
                cell = fidelity(np.load(runs[name][-1]["images"]), reference_images, variant(name).exact)
                details = {"ours_runs": _strip(runs[name]), "reference_runs": _strip(runs[REFERENCE])}
                for stage, key, metric in CHILD_ROWS:
                    if key not in runs[name][-1]:
                        continue
                    ours, reference = [r[key] for r in runs[name]], [r[key] for r in runs[REFERENCE]]
                    rows.append(_row(stage, size, name, metric, ours, reference, cell, **details))
                    log(rows[-1])
    return rows


def _strip(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in run.items() if key != "images"} for run in runs]


# ---------------------------------------------------------------------------------------------- command line
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


OVERRIDABLE = (
    "sizes", "memory_sizes", "steps", "repeats", "memory_repeats", "warmup", "threads", "dtype", "variants",
    "memory_variants",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Suite]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, choices=tuple(SUITES))
    parser.add_argument("--sizes", type=_ints, help="image sides for the stage timings, e.g. 256,512")
    parser.add_argument("--memory-sizes", type=_ints, help="image sides for the child runs ('' for none)")
    parser.add_argument("--steps", type=int, help="num_inference_steps of the full-pipeline runs")
    parser.add_argument("--repeats", type=int, help="timed rounds per stage")
    parser.add_argument("--memory-repeats", type=int, help="child processes per side and variant")
    parser.add_argument("--warmup", type=int, help="untimed rounds before the timed ones")
    parser.add_argument("--threads", type=int, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", help="float32, float16 or bfloat16")
    parser.add_argument("--stages", type=_names, help=f"a subset of {','.join(STAGES)} (and 'load'), or 'none'")
    parser.add_argument("--variants", type=_names, help="our variants in the stage timings (default,low_memory,...)")
    parser.add_argument("--memory-variants", type=_names, help="our variants in the child runs")
    parser.add_argument("--model-dir", type=Path, help="pipeline folder to use (written there if missing)")
    parser.add_argument("--out", type=Path, help="JSON result path (the markdown table goes next to it)")
    args = parser.parse_args(argv)

    suite = SUITES[args.suite]
    overrides = {key: getattr(args, key) for key in OVERRIDABLE if getattr(args, key) is not None}
    stages = args.stages
    if stages is not None:
        stages = () if stages == ("none",) else stages
        unknown = [s for s in stages if s not in (*STAGES, "load")]
        if unknown:
            parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from load,{','.join(STAGES)}")
        overrides["stages"] = stages
    else:
        overrides["stages"] = ("load", *suite.stages)
    for name in (*overrides.get("variants", ()), *overrides.get("memory_variants", ())):
        try:
            variant(name)
        except ValueError as error:
            parser.error(str(error))
    if overrides.get("dtype", suite.dtype) not in ("float32", "float16", "bfloat16"):
        parser.error(f"--dtype must be float32, float16 or bfloat16, got {overrides['dtype']!r}")
    for key in ("steps", "repeats"):
        if key in overrides and overrides[key] < 1:
            parser.error(f"--{key} must be at least 1, got {overrides[key]}")
    return args, dataclasses.replace(suite, **overrides)


def _available(names: tuple[str, ...], skipped: list[dict[str, str]]) -> list[str]:
    kept = []
    for name in names:
        reason = variant(name).unavailable_reason()
        if reason is None:
            kept.append(name)
        elif not any(s["variant"] == name for s in skipped):
            skipped.append({"variant": name, "reason": reason})
    return kept


def _log(row: dict[str, Any]) -> None:
    ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "—"
    cell = row.get("fidelity") or {}
    shown = f" | {cell['kind']} {cell['value']:.3g}" if cell.get("value") is not None else ""
    size = f"{row['size']}²" if row["size"] else ""
    print(
        f"  {row['stage']:14s} {size:6s} {row['variant']:14s} ours {row['ours']:.4g} {row['metric']:7s} "
        f"ref {row['reference']:.4g} | ratio {ratio}{shown}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, suite = parse_args(argv)
    check_device(suite.device)
    quiet_libraries()
    if suite.threads:
        torch.set_num_threads(suite.threads)

    env = environment(suite.device)
    folder = ensure_model_folder(suite.architecture, args.model_dir)
    print(f"page cache: read {warm_file_cache(folder) * 1024:.0f} MiB of {folder}", flush=True)
    skipped: list[dict[str, str]] = []
    variants = _available(suite.variants, skipped)
    memory_variants = _available(suite.memory_variants, skipped)
    for entry in skipped:
        print(f"not measured: {entry['variant']}: {entry['reason']}", flush=True)

    rows: list[dict[str, Any]] = []
    component_stages = tuple(s for s in suite.stages if s != "load")
    if "load" in suite.stages:
        print("load (from_pretrained, warm cache):", flush=True)
        rows += measure_load(folder, suite, variants, _log)
    if component_stages:
        print("stages:", flush=True)
        rows += measure_stages(folder, dataclasses.replace(suite, stages=component_stages), variants, _log)
    if suite.memory_sizes:
        print("child processes (peak RSS, cold start):", flush=True)
        rows += measure_memory(folder, suite, memory_variants, _log)

    env["load_average_after"] = list(os.getloadavg())
    result = {
        "schema": SCHEMA,
        "suite": args.suite,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv),
        "environment": env,
        "settings": {
            **{key: value for key, value in dataclasses.asdict(suite).items()},
            "strength": 0.8,
            "guidance_scale": 7.5,
            "threads_label": f"{suite.threads or torch.get_num_threads()} torch thread(s)",
            "model_folder": str(folder),
        },
        "rows": rows,
        "skipped": skipped,
    }
    out = args.out or RESULTS / f"{args.suite}-{result['created'][:10]}.json"
    from depth2img.utils.files import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown_table(result))
    print(f"wrote {out} and {out.with_suffix('.md')}", flush=True)
    return result


if __name__ == "__main__":
    main()
