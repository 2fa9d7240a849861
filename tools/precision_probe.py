"""Measure what bfloat16 does to each model of the SD2-depth architecture (random weights): speed and fidelity.

    nice python tools/precision_probe.py --size 256 --models vae depth_estimator

For each model: float32 and bfloat16 forward times (best of ``--repeats``) and the bfloat16 output's PSNR
against the float32 output (peak = the float32 output's range) and relative error ||bf16 - f32|| / ||f32||.
Used to fill the decision table in docs/precision.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from depth2img.loading.random_model import random_component


def psnr(test: torch.Tensor, ref: torch.Tensor) -> float:
    test, ref = test.double(), ref.double()
    peak = float(ref.max() - ref.min())
    mse = float(((test - ref) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


def rel_error(test: torch.Tensor, ref: torch.Tensor) -> float:
    return float((test.double() - ref.double()).norm() / ref.double().norm())


def _inputs(name: str, size: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    latent = size // 8
    if name == "vae":
        return (torch.randn(1, 4, latent, latent, generator=g),)
    if name == "depth_estimator":
        return (torch.rand(1, 3, 384, 384, generator=g) * 2 - 1,)
    if name == "unet":
        return (
            torch.randn(2, 5, latent, latent, generator=g),
            torch.tensor(500),
            torch.randn(2, 77, 1024, generator=g),
        )
    raise ValueError(name)


def _call(name: str, model, args):
    if name == "vae":
        return model.decode(args[0], return_dict=False)[0]
    if name == "depth_estimator":
        return model(args[0]).predicted_depth
    return model(args[0], args[1], encoder_hidden_states=args[2], return_dict=False)[0]


def measure(name: str, size: int, repeats: int) -> dict:
    model = random_component(name, config="sd2-depth").eval()
    args = _inputs(name, size)
    out = {}
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        cast = tuple(a.to(dtype) if a.is_floating_point() and a.ndim else a for a in args)
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                start = time.perf_counter()
                result = _call(name, model, cast)
                times.append(time.perf_counter() - start)
        results[dtype] = result.float()
        out[str(dtype).removeprefix("torch.")] = min(times)
    out["psnr_db"] = psnr(results[torch.bfloat16], results[torch.float32])
    out["rel_error"] = rel_error(results[torch.bfloat16], results[torch.float32])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["vae", "depth_estimator"])
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"threads {torch.get_num_threads()}, size {args.size}"
    )
    for name in args.models:
        r = measure(name, args.size, args.repeats)
        print(
            f"{name}: float32 {r['float32']:.2f} s, bfloat16 {r['bfloat16']:.2f} s, "
            f"PSNR {r['psnr_db']:.1f} dB, rel error {r['rel_error']:.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
