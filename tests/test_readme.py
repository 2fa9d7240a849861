import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts the README's test command; make sure it finds the intended line."""
    script = (ROOT / ".ci" / "run").read_text()
    awk = script.split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    found = subprocess.run(["bash", "-c", f"{awk} README.md"], cwd=ROOT, capture_output=True, text=True).stdout
    assert found.strip().startswith("python3 -m venv .venv")
    assert "pip install torch==2.13.0" in found
    assert "pytest" in found
