"""Export folder identity, whole-folder replacement, report refresh, predict on bad inputs, bench rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import ExportError
from kdtool.export.bench import BenchRow
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from kdtool.report import ReportOptions, write_report
from tests.helpers import run_cli, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("safety")
    recipe = tiny_recipe(tmp / "runs")
    recipe["stages"] = recipe["stages"][:2]
    for stage in recipe["stages"]:
        stage["steps"] = 10
    path = write_recipe(tmp / "r.yaml", recipe)
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def export(run_dir: Path, **kw: Any) -> Any:
    return export_model(ExportRequest(run=run_dir, target="onnx", eval_limit=50, **kw), echo=lambda _m: None)


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def test_precision_is_part_of_the_folder_and_a_different_artifact_is_not_overwritten(run_dir: Path) -> None:
    fp32 = export(run_dir).directory
    fp16 = export(run_dir, precision="fp16").directory
    assert fp32 == run_dir / "exports" / "onnx-cpu" and fp16 == run_dir / "exports" / "onnx-cpu-fp16"
    assert manifest(fp32)["precision"] == "fp32" and manifest(fp16)["precision"] == "fp16"
    assert export(run_dir, batch=4).directory.name == "onnx-cpu-b4"
    # an explicit --out onto an FP32 artifact with another precision is refused...
    mine = export(run_dir, out=run_dir / "mine").directory
    before = (mine / "model.onnx").read_bytes()
    with pytest.raises(ExportError) as info:
        export(run_dir, precision="fp16", out=mine)
    text = str(info.value)
    assert "different artifact: precision 'fp32' (now 'fp16')" in text and "--force" in text
    assert (mine / "model.onnx").read_bytes() == before and manifest(mine)["precision"] == "fp32"
    # ...as is a folder that is not an artifact
    other = run_dir / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a kdtool artifact"):
        export(run_dir, out=other)
    assert (other / "notes.txt").exists()
    # --force replaces it; the same artifact made again replaces the old one without --force
    assert manifest(export(run_dir, precision="fp16", out=mine, force=True).directory)["precision"] == "fp16"
    assert manifest(export(run_dir, precision="fp16", out=mine).directory)["precision"] == "fp16"


def test_a_failure_while_replacing_leaves_the_old_folder_whole(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_dir / "whole"
    first = export(run_dir, out=out).manifest
    files = sorted(p.name for p in out.iterdir())

    def broken(*_a: Any, **_k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("kdtool.export.driver.write_manifest", broken)
    with pytest.raises(OSError):
        export(run_dir, out=out)
    assert sorted(p.name for p in out.iterdir()) == files
    assert manifest(out)["created"] == first["created"]


def test_export_refreshes_the_run_report(run_dir: Path) -> None:
    report = write_report(run_dir, ReportOptions(measure=False, task_figures=False))
    assert "onnx-cpu-fp16-teacher" not in report.read_text()
    export(run_dir, precision="fp16", model="teacher")
    assert "onnx-cpu-fp16-teacher" in report.read_text()


def test_predict_writes_good_results_reports_bad_inputs_and_never_writes_into_the_artifact(
    run_dir: Path, tmp_path: Path
) -> None:
    artifact = export(run_dir, out=tmp_path / "exported").directory  # the module's run is shared
    good = tmp_path / "digit.png"
    Image.new("L", (8, 8), 255).save(good)
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    result = run_cli(
        ["predict", str(artifact), str(good), str(bad), str(tmp_path / "missing.png")], cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr
    printed = json.loads(result.stdout)
    assert printed["input"] == str(good) and "label" in printed
    err = " ".join(result.stderr.split())
    assert "broken.png" in err and "missing.png" in err and "2 of 3 inputs" in err
    assert not (artifact / "predictions").exists()
    inside = run_cli(["predict", str(artifact), str(good), "--out", str(artifact / "p")], cwd=tmp_path)
    assert inside.returncode != 0 and "inside the artifact" in inside.stderr
    assert not (artifact / "p").exists()


def test_bench_measures_each_row_in_its_own_process_at_full_width(run_dir: Path, tmp_path: Path) -> None:
    artifact = export(run_dir, out=tmp_path / "exported").directory  # the module's run is shared
    args = ["bench", str(artifact), str(artifact), "--seconds", "0.1", "--no-metric"]
    as_json = run_cli([*args, "--json"], cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)["rows"]
    # the same artifact twice: in one process the second row would reuse the first's memory
    first, second = rows[0]["peak_memory_mb"], rows[1]["peak_memory_mb"]
    assert first > 0 and second > 0.5 * first
    assert all("busy" in r for r in rows)
    table = run_cli(args, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header = next(x for x in table.stdout.splitlines() if "artifact" in x)
    assert "precision" in header and "samples/s" in header and "…" not in header


def test_rows_whose_timings_spread_are_flagged() -> None:
    from kdtool.cli.bench import contention_notes

    steady = BenchRow("a", "onnxruntime", "m", "fp32", 1, latency_ms_p50=1.0, latency_ms_p90=1.1)
    busy = BenchRow("b", "onnxruntime", "m", "fp32", 1, latency_ms_p50=1.0, latency_ms_p90=3.0)
    notes = contention_notes([steady, busy])
    assert len(notes) == 1 and notes[0].startswith("b: p90/p50 = 3.0")
