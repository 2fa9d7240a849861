"""Where a full-size UNet step's time goes, per operator family: ``torch.profiler`` on the SD2-depth UNet
(random weights), one step after a warm-up.

    nice python tools/profile_unet.py --size 256 --dtype bfloat16 [--channels-last] [--compile]

Prints the top operators by self CPU time and a summary by family (matmul, conv, attention, casts/reorders,
normalisation, element-wise).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from depth2img.loading.random_model import random_component

FAMILIES = (
    ("attention", ("attention", "sdpa", "flash", "softmax", "bmm", "baddbmm")),
    ("matmul", ("addmm", "mm", "linear", "matmul", "mkldnn_linear")),
    ("conv", ("conv", "mkldnn_convolution")),
    ("casts/reorders", ("to_copy", "copy_", "clone", "contiguous", "to_dense", "reorder", "_to_copy")),
    ("normalisation", ("group_norm", "layer_norm", "native_")),
)


def family(name: str) -> str:
    lowered = name.lower()
    for label, keys in FAMILIES:
        if any(key in lowered for key in keys):
            return label
    return "other (element-wise, views)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    unet = random_component("unet", config="sd2-depth", dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    latent = args.size // 8
    sample = torch.randn(2, 5, latent, latent, generator=g).to(dtype)
    text = torch.randn(2, 77, 1024, generator=g).to(dtype)
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
        sample = sample.to(memory_format=torch.channels_last)
    model = unet
    if args.compile:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
        model = torch.compile(unet, dynamic=False)
    with torch.no_grad():
        start = time.perf_counter()
        model(sample, 500, encoder_hidden_states=text, return_dict=False)
        print(f"first call (warm-up{', compile' if args.compile else ''}): {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        model(sample, 500, encoder_hidden_states=text, return_dict=False)
        print(f"second call: {time.perf_counter() - start:.2f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(sample, 500, encoder_hidden_states=text, return_dict=False)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        totals[family(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values())
    for label, micros in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{label:30s} {micros / 1e6:7.2f} s  {100 * micros / whole:5.1f}%")


if __name__ == "__main__":
    main()
