"""Distillation points: the engine pairs a task's exposed points for any registered KD loss.

The central test: a third-party loss, registered by a (test) plugin, is used by two different
tasks (image classification on ``logits``, HTR on ``sequence_posteriors``) without either
task knowing it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn

from kdtool import hookimpl
from kdtool.distill import DistillEntry, DistillPlan, Point, build_module, loss_accepts, plan_stage
from kdtool.engine.trainer import DistillOptions, Engine, check_recipe_names
from kdtool.errors import RecipeError, TrainingError
from kdtool.losses import SoftTargetKL
from kdtool.plugins import PluginInfo, PluginManager, get_registries
from kdtool.recipe import LossTerm, StageConfig, recipe_from_dict
from tests.helpers import REPO, tiny_recipe

# ------------------------------------------------------------------ a third-party KD loss


class ProbabilityL2(nn.Module):
    """A KD loss nobody in kdtool knows: squared distance between the softmaxes, masked.
    Records every call (point kind by rank, whether a mask came along)."""

    accepts = ("logits", "sequence_posteriors")
    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        ProbabilityL2.calls.append(
            {
                "shape": tuple(student.shape),
                "mask": None if mask is None else mask.detach().clone(),
                "student_grad": student.requires_grad,
                "teacher_grad": teacher.requires_grad,
            }
        )
        per_position = (F.softmax(student.float(), -1) - F.softmax(teacher.float(), -1)).pow(2).sum(-1)
        if mask is not None:
            per_position = per_position[mask]
        return per_position.mean() * self.scale


class LegacyKD(nn.Module):
    """A 1.x-style KD loss: it declares no point kinds, so no task computes it."""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student_logits, teacher_logits)


class ThirdPartyPlugin:
    @staticmethod
    @hookimpl
    def register_losses(register: Any) -> None:
        register("prob_l2", ProbabilityL2, description="test plugin: L2 between softmaxes")
        register("legacy_kd", LegacyKD, description="test plugin: no accepts")


def manager() -> PluginManager:
    pm = PluginManager()
    pm.pm.register(ThirdPartyPlugin, name="third_party_loss")
    pm.infos["third_party_loss"] = PluginInfo(name="third_party_loss", module=__name__)
    pm._registries = None
    return pm


def train(data: dict[str, Any], pm: PluginManager | None = None) -> Path:
    run_dir = Engine(
        recipe_from_dict(data), DistillOptions(progress=False, echo=lambda _m: None), pm or manager()
    ).run()
    assert isinstance(run_dir, Path)
    return run_dir


def student_weights(run_dir: Path, name: str = "student") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "models" / f"{name}.safetensors"))


def train_records(run_dir: Path, stage: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["stage"] == stage and r["split"] == "train"]


def classification_recipe(runs: Path, kd: dict[str, Any]) -> dict[str, Any]:
    recipe = tiny_recipe(runs)
    recipe["stages"] = recipe["stages"][:2]  # teacher, student
    for stage in recipe["stages"]:
        stage["steps"] = 8
    recipe["stages"][1]["losses"] = [{"name": "ce", "weight": 0.5}, kd]
    recipe["logging"] = {"every_steps": 1, "progress": False}
    return recipe


def htr_recipe(runs: Path, kd: dict[str, Any]) -> dict[str, Any]:
    recipe = yaml.safe_load((REPO / "recipes" / "htr_jand.yaml").read_text())
    recipe["runs_dir"] = str(runs)
    recipe["device"] = "cpu"
    recipe["data"] = {
        "source": "embedded",
        "embedded": {"digit_lines": 8, "font_lines": 4, "val_digit_lines": 2, "val_font_lines": 2},
    }
    recipe["models"]["teacher"]["options"] = {"channels": [4, 8, 8, 16], "d_model": 16, "heads": 2}
    recipe["models"]["student"]["options"] = {"channels": [4, 8, 8, 8], "d_model": 8, "heads": 2}
    recipe["stages"] = [s for s in recipe["stages"] if s["name"] in ("teacher", "student")]
    for stage in recipe["stages"]:
        stage.update(steps=2, batch_size=4, eval_every_steps=None)
    student = next(s for s in recipe["stages"] if s["name"] == "student")
    student["losses"] = [t for t in student["losses"] if t.get("loss") is None] + [kd]
    recipe["deploy_model"] = "student"
    recipe["logging"] = {"every_steps": 1, "progress": False}
    recipe["checkpoint"] = {"every_steps": 0, "keep_last": 1}
    return recipe


def test_a_plugin_loss_works_for_two_tasks_that_never_name_it(tmp_path: Path) -> None:
    kd = {"name": "probe", "loss": "prob_l2", "weight": 2.0}  # no between: each task's default pairing

    # image classification: logits (B, C), no mask
    ProbabilityL2.calls.clear()
    with_kd = train(classification_recipe(tmp_path / "a", kd))
    calls = list(ProbabilityL2.calls)
    assert len(calls) == 8  # once per student step, never in the teacher stage
    assert all(len(c["shape"]) == 2 and c["shape"][1] == 10 and c["mask"] is None for c in calls)
    assert all(c["student_grad"] and not c["teacher_grad"] for c in calls)
    assert all(r["loss/probe"] > 0 for r in train_records(with_kd, "student"))
    without = train(classification_recipe(tmp_path / "b", {**kd, "weight": 0.0}))
    changed = [
        k for k, v in student_weights(with_kd).items() if not torch.equal(v, student_weights(without)[k])
    ]
    assert changed, "the plugin's loss did not change the student's training"

    # HTR: sequence posteriors (B, T, V) with a mask built from the frame lengths
    ProbabilityL2.calls.clear()
    with_kd = train(htr_recipe(tmp_path / "c", kd))
    calls = list(ProbabilityL2.calls)
    assert calls and all(len(c["shape"]) == 3 for c in calls)
    assert all(c["mask"] is not None and c["mask"].shape == c["shape"][:2] for c in calls)
    assert any(not bool(c["mask"].all()) for c in calls), "padded frames were not masked"
    assert all(c["student_grad"] and not c["teacher_grad"] for c in calls)
    assert all(r["loss/probe"] > 0 for r in train_records(with_kd, "student"))
    without = train(htr_recipe(tmp_path / "d", {**kd, "weight": 0.0}))
    changed = [
        k for k, v in student_weights(with_kd).items() if not torch.equal(v, student_weights(without)[k])
    ]
    assert changed, "the plugin's loss did not change the HTR student's training"


# ------------------------------------------------------------------ load-time checks


def test_a_loss_that_does_not_accept_the_point_fails_at_load(tmp_path: Path) -> None:
    recipe = classification_recipe(tmp_path, {"name": "kd", "loss": "ctc_kd"})
    with pytest.raises(RecipeError) as err:
        check_recipe_names(recipe_from_dict(recipe).recipe, get_registries())
    message = str(err.value)
    assert "'ctc_kd'" in message and "sequence_posteriors" in message and "'logits'" in message
    assert "stages.student.losses.kd" in message


def test_an_unknown_point_and_between_on_a_plain_loss_fail_at_load(tmp_path: Path) -> None:
    bad_point = {"name": "kd", "loss": "kl_t", "between": {"student": "features/layer9", "teacher": "logits"}}
    with pytest.raises(RecipeError, match=r"exposes no student point 'features/layer9'.*"):
        check_recipe_names(
            recipe_from_dict(classification_recipe(tmp_path, bad_point)).recipe, get_registries()
        )
    plain = {"name": "kd", "loss": "mse", "between": {"student": "logits", "teacher": "logits"}}
    with pytest.raises(RecipeError, match="declares no point kinds"):
        check_recipe_names(recipe_from_dict(classification_recipe(tmp_path, plain)).recipe, get_registries())


def test_a_loss_without_accepts_is_not_silently_skipped(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"'legacy_kd', which declares no distillation point kinds"):
        train(classification_recipe(tmp_path, {"name": "kd", "loss": "legacy_kd"}))


def test_every_builtin_kd_loss_declares_known_kinds() -> None:
    from kdtool.distill import POINT_KINDS

    regs = get_registries().losses
    kd = {name: loss_accepts(regs.get(name)) for name in regs.names() if loss_accepts(regs.get(name))}
    assert {"kl_t", "mse_logits", "alpha_div", "hint", "cwd", "ctc_kd"} <= set(kd)
    assert all(set(kinds) <= set(POINT_KINDS) for kinds in kd.values())
    assert not loss_accepts(regs.get("ce")) and not loss_accepts(regs.get("mse"))


# ------------------------------------------------------------------ temperature and masks


def test_entry_temperature_and_lengths_mask_reach_the_loss() -> None:
    term = LossTerm(name="kd", loss="kl_t", temperature=3.0)
    module = build_module(term, SoftTargetKL, where="t")
    assert isinstance(module, SoftTargetKL) and module.temperature == 3.0
    entry = DistillEntry(
        "kd", "kl_t", "sequence_posteriors", "sequence_posteriors", module, frozenset({"mask"})
    )
    plan = DistillPlan([entry])
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    lengths = torch.tensor([5, 2])
    plan.expose(Point("sequence_posteriors", student, lengths=lengths), "student")
    plan.expose(Point("sequence_posteriors", teacher, lengths=lengths), "teacher")
    value = plan.distill()["kd"]
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert value.item() == pytest.approx(SoftTargetKL(3.0)(student, teacher, mask).item(), rel=1e-6)
    assert value.item() != pytest.approx(SoftTargetKL(3.0)(student, teacher).item(), rel=1e-3)
    # padded frames do not matter
    noisy = student.clone()
    noisy[1, 2:] = 100.0
    plan.expose(Point("sequence_posteriors", noisy, lengths=lengths), "student")
    assert plan.distill()["kd"].item() == pytest.approx(value.item(), rel=1e-6)
    with pytest.raises(RecipeError, match="temperature is given twice"):
        build_module(
            LossTerm(name="kd", loss="kl_t", temperature=2.0, options={"temperature": 4.0}),
            SoftTargetKL,
            where="t",
        )


def test_a_half_exposed_pair_is_an_error_naming_the_points() -> None:
    entry = DistillEntry("kd", "kl_t", "logits", "logits", SoftTargetKL(), frozenset({"mask"}))
    plan = DistillPlan([entry], stage_name="student")
    plan.begin_step()
    plan.expose(Point("logits", torch.randn(2, 3)), "teacher")
    with pytest.raises(TrainingError, match="exposed only the teacher's"):
        plan.finish_step({})


def test_points_that_do_not_fit_the_loss_fail_naming_term_points_and_shapes() -> None:
    from kdtool.losses import ChannelWiseDistillation

    entry = DistillEntry("cwd", "cwd", "features/out", "features/out_lowres", ChannelWiseDistillation())
    plan = DistillPlan([entry], stage_name="student")
    plan.expose(Point("features/out", torch.randn(2, 3, 8, 8)), "student")
    plan.expose(Point("features/out_lowres", torch.randn(2, 3, 2, 2)), "teacher")
    with pytest.raises(
        TrainingError, match=r"'cwd' \(cwd\) failed on student point 'features/out' \(2, 3, 8, 8\)"
    ):
        plan.distill()


def test_wants_tells_a_task_which_points_are_used() -> None:
    task = _classification_task()
    stage = StageConfig(
        name="student", model="s", role="student", teachers=["t"], steps=1,
        losses=[{"name": "kd", "loss": "kl_t"}],
    )  # fmt: skip
    plan = plan_stage(stage, task, get_registries().losses, nn.ModuleDict())
    assert plan.wants("logits") and plan.wants("logits", "teacher") and not plan.wants("features/x")
    no_kd = StageConfig(name="teacher", model="t", role="teacher", steps=1)
    assert not plan_stage(no_kd, task, get_registries().losses, nn.ModuleDict()).entries


def _classification_task() -> Any:
    from kdtool_classification.task import ClassificationData, ClassificationTask

    from kdtool.task import TaskOptions

    data = ClassificationData(source="digits", image_size=8, augment=False)
    return ClassificationTask(TaskOptions(), data, seed=0, cache_dir=Path("."))


# ------------------------------------------------------------------ hint projector


def test_hint_projector_is_trained_with_the_stage_and_dropped_at_export(tmp_path: Path) -> None:
    kd = {
        "name": "hint",
        "loss": "hint",
        "weight": 1.0,
        "options": {"student_channels": 10, "teacher_channels": 10},
        "between": {"student": "logits", "teacher": "logits"},
    }
    run_dir = train(classification_recipe(tmp_path, kd), PluginManager())
    ckpt = sorted((run_dir / "checkpoints" / "student").glob("step-*"))[-1]
    loss_state = load_file(str(ckpt / "losses.safetensors"))
    assert set(loss_state) == {"hint.projection.weight", "hint.projection.bias"}
    records = train_records(run_dir, "student")
    assert records[0]["loss/hint"] != records[-1]["loss/hint"]
    # the student's weights (what export reads) carry no projector
    weights = student_weights(run_dir)
    assert weights and not any("projection" in k or k.startswith("hint") for k in weights)


def test_hint_projector_moves_from_its_initial_weights(tmp_path: Path) -> None:
    kd = {
        "name": "hint",
        "loss": "hint",
        "options": {"student_channels": 10, "teacher_channels": 10},
        "between": {"student": "logits", "teacher": "logits"},
    }
    recipe = classification_recipe(tmp_path, kd)
    recipe["stages"][1]["steps"] = 1
    one = train(copy.deepcopy(recipe), PluginManager())
    recipe["runs_dir"] = str(tmp_path / "more")
    recipe["stages"][1]["steps"] = 8
    eight = train(recipe, PluginManager())
    first = load_file(
        str(sorted((one / "checkpoints" / "student").glob("step-*"))[-1] / "losses.safetensors")
    )
    last = load_file(
        str(sorted((eight / "checkpoints" / "student").glob("step-*"))[-1] / "losses.safetensors")
    )
    assert not torch.equal(first["hint.projection.weight"], last["hint.projection.weight"])


def test_entries_without_pairing_dump_and_hash_as_before() -> None:
    """Stage hashes (resume) and recipe.resolved.yaml of existing recipes do not change."""
    plain = LossTerm(name="kd", loss="kl_t", weight=0.5)
    assert plain.model_dump(mode="json") == {"name": "kd", "weight": 0.5, "loss": "kl_t", "options": {}}
    paired = LossTerm(
        name="kd", loss="kl_t", temperature=2.0, between={"student": "logits", "teacher": "logits"}
    )
    assert paired.model_dump(mode="json")["between"] == {"student": "logits", "teacher": "logits"}
    with pytest.raises(ValueError, match="need a 'loss'"):
        LossTerm(name="kd", between={"student": "logits", "teacher": "logits"})
