"""Smoke test of the benchmark harness (benchmarks/): the tiny suite runs end to end, both sides are measured,
exact modes match the reference, and the report/README splice work. No timing thresholds: timings on a shared
machine say nothing about correctness."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import REPO_ROOT, require

if str(REPO_ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not part of the package
    sys.path.insert(0, str(REPO_ROOT))

ROW_KEYS = {
    "stage", "size", "variant", "metric", "ours", "reference", "ratio", "ours_samples", "reference_samples",
    "fidelity", "exact",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    require("diffusers")
    from benchmarks.run import main

    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "tiny.json"
    # Fewer variants than the suite's own, to keep this test short: one of each kind (exact, low-memory, approximate).
    options = [
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--variants",
        "default,low_memory,bf16",
        "--memory-variants",
        "default",
    ]
    result = main(["--suite", "tiny", *options, "--model-dir", str(tmp / "model"), "--out", str(out)])
    return result, out


def test_tiny_suite_writes_json_and_markdown(tiny_result):
    result, out = tiny_result
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["schema"] == "depth2img-benchmark/1"
    assert result["suite"] == "tiny"
    table = out.with_suffix(".md").read_text()
    assert "| UNet step (batch 2, guidance) | 64² | default |" in table
    assert "Peak RSS" in table and "Cold start" in table


def test_every_stage_ran_on_both_sides(tiny_result):
    result, _ = tiny_result
    rows = result["rows"]
    for row in rows:
        assert set(row) >= ROW_KEYS, row["stage"]
        assert row["ours"] > 0 and row["reference"] > 0, row["stage"]
        assert len(row["ours_samples"]) >= 1 and len(row["reference_samples"]) >= 1
        assert math.isclose(row["ratio"], row["ours"] / row["reference"])
    measured = {(row["stage"], row["variant"]) for row in rows}
    stages = ("load", "text_encode", "depth_estimate", "vae_encode", "unet_step", "vae_decode", "full_pipeline")
    for stage in (*stages, "peak_rss", "cold_start"):
        assert (stage, "default") in measured, stage


def test_exact_rows_match_the_reference(tiny_result):
    result, _ = tiny_result
    checked = [row for row in result["rows"] if row["exact"] and row["fidelity"] is not None]
    assert len(checked) >= 8  # six stages plus the two child-process rows, at least
    for row in checked:
        assert row["fidelity"]["kind"] == "max_abs_diff"
        assert row["fidelity"]["value"] <= 1e-4, (row["stage"], row["variant"], row["fidelity"])


def test_approximate_rows_report_psnr(tiny_result):
    result, _ = tiny_result
    approximate = [row for row in result["rows"] if not row["exact"] and row["fidelity"] is not None]
    assert approximate, "the tiny suite includes an approximate variant (bf16)"
    for row in approximate:
        assert row["fidelity"]["kind"] == "psnr_db"
        assert row["fidelity"]["value"] > 20  # bf16 of a random tiny model: far from noise, far from exact


def test_readme_table_keeps_default_rows_and_whole_generations(tiny_result):
    from benchmarks.report import markdown_table, readme_rows

    result, _ = tiny_result
    table = markdown_table(result, keep=readme_rows)
    assert "| UNet step (batch 2, guidance) | 64² | default |" in table
    assert "| UNet step (batch 2, guidance) | 64² | bf16 |" not in table
    assert "| 64² | bf16 |" in table  # its full-pipeline and memory rows stay


def test_report_splices_between_markers_only():
    from benchmarks.report import END_MARKER, START_MARKER, splice

    readme = f"# Title\n\nbefore\n{START_MARKER}\nold table\n{END_MARKER}\nafter\n"
    spliced = splice(readme, "| new |\n")
    assert spliced == f"# Title\n\nbefore\n{START_MARKER}\n| new |\n{END_MARKER}\nafter\n"
    assert splice(spliced, "| new |\n") == spliced  # idempotent
    with pytest.raises(ValueError, match="markers"):
        splice("# no markers\n", "| new |\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_gpu_suite_without_cuda_says_so():
    from benchmarks.run import main

    with pytest.raises(SystemExit, match="needs a CUDA device"):
        main(["--suite", "gpu"])


def test_result_records_the_machine(tiny_result):
    """CPU model and flags, torch's dispatch level and oneDNN: results of different machines are never mixed."""
    from depth2img.precision import cpu_flags

    result, _ = tiny_result
    machine = result["environment"]
    assert machine["cpu"] and machine["torch"] == torch.__version__
    assert set(machine["cpu_flags"]) <= cpu_flags() and set(machine["bf16_flags"]) <= set(machine["cpu_flags"])
    assert machine["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "DNN" in machine["onednn"] or not torch.backends.mkldnn.is_available()
