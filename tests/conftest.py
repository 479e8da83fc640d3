"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import tiny_recipe, write_recipe

# Tests run on the CPU with one intra-op thread so results are reproducible and parallel
# subprocesses do not oversubscribe the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_recipe_file(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path / "runs"))
