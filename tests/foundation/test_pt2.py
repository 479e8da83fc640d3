"""``.pt2`` programs load without running code from the file unless the user trusts it
(items 14 and 17 of the clean-clone trial)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile
from pathlib import Path

import pytest
import torch

from kdtool.errors import ExportError, RecipeError
from kdtool.pt2 import TRUST_ENV, load_program, trusted, unsafe_parts


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _Payload:
    """Unpickling this creates ``path``: the stand-in for code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture
def program_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(_Tiny().eval(), (torch.randn(1, 3),)), str(path))
    return path


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the zip ``src`` with the members whose names end with a key replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new
            zout.writestr(item, data)
    return dst


def test_a_plain_program_loads_without_trust(program_file: Path) -> None:
    assert unsafe_parts(program_file) == []
    module = load_program(program_file).module()
    x = torch.randn(1, 3)
    torch.manual_seed(0)
    assert torch.allclose(module(x), _Tiny()(x))


def test_the_pickle_fallback_cannot_run_code(program_file: Path, tmp_path: Path) -> None:
    """A sample-inputs member that only full unpickling reads: torch.export.load falls back to
    torch.load(weights_only=False) and runs it; kdtool refuses it and nothing runs."""
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    evil = _rewrite(program_file, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": buffer.getvalue()})
    assert unsafe_parts(evil) == []  # structurally a normal archive: only the load shows it
    with pytest.raises(Exception):  # noqa: B017 - torch's own load: runs the payload, then fails
        torch.export.load(str(evil))
    assert marker.exists(), "the test file must really be dangerous"
    marker.unlink()
    with pytest.raises(RecipeError, match="is refused: part of it can only be read by unpickling") as info:
        load_program(evil)
    assert "trust_code: true" in str(info.value) and "--trust" in str(info.value)
    assert not marker.exists()


def test_archives_that_need_pickle_are_refused_before_loading(program_file: Path, tmp_path: Path) -> None:
    # a tensor stored with pickle (what torch does for tensor subclasses)
    with zipfile.ZipFile(program_file) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    for meta in config["config"].values():
        meta["use_pickle"] = True
    pickled = _rewrite(
        program_file, tmp_path / "pickled.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(RecipeError, match=r"refused: .*pickled tensors \(linear.bias"):
        load_program(pickled)
    # a plain torch.save pickle named .pt2 (not a torch.export archive)
    plain = tmp_path / "model.pt2"
    torch.save(_Tiny().state_dict(), plain)
    with pytest.raises(RecipeError, match="old torch.export format .* or not a torch.export archive"):
        load_program(plain)
    # an artifact loader reports its own error kind
    with pytest.raises(ExportError, match="pt2 artifact .* is refused"):
        load_program(plain, what="pt2 artifact", error=ExportError)


def test_trust_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert not trusted() and not trusted(False) and trusted(True)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert trusted()


def test_a_file_that_is_no_archive_gives_one_line_and_no_noise(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("teacher.pt2").write_bytes(b"this is not a zip archive")
    with pytest.raises(RecipeError) as info:
        load_program(Path("teacher.pt2"), what="program teacher")
    message = str(info.value)
    assert f"{tmp_path / 'teacher.pt2'} ('teacher.pt2' resolved against the working directory" in message
    assert "not a zip file" in message
    # trusted, torch itself reads the file and fails loudly: kdtool keeps its noise off stderr
    with pytest.raises(RecipeError, match="cannot load program teacher"):
        load_program(Path("teacher.pt2"), trust=True, what="program teacher")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    with pytest.raises(RecipeError, match=r"not found: .*missing\.pt2 \('missing\.pt2' resolved against"):
        load_program(Path("missing.pt2"))
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored
