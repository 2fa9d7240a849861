"""docs/python-api.md promises runnable examples: every ```python block runs, in order, exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

import PIL.Image

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_python_api_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 5
    assert "write_random_pipeline" in blocks[0]  # the tiny end-to-end example comes first
    monkeypatch.chdir(tmp_path)  # the examples write into the working directory
    namespace: dict = {"__name__": "docs_example"}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    with PIL.Image.open(tmp_path / "tigers.png") as image:
        assert image.size == (64, 48)
    assert (tmp_path / "tiny-copy" / "model_index.json").is_file()
    assert namespace["images"].shape == (1, 48, 64, 3)
