"""Run reports and comparison pages on a real tiny run: contents, numbers, figures, escaping."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from kdtool.plugins import get_plugin_manager
from kdtool.registry import Entry
from kdtool.report import ReportOptions, comparison_path, write_comparison, write_report
from kdtool.report.collect import collect_run, distillation_gain
from kdtool.report.measure import MEASUREMENTS_FILE, module_flops, rnn_flops
from tests.helpers import run_cli

IMG_RE = re.compile(r'<img src="data:([^;"]+);base64,([^"]+)"')
FAST = ReportOptions(latency_seconds=0.05)


def embedded_images(page: str) -> list[Image.Image]:
    """Decode every embedded image (fails the test if one does not decode)."""
    out = []
    for mime, data in IMG_RE.findall(page):
        assert mime in ("image/png", "image/jpeg")
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        img.load()
        assert img.width > 10 and img.height > 10
        out.append(img)
    return out


def copy_run(run_dir: Path, dest: Path) -> Path:
    target = dest / run_dir.name
    shutil.copytree(run_dir, target, symlinks=True)
    return target


def png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# --------------------------------------------------------------------------- numbers


def test_distillation_gain_is_signed_by_the_metric_direction() -> None:
    assert distillation_gain(0.8, 0.7, True) == pytest.approx(0.1)
    assert distillation_gain(0.7, 0.8, True) == pytest.approx(-0.1)
    # lower is better (e.g. NME, WER): a lower student metric is a positive gain
    assert distillation_gain(0.2, 0.3, False) == pytest.approx(0.1)
    assert distillation_gain(None, 0.3, False) is None


def test_flop_count_of_linear_and_conv_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    # conv: 4 out-ch x 6x6 positions x (3 in-ch x 3x3) MACs; linear: 144 x 5 MACs
    macs = 4 * 36 * 27 + 144 * 5
    assert module_flops(model, (torch.randn(1, 3, 8, 8),)) == 2 * macs


def test_fused_lstm_is_counted_and_the_rnn_formula_matches_torch_on_a_gru() -> None:
    # torch's counter sees the GRU's decomposed matmuls: the analytic formula must agree
    gru = nn.GRU(16, 32, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(2, 7, 16)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gru(x)
    assert counter.get_total_flops() > 0
    assert rnn_flops(gru, (x,)) == counter.get_total_flops()
    # the fused CPU LSTM is invisible to the counter; the hook adds it (hand formula)
    lstm = nn.LSTM(16, 32, batch_first=True)
    assert module_flops(lstm, (torch.randn(1, 10, 16),)) == 2 * 10 * 4 * 32 * (16 + 32)


# --------------------------------------------------------------------------- one run


@pytest.fixture(scope="module")
def report(report_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = copy_run(report_run, tmp_path_factory.mktemp("one"))
    path = write_report(run, FAST)
    return run, path.read_text(encoding="utf-8")


def test_report_is_written_in_the_run_and_self_contained(report: tuple[Path, str]) -> None:
    run, page = report
    assert (run / "report.html").is_file()
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    assert "<script" not in lowered  # nothing needs JavaScript
    assert "http://" not in lowered and "https://" not in lowered  # nothing from the network
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # only data: URIs and anchors
    images = embedded_images(page)
    # the overview plus one three-panel figure per stage (teacher, student, baseline)
    assert len(images) == 4


def test_models_table_has_every_model_with_params_macs_metric_and_gain(report: tuple[Path, str]) -> None:
    run, page = report
    summary = json.loads((run / "summary.json").read_text())
    models = summary["models"]
    for name, entry in models.items():
        assert f">{name}<" in page or f"<strong>{name}</strong>" in page
        assert f"{entry['params']:,}" in page
        assert f"{entry['metrics']['accuracy']:.4g}" in page
    # distillation gain computed by hand: student accuracy minus its baseline's
    gain = models["student"]["metrics"]["accuracy"] - models["baseline_student"]["metrics"]["accuracy"]
    assert f"{gain:+.4g}" in page
    # MACs by hand for the cls_mlp models (input 8x8 = 64 pixels, Linear layers only)
    measured = json.loads((run / MEASUREMENTS_FILE).read_text())["models"]
    for name, hidden in (("teacher", 64), ("student", 16)):
        config = json.loads((run / models[name]["config"]).read_text())
        assert config["options"].get("hidden") == hidden
        from kdtool.run import Run

        module = Run.open(run).load_model(name)
        linear_macs = sum(
            m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear)
        )
        assert measured[name]["graph_flops"]["model"] == 2 * linear_macs
        latency = next(iter(measured[name]["latency"].values()))
        assert 0 < latency["p50_ms"] <= latency["p90_ms"]


def test_exports_and_recipe_and_environment_are_shown(report: tuple[Path, str]) -> None:
    run, page = report
    manifest = json.loads((run / "exports" / "onnx-cpu" / "manifest.json").read_text())
    assert "onnx-cpu" in page and "model.onnx" in page
    assert f"{manifest['size_bytes'] / 1024:.1f} KB" in page
    assert "passed" in page  # parity badge
    assert html.escape((run / "recipe.resolved.yaml").read_text()) in page
    summary = json.loads((run / "summary.json").read_text())
    assert summary["environment"]["torch"] in page


def test_second_report_reuses_measurements(report: tuple[Path, str]) -> None:
    run, _ = report
    before = (run / MEASUREMENTS_FILE).read_text()
    messages: list[str] = []
    write_report(run, ReportOptions(latency_seconds=0.05, echo=messages.append))
    assert not [m for m in messages if "measured" in m]
    assert (run / MEASUREMENTS_FILE).read_text() == before


# --------------------------------------------------------------------------- figures and escaping


def test_hook_figures_and_figures_folder_are_embedded_once(
    report_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(report_run, tmp_path)
    hook_png = png(run / "figures" / "ced_curve.png", (200, 0, 0))
    png(run / "figures" / "samples" / "sheet_student.png", (0, 0, 200))
    (run / "figures" / "broken.png").write_bytes(b"not a png")
    registry = get_plugin_manager().registries(strict=False).report_figures
    calls: list[Path] = []

    def figures(run_dir: Path) -> list[Path]:
        calls.append(run_dir)
        return [Path("figures/ced_curve.png")]  # relative to the run

    def broken_hook(run_dir: Path) -> list[Path]:
        raise RuntimeError("hook exploded")

    monkeypatch.setitem(registry._entries, "test_ced", Entry("test_ced", figures, "tests", "CED <curves>"))
    monkeypatch.setitem(registry._entries, "test_broken", Entry("test_broken", broken_hook, "tests", ""))
    page = write_report(run, ReportOptions(measure=False)).read_text()
    assert calls == [run.resolve()]
    images = embedded_images(page)
    colours = [img.convert("RGB").getpixel((5, 5)) for img in images]
    assert colours.count((200, 0, 0)) == 1 and colours.count((0, 0, 200)) == 1  # each file once
    assert "CED &lt;curves&gt;" in page  # the hook's description, escaped
    assert "figures/samples/" in page and "sheet student" in page
    # a broken file and a failing hook become notes, not a failed report
    assert "broken.png" in page and "cannot be decoded" in page
    assert "hook exploded" in page
    assert hook_png.exists()


def test_text_from_the_run_is_escaped(report_run: Path, tmp_path: Path) -> None:
    run = copy_run(report_run, tmp_path)
    hostile = '<img src=x onerror="alert(1)">'
    summary = json.loads((run / "summary.json").read_text())
    summary["models"]["teacher"]["kept"] = hostile
    summary["environment"]["python"] = hostile
    (run / "summary.json").write_text(json.dumps(summary))
    png(run / "figures" / "<b>bold</b>.png", (0, 120, 0))
    page = write_report(run, ReportOptions(measure=False)).read_text()
    assert hostile not in page and "<b>bold</b>" not in page
    assert html.escape(hostile) in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_partial_run_without_weights_still_reports(report_run: Path, tmp_path: Path) -> None:
    run = copy_run(report_run, tmp_path)
    (run / "models" / "baseline_student.safetensors").unlink()
    shutil.rmtree(run / "exports")
    data = collect_run(run, ReportOptions(latency=False))
    row = data.model("baseline_student")
    assert row is not None and not row.has_weights and row.measurement.macs is None
    page = write_report(run, ReportOptions(latency=False)).read_text()
    assert "no weights" in page and "No exported artifacts yet" in page


# --------------------------------------------------------------------------- comparison


def test_comparison_of_two_runs(report_run: Path, tmp_path: Path) -> None:
    a = copy_run(report_run, tmp_path / "a")
    b = copy_run(report_run, tmp_path / "b")
    recipe = (b / "recipe.resolved.yaml").read_text()
    assert "seed: 0" in recipe
    (b / "recipe.resolved.yaml").write_text(recipe.replace("seed: 0", "seed: 1", 1))
    summary = json.loads((b / "summary.json").read_text())
    summary["models"]["student"]["metrics"]["accuracy"] = 0.5
    (b / "summary.json").write_text(json.dumps(summary))
    path = write_comparison([a, b], FAST)
    assert path == a / f"compare-tiny-{b.name}.html"
    page = path.read_text()
    assert f"tiny/{a.name}" in page and f"tiny/{b.name}" in page
    assert "<span class='diff-add'>+seed: 1</span>" in page
    assert "<span class='diff-del'>-seed: 0</span>" in page
    assert ">0.5</strong>" in page  # run b's student metric
    assert len(embedded_images(page)) == 1  # the overlaid validation curves
    assert "<script" not in page.lower()
    # --out wins
    out = write_comparison([b, a], FAST, out=tmp_path / "cmp.html")
    assert out == tmp_path / "cmp.html" and out.is_file()


def test_comparison_needs_two_distinct_runs(report_run: Path) -> None:
    from kdtool.errors import RunError

    with pytest.raises(RunError, match="two or more"):
        write_comparison([report_run], FAST)
    with pytest.raises(RunError, match="twice"):
        write_comparison([report_run, report_run], ReportOptions(measure=False))


def test_comparison_path_is_sanitised(report_run: Path) -> None:
    data = collect_run(report_run, ReportOptions(measure=False, task_figures=False))
    data2 = collect_run(report_run, ReportOptions(measure=False, task_figures=False))
    data2.summary = {**data2.summary, "recipe": "a b/../c"}
    path = comparison_path([data, data2])
    assert path.parent == data.run_dir and "/" not in path.name[len("compare-") :] and " " not in path.name


# --------------------------------------------------------------------------- CLI


def test_cli_report_and_errors(report_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdtool.cli import main

    run = copy_run(report_run, tmp_path)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--latency-seconds", "0.05", "--no-figures", "--out", str(out)]) == 0
    assert out.is_file() and f"report: {out}" in capsys.readouterr().out
    assert not (run / "report.html").exists()
    # a comparison through the CLI, into a folder given with --out
    assert main(["report", str(run), str(report_run), "--no-measure", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("compare-tiny-*.html"))) == 1
    assert main(["report", str(tmp_path / "nope")]) == 6  # RunError: no run there
    assert main(["report", str(run), "--latency-threads", "0"]) == 6


@pytest.mark.slow
def test_distill_writes_the_report_unless_told_not_to(tmp_path: Path) -> None:
    from tests.helpers import tiny_recipe, write_recipe

    recipe = tiny_recipe(tmp_path / "runs")
    for stage in recipe["stages"]:
        stage["steps"] = 5
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = run_cli(["distill", str(path), "--no-progress"])
    assert result.returncode == 0, result.stderr
    run = (tmp_path / "runs" / "latest").resolve()
    assert (run / "report.html").is_file() and f"report: {run / 'report.html'}" in result.stdout
    assert "<img" in (run / "report.html").read_text()
    # the command itself, in a fresh process, on runs/latest by default
    again = run_cli(["report", "--no-measure"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    result = run_cli(["distill", str(path), "--no-progress", "--no-report"])
    assert result.returncode == 0, result.stderr
    run2 = (tmp_path / "runs" / "latest").resolve()
    assert run2 != run and not (run2 / "report.html").exists()
