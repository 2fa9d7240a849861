"""Try the project on other dependency versions, in a throwaway venv, and report what changed and what broke.

    python tools/try_newest.py                 # newest releases of every dependency (torch stays at the lock's)
    python tools/try_newest.py --write-lock    # ... and rewrite constraints.txt if the suite passes
    python tools/try_newest.py --lowest        # the floors pyproject.toml claims for the package's dependencies
    python tools/try_newest.py --torch "torch==2.15.0"  # another torch too (a pip requirement, installed first)

The lock (constraints.txt) is what the README's commands install; this is how it gets bumped on purpose: the
report lists every version that differs from the lock and the suite's result, so a broken upstream release is
seen here, named, and kept out of the lock, instead of turning CI red by surprise. Nothing outside the
throwaway venv is changed unless --write-lock is given and the suite passed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints.txt"


def read_pins(text: str) -> dict[str, str]:
    """{normalised name: version} from `name==version` lines (comments and other lines ignored)."""
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_extras() -> list[str]:
    return sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))


def claimed_floors() -> list[str]:
    """`name==floor` for every `name>=floor` of the package's own dependencies (what --lowest installs; the extras'
    tools, the test oracle among them, stay at their newest)."""
    floors = []
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
        if match:
            floors.append(f"{normalise(match.group(1))}=={match.group(3)}")
    return floors


def run(command: list[str], log, **kwargs) -> int:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, **kwargs).returncode


def summarise_pytest(output: str) -> tuple[str, list[str]]:
    """(pytest's closing line, the FAILED/ERROR lines of its short summary)."""
    closing = ""
    for line in output.splitlines():
        if re.search(r"\b(passed|failed|error|errors|no tests ran)\b.* in [0-9.]+s", line):
            closing = line.strip("= ").strip()
    failures = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return closing, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lowest", action="store_true", help="install the claimed floors instead of the newest")
    parser.add_argument("--torch", help="the torch requirement to install first (default: the lock's, or the floor)")
    parser.add_argument("--write-lock", action="store_true", help="rewrite constraints.txt when the suite passes")
    parser.add_argument("--report", type=Path, help="also write the report (markdown) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway venv and print its path")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -- -x -k lora")
    args = parser.parse_args(argv)
    if args.lowest and args.write_lock:
        parser.error("--write-lock takes the newest versions; it cannot be combined with --lowest")

    lock = read_pins(LOCK.read_text())
    floors = claimed_floors()
    torch_requirement = args.torch or (
        next(floor for floor in floors if normalise(floor.split("==")[0]) == "torch")
        if args.lowest
        else f"torch=={lock['torch']}"
    )
    extras = ",".join(project_extras())
    workdir = Path(tempfile.mkdtemp(prefix="depth2img-try-"))
    venv = workdir / "venv"
    python = str(venv / "bin" / "python")
    log_path = workdir / "install-and-test.log"
    started = time.time()
    with open(log_path, "w") as log:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [python, "-m", "pip", "install", "--upgrade", "pip"],
            [python, "-m", "pip", "install", *torch_requirement.split()],
            [python, "-m", "pip", "install", "--upgrade", "-e", f".[{extras}]"]
            + ([floor for floor in floors if not floor.startswith("torch==")] if args.lowest else []),
        ]
        for step in steps:
            if run(step, log) != 0:
                print(f"install failed: {' '.join(step)}\nlog: {log_path}", file=sys.stderr)
                return 1
        freeze = subprocess.run(
            [python, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
        ).stdout
        log.write("$ pytest\n")
        log.flush()
        test = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},  # pytest cuts its summary lines to the terminal's width
        )
        log.write(test.stdout + test.stderr)

    installed = read_pins(freeze)
    installed["torch"] = installed.get("torch", "").split("+")[0]
    changed = sorted(
        (name, lock.get(name, "—"), version) for name, version in installed.items() if lock.get(name) != version
    )
    removed = sorted(name for name in lock if name not in installed)
    closing, failures = summarise_pytest(test.stdout)
    mode = "lowest claimed versions" if args.lowest else "newest releases"
    report = [
        f"# Dependency check: {mode} ({time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s)",
        "",
        f"- torch: `{torch_requirement}`; extras: `{extras}`",
        f"- suite: **{closing or 'no pytest summary (see the log)'}** (exit {test.returncode})",
        f"- log: `{log_path}`",
        "",
        "| package | lock | installed |",
        "|---|---|---|",
        *(f"| {name} | {old} | {new} |" for name, old, new in changed),
        *(f"| {name} | {lock[name]} | not installed |" for name in removed),
    ]
    if not changed and not removed:
        report.append("| (none) | | |")
    if failures:
        report += ["", "Failures:", "", *(f"- `{line}`" for line in failures)]
    text = "\n".join(report) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)

    if args.write_lock:
        if test.returncode != 0:
            print("the suite failed: constraints.txt left as it is", file=sys.stderr)
        else:
            header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
            lines = sorted(f"{name}=={version}" for name, version in installed.items())
            LOCK.write_text("\n".join(header + lines) + "\n")
            print(f"constraints.txt rewritten ({len(lines)} pins)")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(venv)])
    else:
        print(f"venv kept: {venv}")
    return test.returncode


if __name__ == "__main__":
    sys.exit(main())
