"""Throughput of a float32 linear layer on this CPU: PyTorch's BLAS (``F.linear``) against oneDNN (the same
layer as a 1×1 convolution, ``depth2img.models.linear.linear_as_conv``), at the shapes of the SD2-depth UNet.

    nice python benchmarks/linear_kernels.py            # torch's default threads
    python benchmarks/linear_kernels.py --threads 1

Prints GFLOP/s of both, the ratio of their times and the largest difference of their outputs; this is why
``depth2img.models.Linear`` routes large CPU float32 inputs through oneDNN.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from depth2img.models.linear import linear_as_conv

# (rows, in_features, out_features) of the UNet's linear layers at 512² (64² latents, batch 2 under guidance)
UNET_SHAPES = [
    (2 * 4096, 320, 320),  # attention projections, level 1
    (2 * 4096, 320, 2560),  # GEGLU in, level 1
    (2 * 4096, 1280, 320),  # feed-forward out, level 1
    (2 * 1024, 640, 640),
    (2 * 1024, 640, 5120),
    (2 * 1024, 2560, 640),
    (2 * 256, 1280, 1280),
    (2 * 256, 1280, 10240),
    (2 * 256, 5120, 1280),
    (2 * 77, 1024, 640),  # text keys/values
]


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up: oneDNN builds its kernel on the first call of a shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} thread(s); GFLOP/s of F.linear (BLAS) and of the 1×1 convolution (oneDNN)")
    print(f"{'rows':>6} {'in':>6} {'out':>6} | {'BLAS':>7} {'oneDNN':>7} | time ratio | max abs diff")
    ratios = []
    with torch.no_grad():
        for rows, in_features, out_features in UNET_SHAPES:
            x = torch.randn(rows, in_features)
            weight = torch.randn(out_features, in_features) / in_features**0.5
            bias = torch.randn(out_features)
            operands = (x, weight, bias)
            blas = _median_seconds(lambda operands=operands: F.linear(*operands), args.repeats)
            onednn = _median_seconds(lambda operands=operands: linear_as_conv(*operands), args.repeats)
            diff = (F.linear(x, weight, bias) - linear_as_conv(x, weight, bias)).abs().max().item()
            flop = 2 * rows * in_features * out_features
            ratios.append(onednn / blas)
            print(
                f"{rows:>6} {in_features:>6} {out_features:>6} | {flop / blas / 1e9:>7.0f} {flop / onednn / 1e9:>7.0f}"
                f" | {onednn / blas:>10.2f} | {diff:.1e}"
            )
    print(f"median time ratio oneDNN / BLAS: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
