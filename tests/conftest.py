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
