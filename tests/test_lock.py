"""The lock (constraints.txt): both README commands install through it, it pins every dependency the package and
its extras declare, and its pins satisfy the ranges pyproject.toml claims. Plus the report helpers of
tools/try_newest.py, the command that bumps it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

spec = importlib.util.spec_from_file_location("try_newest", ROOT / "tools" / "try_newest.py")
try_newest = importlib.util.module_from_spec(spec)
sys.modules["try_newest"] = try_newest
spec.loader.exec_module(try_newest)

LOCK = try_newest.read_pins((ROOT / "constraints.txt").read_text())


def _declared_requirements() -> list[Requirement]:
    project = try_newest.tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    # an extra that names the project itself (test = ["depth2img[web]", "depth2img[ray,video]"]) adds that extra's
    # own requirements, which are listed here too
    requirements = [r for r in map(Requirement, requirements) if try_newest.normalise(r.name) != project["name"]]
    # the lock is made on one Python: requirements whose marker excludes it are not in it
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize("marker", ["<!-- run-command -->", "<!-- test-command -->"])
def test_readme_commands_install_through_the_lock(marker):
    command = re.search(r"```bash\n(.*?)\n```", README.split(marker, 1)[1], re.S).group(1)
    project_installs = [part for part in command.split("&&") if re.search(r"pip install .*-e ", part)]
    assert project_installs, command
    assert all("-c constraints.txt" in part for part in project_installs), command
    torch_pin = re.search(r"pip install torch==([0-9.]+)", command).group(1)
    assert LOCK["torch"] == torch_pin  # the torch the README installs first is the one the lock was tested with


@pytest.mark.parametrize("requirement", _declared_requirements(), ids=str)
def test_the_lock_pins_every_declared_dependency_within_its_range(requirement):
    name = try_newest.normalise(requirement.name)
    assert name in LOCK, f"{name} is declared in pyproject.toml but not pinned in constraints.txt"
    assert requirement.specifier.contains(LOCK[name], prereleases=True), (requirement, LOCK[name])


def test_security_floors():
    """torch.load(weights_only=True) reads our single-file checkpoints; torch <= 2.5.1 can be made to execute code
    through it (CVE-2025-32434), so no declared range may admit such a torch."""
    declared = {try_newest.normalise(r.name): r.specifier for r in _declared_requirements()}
    assert not declared["torch"].contains("2.5.1")
    assert declared["torch"].contains("2.6.0")


def test_read_pins_normalises_names_and_ignores_comments():
    pins = try_newest.read_pins("# a comment\nJinja2==3.1.6\ntyping_extensions==4.16.0  # why\n-e .\nfoo>=1\n")
    assert pins == {"jinja2": "3.1.6", "typing-extensions": "4.16.0"}


def test_pytest_summary_is_found():
    output = "....F\nFAILED tests/test_a.py::test_b - AssertionError\n==== 1 failed, 4 passed in 3.21s ====\n"
    closing, failures = try_newest.summarise_pytest(output)
    assert closing == "1 failed, 4 passed in 3.21s"
    assert failures == ["FAILED tests/test_a.py::test_b - AssertionError"]


def test_claimed_floors_are_the_package_dependencies_lower_bounds():
    floors = dict(floor.split("==") for floor in try_newest.claimed_floors())
    assert floors["torch"] == "2.6"
    tomllib = try_newest.tomllib
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(floors) == {try_newest.normalise(Requirement(text).name) for text in dependencies}
    assert "diffusers" not in floors  # the oracle is a test tool, not a claim about users' installs
