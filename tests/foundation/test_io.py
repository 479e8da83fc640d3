"""Files written through the atomic writer get the mode a plain write would: 0666 less the
umask (not mkstemp's private 0600), so shared artifact folders and served reports stay
readable (item 18 of the clean-clone trial)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kdtool.io import atomic_path, current_umask, save_weights, write_json, write_text


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    assert current_umask() == mask
    write_text(tmp_path / "report.html", "<html></html>")
    write_json(tmp_path / "summary.json", {"a": 1})
    save_weights({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what an ordinary open() gives, for comparison
    expected = 0o666 & ~mask
    for name in ("report.html", "summary.json", "model.safetensors"):
        assert _mode(tmp_path / name) == expected == _mode(plain), name
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
