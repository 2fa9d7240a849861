"""The README's promises: CI runs its test command, and its runnable Python example runs as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _command_after(marker: str) -> str:
    block = README.split(marker, 1)[1]
    return re.search(r"```bash\n(.*?)\n```", block, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts the README's test command; make sure it finds the intended line."""
    script = (ROOT / ".ci" / "run").read_text()
    awk = script.split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    found = subprocess.run(["bash", "-c", f"{awk} README.md"], cwd=ROOT, capture_output=True, text=True).stdout
    assert found.strip() == _command_after("<!-- test-command -->")
    assert found.strip().startswith("python3 -m venv .venv")
    assert "pip install torch==2.13.0" in found
    assert "pytest" in found


def test_run_command_uses_the_shipped_example():
    command = _command_after("<!-- run-command -->")
    assert "depth2img generate -i examples/room.jpg" in command
    assert (ROOT / "examples" / "room.jpg").is_file()


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) == 1 and "write_random_pipeline" in blocks[0]
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "room.jpg").symlink_to(ROOT / "examples" / "room.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme_example"})
    with PIL.Image.open(tmp_path / "tigers.png") as image:
        assert image.size == (64, 48)
