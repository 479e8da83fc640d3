"""The distillation engine, through a real task (image_classification on digits)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from kdtool_classification.task import ClassificationTask
from safetensors.torch import load_file

from kdtool.engine.rundir import newest_run
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import RecipeError, RunError, TrainingError
from kdtool.plugins import PluginManager
from kdtool.recipe import load_recipe
from tests.foundation import observer_plugin
from tests.helpers import tiny_recipe, write_recipe


class NaNTask(ClassificationTask):
    """Produces a NaN loss term at step 3."""

    name = "nan_task"

    def training_step(
        self, stage: Any, models: Mapping[str, torch.nn.Module], batch: dict[str, Any], ctx: Any
    ) -> dict[str, torch.Tensor]:
        terms = super().training_step(stage, models, batch, ctx)
        if ctx.step == 3:
            terms["boom"] = terms["ce"] * float("nan")
        return terms


class _TaskPlugin:
    @staticmethod
    @__import__("kdtool").hookimpl
    def register_tasks(register: Any) -> None:
        register("nan_task", NaNTask)


def manager() -> PluginManager:
    pm = PluginManager()
    pm.register_module(observer_plugin, "observer")
    pm.pm.register(_TaskPlugin, name="nan_task_plugin")
    from kdtool.plugins import PluginInfo

    pm.infos["nan_task_plugin"] = PluginInfo(name="nan_task_plugin", module=__name__)
    pm._registries = None
    return pm


def run(path: Path, overrides: list[str] | None = None, **opts: Any) -> Path | dict[str, Any]:
    engine = Engine(
        load_recipe(path, overrides or []),
        DistillOptions(progress=False, echo=lambda _m: None, **opts),
        manager(),
    )
    return engine.dry_run() if opts.get("dry_run") else engine.run()


def weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "models" / f"{name}.safetensors"))


def test_distill_writes_the_run_directory_contract(tmp_path: Path) -> None:
    observer_plugin.EVENTS.clear()
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    run_dir = run(path)
    assert isinstance(run_dir, Path)
    assert (tmp_path / "runs" / "latest").resolve() == run_dir
    assert (tmp_path / "runs" / "tiny" / "latest").resolve() == run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["schema_version"] == 1
    assert summary["task"] == "image_classification" and summary["recipe"] == "tiny"
    assert summary["primary_metric"] == {"name": "accuracy", "higher_is_better": True}
    assert summary["deploy_model"] == "student"
    assert summary["status"] == "complete"
    models = summary["models"]
    assert set(models) == {"teacher", "student", "baseline_student"}
    assert models["baseline_student"]["role"] == "baseline"
    assert models["baseline_student"]["baseline_for"] == "student"
    assert models["student"]["teachers"] == ["teacher"]
    for info in models.values():
        assert info["params"] > 0 and info["train_seconds"] > 0
        assert 0.0 <= info["metrics"]["accuracy"] <= 1.0
        config = json.loads((run_dir / info["config"]).read_text())
        assert config["arch"] == "cls_mlp" and config["options"]["num_classes"] == 10
        assert (run_dir / info["weights"]).exists()
    # the teacher learned something: digits are far from chance after 30 steps
    assert models["teacher"]["metrics"]["accuracy"] > 0.5
    assert (run_dir / "recipe.resolved.yaml").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train" and r["stage"] == "student"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert all("loss/kd" in r and "loss/ce" in r and r["samples_per_s"] > 0 for r in train)
    # lifecycle hooks were called in order
    starts = [e[1] for e in observer_plugin.EVENTS if e[0] == "start"]
    ends = [e[1] for e in observer_plugin.EVENTS if e[0] == "end"]
    assert starts == ends == ["teacher", "student", "baseline_student"]
    ckpts = [e for e in observer_plugin.EVENTS if e[0] == "checkpoint" and e[1] == "student"]
    assert [e[2] for e in ckpts] == [10, 20, 30]
    # keep_last: 2 keeps the two newest checkpoints of the stage
    assert [e[3].is_dir() for e in ckpts] == [False, True, True]


def test_nan_loss_stops_the_stage_naming_step_and_term(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs", task={"name": "nan_task"})
    recipe["checkpoint"] = {"every_steps": 2, "keep_last": 2}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    with pytest.raises(TrainingError) as info:
        run(path)
    assert "step 3" in str(info.value) and "'boom'" in str(info.value)
    failed = newest_run(tmp_path / "runs" / "tiny")
    assert failed is not None and not (tmp_path / "runs" / "tiny" / "latest").exists()
    latest = json.loads((failed / "checkpoints" / "teacher" / "latest.json").read_text())
    assert latest["step"] == 2
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["status"] == "failed" and "step 3" in summary["error"]["message"]


def test_teacher_cache_gives_identical_results_and_is_refused_when_unsafe(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    base = ["stages.student.steps=120"]  # > 1 epoch of 1437 / 32 = 44 steps
    plain = run(path, base)
    cached = run(path, [*base, "stages.student.teacher_cache=true"])
    assert isinstance(plain, Path) and isinstance(cached, Path)
    summary = json.loads((cached / "summary.json").read_text())
    stats = summary["models"]["student"]["teacher_cache"]
    # epoch 1 (44 batches) fills the cache; later batches hit it unless they hold one of the
    # 29 samples that drop_last left out of epoch 1
    assert stats["misses"] + stats["hits"] == 120
    assert stats["misses"] >= 44 and stats["hits"] >= 40
    a, b = weights(plain, "student"), weights(cached, "student")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(RecipeError, match="not fixed per sample"):
        run(path, [*base, "stages.student.teacher_cache=true", "data.augment=true"])


def test_only_skip_and_dry_run(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    plan = run(path, dry_run=True)
    assert isinstance(plan, dict)
    assert plan["models"]["teacher"]["params"] > plan["models"]["student"]["params"]
    assert [s["steps"] for s in plan["stages"]] == [30, 30, 30]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(RunError, match="has not finished"):
        run(path, only=["student"])
    run_dir = run(path, skip=["student"], max_steps=3)
    assert isinstance(run_dir, Path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "baseline_student"}
    assert summary["models"]["teacher"]["steps"] == 3
    assert summary["status"] == "partial"


def test_gradient_accumulation_matches_the_full_batch(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    full = run(path, ["stages.teacher.batch_size=32"], only=["teacher"])
    accum = run(path, ["stages.teacher.batch_size=16", "stages.teacher.grad_accum=2"], only=["teacher"])
    assert isinstance(full, Path) and isinstance(accum, Path)
    a, b = weights(full, "teacher"), weights(accum, "teacher")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_registered_optimizer_and_schedule_are_used(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    run_dir = run(
        path,
        [
            "stages.teacher.optimizer.name=test_sgd",
            "stages.teacher.optimizer.lr=0.2",
            "stages.teacher.schedule.name=test_halve",
        ],
        only=["teacher"],
    )
    assert isinstance(run_dir, Path)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if r["split"] == "train"}
    assert math.isclose(lrs[5], 0.2) and math.isclose(lrs[30], 0.1)


def test_unknown_names_in_recipe_fail_before_training(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    with pytest.raises(
        RecipeError, match=r"(?s)stages.student.losses.kd.loss: unknown loss 'kl_tt'.*did you mean 'kl_t'"
    ):
        run(path, ["stages.student.losses.kd.loss=kl_tt"])
    with pytest.raises(RecipeError, match="did you mean 'cls_mlp'"):
        run(path, ["models.student.arch=cls_mpl"])
    assert not (tmp_path / "runs").exists()


def test_task_sections_are_validated_by_the_task(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    with pytest.raises(
        RecipeError, match=r"r.yaml:\d+: data.image_sise: unknown key .*did you mean 'image_size'"
    ):
        run(path, ["data.image_sise=8"])


def test_postprocessors_and_report_figures_register() -> None:
    regs = manager().registries()
    assert regs.postprocessors.get("test_upper")(["ab"]) == ["AB"]
    assert regs.report_figures.owner("test_figure") == "observer"


def test_student_and_baseline_start_from_the_same_weights(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    # one step with lr 0 leaves the initial weights in place
    run_dir = run(
        path, ["stages.student.optimizer.lr=0.0", "stages.baseline_student.optimizer.lr=0.0"], max_steps=1
    )
    assert isinstance(run_dir, Path)
    a, b = weights(run_dir, "student"), weights(run_dir, "baseline_student")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(weights(run_dir, "teacher")["net.1.weight"][:16, :8], a["net.1.weight"][:16, :8])


def test_tensorboard_logging_mirrors_metrics_or_says_how_to_install(tmp_path: Path) -> None:
    import importlib.util

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RecipeError, match="pip install tensorboard"):
            run(path, ["logging.tensorboard=true"], only=["teacher"], max_steps=5)
        return
    run_dir = run(path, ["logging.tensorboard=true"], only=["teacher"], max_steps=5)
    assert isinstance(run_dir, Path)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
