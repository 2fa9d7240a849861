"""Side-by-side benchmarks of depth2img against diffusers (the reference) on identical random weights.

``python -m benchmarks.run --suite tiny|cpu|gpu`` times each stage of a generation for both implementations in
one process, interleaved, and measures peak memory and cold start in fresh child processes; see
docs/benchmarks.md. Not part of the installed package: it imports diffusers, which depth2img never does.
"""
