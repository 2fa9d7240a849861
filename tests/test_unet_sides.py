"""Wiring of benchmarks/unet_sides.py (one child process per side and precision) on the tiny UNet, without
OpenVINO (a benchmark-only dependency): both torch sides run, agree in float32, and bfloat16 differs by a
bfloat16-sized error; the result records the machine. No timing thresholds. Marked slow (run with -m slow)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import REPO_ROOT, require

if str(REPO_ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not part of the package
    sys.path.insert(0, str(REPO_ROOT))


@pytest.mark.slow  # four child processes, each importing torch and diffusers: minutes on a busy 2-core machine
def test_tiny_unet_sides_in_child_processes(tmp_path):
    require("diffusers")
    from benchmarks.unet_sides import main

    out = tmp_path / "sides.json"
    argv = ["--config", "tiny", "--size", "32", "--repeats", "1", "--sides", "ours,reference", "--out", str(out)]
    result = main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {(row["side"], row["precision"]): row for row in result["rows"]}
    assert set(rows) == {(s, p) for s in ("ours", "reference") for p in ("float32", "bfloat16")}
    assert all("error" not in row and row["median_s"] > 0 for row in rows.values()), rows
    # same weights, same inputs: the two float32 sides agree to float32 rounding, bfloat16 to bfloat16 rounding
    assert rows["reference", "float32"]["rel_error_vs_ours_float32"] < 1e3 * torch.finfo(torch.float32).eps
    bf16 = rows["ours", "bfloat16"]["rel_error_vs_ours_float32"]
    assert 1e3 * torch.finfo(torch.float32).eps < bf16 < 16 * torch.finfo(torch.bfloat16).eps
    machine = result["environment"]
    assert machine["cpu"] and "DNN" in machine["onednn"] and "bf16_flags" in machine
    assert "| ours | bfloat16 |" in out.with_suffix(".md").read_text()
