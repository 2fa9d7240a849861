"""The layer contract (docs/architecture.md, [tool.importlinter] in pyproject.toml): kept by the package, broken by
an upward import, and no import cycle anywhere in src/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "depth2img"


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``project/src``, with ``project/pyproject.toml``'s contracts."""
    require("importlinter")
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(project / "src")}  # ahead of the installed (editable) package
    return subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True)


def test_the_package_keeps_the_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: (\d+) kept, 0 broken", done.stdout).group(1) == "4"


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("models/unet.py", "from ..pipeline import Depth2ImgPipeline", "Layers: the front ends on the pipeline"),
        ("loading/hub.py", "from ..cli import main", "Layers: the front ends on the pipeline"),
        ("offload.py", "from .loading.hub import resolve_folder", "Low-memory mode reads the files"),
        ("loading/weights.py", "from . import model_folder", "No import cycles"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, bad_import, contract):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    copy = tmp_path / "src" / "depth2img"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "configs", "data"))
    with (copy / module).open("a", encoding="utf-8") as file:
        file.write(f"\n{bad_import}  # the one bad line\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = re.sub(r"\s+", " ", done.stdout.split("Broken contracts", 1)[1])
    assert f"{contract}" in broken and "BROKEN" in done.stdout


def test_no_module_imports_itself_back():
    """No import cycle between any two modules of src/ (acyclic_siblings checks siblings; this checks all)."""
    grimp = require("grimp")
    graph = grimp.build_graph("depth2img", cache_dir=None)
    cycle = _find_cycle({module: graph.find_modules_directly_imported_by(module) for module in graph.modules})
    assert cycle is None, " -> ".join(cycle)


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or None: depth-first search, iteratively."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    for start in sorted(edges):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = "open"
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(following) == "open":
                return path[path.index(following) :] + [following]
            elif following not in state:
                state[following] = "open"
                path.append(following)
                stack.append(iter(sorted(edges.get(following, ()))))
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_architecture_doc_names_only_files_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+(?:\.py|/))`", text))
    assert len(named) > 20
    planned = {"web/", "batch/"}  # front ends being built on other branches
    missing = sorted(
        name for name in named - planned if not (ROOT / name if name.startswith("tests/") else PACKAGE / name).exists()
    )
    assert missing == []
