"""The public run-directory API (``kdtool.run.Run``): opening, summary, models, safe updates,
the run of an exported artifact (relative in the manifest), and old files still loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdtool.errors import KdtoolError, RunError
from kdtool.run import Run
from tests.helpers import REPO, tiny_recipe


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run (teacher + student) with an ONNX export inside it."""
    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.export.driver import ExportRequest, export_model
    from kdtool.recipe import recipe_from_dict

    root = tmp_path_factory.mktemp("runapi")
    recipe = tiny_recipe(root / "runs")
    recipe["stages"] = recipe["stages"][:2]
    for stage in recipe["stages"]:
        stage["steps"] = 5
    run_dir = Engine(recipe_from_dict(recipe), DistillOptions(progress=False, echo=lambda _m: None)).run()
    export_model(ExportRequest(run=run_dir, target="onnx", eval_limit=16), echo=lambda _m: None)
    return run_dir


def test_open_gives_summary_recipe_and_task(runs: Path) -> None:
    run = Run.open(runs)
    assert run.run_dir == runs.resolve()
    assert run.summary["status"] == "complete"
    assert set(run.models) == {"teacher", "student"}
    assert run.recipe.name == "tiny"
    assert run.task.name == "image_classification"
    assert run.model_name(None) == run.summary["deploy_model"]
    # a recipe's runs folder opens its latest run
    assert Run.open(runs.parent).run_dir == runs.resolve()


def test_open_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(RunError, match="nowhere"):
        Run.open(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match=r"empty is not a kdtool run directory \(no summary.json\)"):
        Run.open(empty)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(RunError, match="notes.txt is a file, not a kdtool run directory"):
        Run.open(a_file)
    no_recipe = tmp_path / "half"
    no_recipe.mkdir()
    (no_recipe / "summary.json").write_text(json.dumps({"schema_version": 1, "models": {}}))
    with pytest.raises(RunError, match="half has no recipe.resolved.yaml"):
        Run.open(no_recipe)


def test_unknown_model_is_a_clear_error(runs: Path) -> None:
    with pytest.raises(RunError, match="has no model 'studnet'") as info:
        Run.open(runs).load_model("studnet")
    assert "student" in str(info.value.hint)


def test_load_model_round_trip_through_add_model(runs: Path, tmp_path: Path) -> None:
    import torch

    work = tmp_path / "run"
    shutil.copytree(runs, work)
    run = Run.open(work)
    student = run.load_model("student")
    assert not student.training
    config = run.model_config("student")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.nn.init.constant_(next(student.parameters()), 0.25)
        expected = student(x)
    entry = run.add_model("student_copy", module=student, config=config, role="student", note="by a test")
    assert entry["weights"] == "models/student_copy.safetensors"
    assert entry["params"] == sum(p.numel() for p in student.parameters())
    again = Run.open(work)  # a fresh reader sees it in summary.json
    assert again.models["student_copy"]["note"] == "by a test"
    with torch.no_grad():
        got = again.load_model("student_copy")(x)
    torch.testing.assert_close(got, expected)
    with pytest.raises(RunError, match="pass both module and config"):
        run.add_model("half", module=student)


def test_add_model_from_two_processes_keeps_both(runs: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(runs, work)
    script = textwrap.dedent(
        """
        import sys
        from kdtool.run import Run
        run = Run.open(sys.argv[1])
        for i in range(25):
            run.add_model(f"{sys.argv[2]}-{i}", role="extra", index=i)
        assert "torch" not in sys.modules, "add_model of an entry imported torch"
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(work), tag], env=_env(), cwd=tmp_path)
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    models = Run.open(work).models
    assert {f"{t}-{i}" for t in "ab" for i in range(25)} <= set(models)
    assert {"teacher", "student"} <= set(models)  # nothing lost by the concurrent writers


def test_update_summary_merges_and_rereads(runs: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(runs, work)
    first, second = Run.open(work), Run.open(work)
    first.update_summary({"note": "one"})
    second.update_summary(lambda s: s.setdefault("extras", []).append("two"))  # second read the file anew
    summary = Run.open(work).summary
    assert summary["note"] == "one" and summary["extras"] == ["two"]


def test_old_summary_without_version_or_status_loads(runs: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(runs, work)
    path = work / "summary.json"
    old = json.loads(path.read_text())
    old.pop("schema_version")
    old.pop("status")
    path.write_text(json.dumps(old))
    run = Run.open(work)
    assert run.summary["status"] == "complete"
    assert run.summary["schema_version"] == 1
    assert run.load_model("student") is not None
    path.write_text(json.dumps({**old, "schema_version": 99}))
    with pytest.raises(RunError, match="schema_version 99; this kdtool reads up to 1"):
        _ = Run.open(work).summary


def _export_dir(run_dir: Path) -> Path:
    (folder,) = [p for p in (run_dir / "exports").iterdir() if p.is_dir()]
    return folder


def test_manifest_refers_to_its_run_relatively(runs: Path) -> None:
    manifest = json.loads((_export_dir(runs) / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert not Path(manifest["source"]["run"]).is_absolute()
    assert Run.of_artifact(_export_dir(runs)).run_dir == runs.resolve()


def test_copied_run_with_its_export_finds_the_copy(runs: Path, tmp_path: Path) -> None:
    from kdtool.cli.evaluate import evaluate_target

    elsewhere = tmp_path / "moved" / "somewhere" / "run"
    shutil.copytree(runs, elsewhere)
    # the original must not be what is found: hide it while the copy is used
    hidden = runs.with_name(runs.name + ".hidden")
    runs.rename(hidden)
    try:
        artifact = _export_dir(elsewhere)
        assert Run.of_artifact(artifact).run_dir == elsewhere.resolve()
        assert Run.of_artifact(artifact / "manifest.json").run_dir == elsewhere.resolve()
        result = evaluate_target(artifact, limit=16)
        assert result["kind"] != "pytorch" and "accuracy" in result["metrics"]
        # an artifact copied without its run says where it looked
        alone = tmp_path / "alone"
        shutil.copytree(artifact, alone)
        with pytest.raises(KdtoolError, match="is not at"):
            Run.of_artifact(alone)
    finally:
        hidden.rename(runs)


def test_old_manifest_with_absolute_run_still_loads(runs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "old-artifact"
    shutil.copytree(_export_dir(runs), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 1
    manifest["source"] = {k: v for k, v in manifest["source"].items() if k != "run_at_export"}
    manifest["source"]["run"] = str(runs.resolve())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Run.of_artifact(copy).run_dir == runs.resolve()
    manifest["schema_version"] = 7
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KdtoolError, match="schema_version 7"):
        Run.of_artifact(copy)


def test_run_context_is_a_deprecated_alias(runs: Path) -> None:
    from kdtool.export.driver import RunContext

    with pytest.warns(DeprecationWarning, match=r"kdtool.run.Run.open"):
        ctx = RunContext(runs)
    assert isinstance(ctx, Run) and ctx.run_dir == runs.resolve()


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


def test_export_driver_does_not_import_the_trainer() -> None:
    assert "kdtool.engine.trainer" not in _modules_after("import kdtool.export.driver")


def test_import_kdtool_run_is_light() -> None:
    loaded = _modules_after("import kdtool.run")
    assert "torch" not in loaded and "kdtool.engine.trainer" not in loaded


def _tiny_run(root: Path, steps: int = 3) -> Path:
    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.recipe import recipe_from_dict

    recipe = tiny_recipe(root / "runs")
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0]["steps"] = steps
    return Engine(recipe_from_dict(recipe), DistillOptions(progress=False, echo=lambda _m: None)).run()


def test_engine_calls_on_run_end_with_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdtool_classification.task import ClassificationTask

    seen: list[tuple[str, str]] = []

    def on_run_end(self: ClassificationTask, run: Run) -> None:
        seen.append((run.summary["status"], run.task is self and "same task"))
        run.update_summary(extra_field=42)
        run.add_model("derived", role="derived", weights=None)

    monkeypatch.setattr(ClassificationTask, "on_run_end", on_run_end)
    run_dir = _tiny_run(tmp_path)
    assert seen == [("complete", "same task")]
    summary = Run.open(run_dir).summary
    assert summary["extra_field"] == 42 and summary["status"] == "complete"
    assert summary["models"]["derived"]["role"] == "derived" and "teacher" in summary["models"]


def test_summary_extras_still_works_and_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from kdtool_classification.task import ClassificationTask

    from kdtool.engine import trainer

    monkeypatch.setattr(trainer, "_WARNED_SUMMARY_EXTRAS", set())

    def summary_extras(self: ClassificationTask, run_dir: Path) -> dict[str, object]:
        return {"legacy": True, "models": {"old_style": {"role": "extra"}}}

    monkeypatch.setattr(ClassificationTask, "summary_extras", summary_extras)
    with pytest.warns(DeprecationWarning, match="summary_extras, deprecated.*on_run_end"):
        first = _tiny_run(tmp_path / "a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tiny_run(tmp_path / "b")
    assert not [w for w in caught if "summary_extras" in str(w.message)]  # once per task class
    summary = Run.open(first).summary
    assert summary["legacy"] is True and summary["models"]["old_style"] == {"role": "extra"}


def test_docs_name_only_what_run_has(runs: Path) -> None:
    import re

    text = (REPO / "docs" / "run-api.md").read_text(encoding="utf-8")
    names = set(re.findall(r"\b(?:run|Run)\.([a-z_]+)", text))
    assert {"open", "of_artifact", "summary", "task", "load_model", "add_model", "update_summary"} <= names
    run = Run.open(runs)
    missing = sorted(n for n in names if not hasattr(run, n))
    assert not missing, f"docs/run-api.md names Run attributes that do not exist: {missing}"
