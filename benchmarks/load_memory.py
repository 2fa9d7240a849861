"""Peak memory and time of loading a full-size model folder: ours, and optionally diffusers' (the reference).

    nice python benchmarks/load_memory.py                 # full-size SD2-depth UNet (writes ~3.5 GB to a temp dir)
    nice python benchmarks/load_memory.py --reference     # also diffusers' UNet2DConditionModel.from_pretrained
    nice python benchmarks/load_memory.py --dtype bfloat16   # from_pretrained(torch_dtype=torch.bfloat16)
    python benchmarks/load_memory.py --config tiny        # quick check of the script itself

Every measurement runs in a fresh child process, so each peak RSS (``ru_maxrss``) belongs to one job only:

1. *write*: a random-weight model of the architecture, saved with ``save_pretrained`` into a temp folder;
2. *baseline*: a child that only imports what loading needs (torch, depth2img) — the floor of any load;
3. *load*: a child that imports, calls ``from_pretrained`` and then reads every weight once (safetensors are
   memory-mapped: pages become resident on first touch, so without touching, RSS would flatter us).

Reported: peak RSS / weights file size, raw and with the baseline subtracted (target ≤ 1.3), plus the
resident anonymous vs file-backed memory after the load, and the peak (minus baseline) relative to the loaded
model's size: with ``--dtype bfloat16`` the float32 file is converted while loading, and the converted model is
what has to stay resident. The file was just written, so it is read from the page cache (a cold disk adds read
time, not memory). The temp folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (``python benchmarks/load_memory.py``), this file's folder is on sys.path, not the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.memory import GIB, memory_status, peak_rss_gib  # noqa: E402  (needs the path above)


def _model_class(component: str, reference: bool):
    if reference:
        import diffusers

        return getattr(diffusers, {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}[component])
    from depth2img.models import AutoencoderKL, UNet2DConditionModel

    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[component]


def child_write(config: str, component: str, folder: str) -> dict:
    from depth2img.loading.random_model import random_component

    start = time.perf_counter()
    model = random_component(component, config, seed=0)
    built = time.perf_counter()
    model.save_pretrained(folder)
    saved = time.perf_counter()
    return {"parameters": model.num_parameters(), "build_s": built - start, "save_s": saved - built}


def child_baseline(component: str, reference: bool) -> dict:
    import torch  # noqa: F401  (the import is what is measured)

    _model_class(component, reference)
    return {"peak_rss_gib": peak_rss_gib()}


def child_load(component: str, folder: str, reference: bool, dtype: str = "none") -> dict:
    import torch

    cls = _model_class(component, reference)
    options = {} if dtype == "none" else {"torch_dtype": getattr(torch, dtype)}
    start = time.perf_counter()
    model = cls.from_pretrained(folder, **options)
    loaded = time.perf_counter()
    # Touch every weight once so memory-mapped pages are really resident (float32 sums allocate nothing big).
    with torch.no_grad():
        checksum = sum(float(p.sum()) for p in model.parameters())
    touched = time.perf_counter()
    return {
        "load_s": loaded - start,
        "touch_s": touched - loaded,
        "checksum": checksum,
        "dtype": str(next(model.parameters()).dtype),
        "model_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / GIB,
        "peak_rss_gib": peak_rss_gib(),
        "after_load": memory_status(),
    }


def _run_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sd2-depth", help="architecture: sd2-depth (default) or tiny")
    parser.add_argument("--component", default="unet", choices=("unet", "vae"))
    parser.add_argument("--reference", action="store_true", help="also measure diffusers' from_pretrained")
    parser.add_argument(
        "--dtype", default="none", choices=("none", "float32", "bfloat16", "float16"), help="torch_dtype to load in"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        job, *rest = args.child
        if job == "write":
            out = child_write(*rest)
        elif job == "baseline":
            out = child_baseline(rest[0], rest[1] == "reference")
        else:
            out = child_load(rest[0], rest[1], rest[2] == "reference", *rest[3:])
        print(json.dumps(out))
        return

    tmp = Path(tempfile.mkdtemp(prefix="depth2img-load-memory-"))
    try:
        folder = tmp / args.component
        written = _run_child("write", args.config, args.component, str(folder))
        size = sum(p.stat().st_size for p in folder.iterdir()) / GIB
        print(
            f"{args.config} {args.component}: {written['parameters'] / 1e6:.1f}M parameters, folder {size:.3f} GiB "
            f"(random build {written['build_s']:.1f} s, save {written['save_s']:.1f} s)"
        )
        for implementation in ("ours", "reference") if args.reference else ("ours",):
            flag = "reference" if implementation == "reference" else "ours"
            baseline = _run_child("baseline", args.component, flag)["peak_rss_gib"]
            load = _run_child("load", args.component, str(folder), flag, args.dtype)
            after = load["after_load"]
            above_baseline = load["peak_rss_gib"] - baseline
            print(
                f"  {implementation:9s} load {load['load_s']:6.2f} s (+ {load['touch_s']:.2f} s reading every weight)"
                f" | peak RSS {load['peak_rss_gib']:.3f} GiB = {load['peak_rss_gib'] / size:.3f} x file"
                f" | baseline (imports) {baseline:.3f} GiB -> {above_baseline / size:.3f} x file"
                f", {above_baseline / load['model_gib']:.3f} x loaded model ({load['model_gib']:.3f} GiB)"
                f" | after load: anon {after['RssAnon']:.3f} GiB, file-backed {after['RssFile']:.3f} GiB"
                f" | {load['dtype']}, checksum {load['checksum']:.6g}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
