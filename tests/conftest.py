"""Shared test fixtures: the oracle guard, seeding, and the shared reference folder."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "sd2-depth"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Tiny models spend their time synchronising threads, not computing: on a busy 2-core machine, two OpenMP
# threads waiting on each other made a tiny VAE encode ~100x slower (1.7 s instead of 15 ms). One thread keeps
# the suite fast and steady; DEPTH2IMG_TEST_THREADS=N overrides (e.g. for slow full-size tests).
torch.set_num_threads(int(os.environ.get("DEPTH2IMG_TEST_THREADS", "1")))


def require(module_name: str):
    """Import an oracle/optional module. Missing: skip locally, but FAIL under CI=true (no silent skips)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if IN_CI:
            pytest.fail(f"{module_name} is required in CI (pip install -e '.[test]'): {error}")
        pytest.skip(f"{module_name} not installed")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def diffusers():
    """The reference implementation (the oracle)."""
    return require("diffusers")


# ---------------------------------------------------------------------------------------------- fuzzing (Hypothesis)
# The default profile keeps the property-based tests fast and repeatable (few examples, a fixed seed, no database);
# HYPOTHESIS_PROFILE=long runs many more random cases (see docs/errors.md). No deadline: a shared CPU's timing is
# no bug; hangs are caught by tests/fuzz_support.within instead.
try:
    from hypothesis import HealthCheck
    from hypothesis import settings as hypothesis_settings
except ImportError:  # the fuzz tests require() it themselves
    pass
else:
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    hypothesis_settings.register_profile(
        "default", max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=_SLOW_OK
    )
    hypothesis_settings.register_profile("long", max_examples=600, deadline=None, suppress_health_check=_SLOW_OK)
    hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' tally (cases run, and how each ended), for the record."""
    from fuzz_support import TALLY

    if TALLY:
        terminalreporter.write_sep("-", "fuzz tally (cases by kind and outcome)")
        for (kind, outcome), count in sorted(TALLY.items()):
            terminalreporter.write_line(f"{kind:<28} {outcome:<32} {count}")
        terminalreporter.write_line(f"{'total':<61} {sum(TALLY.values())}")
