"""``depth2img batch --engine ray`` on a local Ray (2 CPUs, 2 actors): the local engine's outputs byte for byte,
and it resumes a batch the local engine started (shared ids, names and journal)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import require
from depth2img.batch import read_journal
from depth2img.cli import main
from depth2img.loading.random_model import write_random_pipeline

FAST = ["--steps", "3", "-q", "--device", "cpu"]


@pytest.fixture(scope="module")
def local_ray():
    ray = require("ray")
    require("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_matches_and_resumes_local(local_ray, tmp_path, capsys):
    model = write_random_pipeline(tmp_path / "tiny", config="tiny")
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        pixels = np.random.default_rng(k).integers(0, 256, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"i{k}.png")
    common = ["-m", str(model), "-p", "a lighthouse", *FAST]

    assert main(["batch", str(folder), *common, "-o", str(tmp_path / "local")]) == 0
    # The local engine starts a batch (half of the inputs), the Ray engine finishes it.
    mixed = tmp_path / "mixed"
    assert main(["batch", str(folder / "i[01].png"), *common, "-o", str(mixed)]) == 0
    capsys.readouterr()
    argv = ["batch", str(folder), *common, "-o", str(mixed), "--engine", "ray", "--workers", "2", "--batch-size", "2"]
    assert main(argv) == 0
    assert "2 done, 2 skipped" in capsys.readouterr().err

    def images(outdir):
        return {p.name: p.read_bytes() for p in outdir.glob("*.png")}

    assert images(mixed) == images(tmp_path / "local")
    assert len(images(mixed)) == 4
    journal = read_journal(mixed / "batch.jsonl")
    assert sorted(r["name"] for r in journal if r["status"] == "done") == sorted(images(mixed))
