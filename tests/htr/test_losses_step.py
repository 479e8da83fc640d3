"""CTC-KD against a direct computation, the CTC term, and the training step (KD, curriculum,
width buckets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kdtool_htr.datasets import HTRDataOptions
from kdtool_htr.task import CurriculumOptions, HTROptions, HTRTask, ctc_loss_sum
from torch import nn

from kdtool.engine.context import StepContext
from kdtool.losses import CTCPosteriorKD
from kdtool.recipe import StageConfig


def test_ctc_kd_matches_a_direct_computation_and_masks_padding() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 4, generator=g)
    teacher = torch.randn(2, 5, 4, generator=g)
    teacher[0, 1, 0] = 8.0  # a blank-dominated frame
    lengths = torch.tensor([5, 3])
    t, thr, bw = 2.0, 0.9, 0.25
    loss = CTCPosteriorKD(temperature=t, blank_threshold=thr, blank_weight=bw)(student, teacher, lengths)
    num = den = 0.0
    for n in range(2):
        for f in range(int(lengths[n])):
            p = torch.softmax(teacher[n, f] / t, -1)
            q = torch.softmax(student[n, f] / t, -1)
            kl = float((p * (p.log() - q.log())).sum())
            w = bw if float(torch.softmax(teacher[n, f], -1)[0]) > thr else 1.0
            num += w * kl
            den += w
    assert float(loss) == pytest.approx(num / den * t * t, rel=1e-5)
    # Padded frames (beyond each length) do not matter.
    student2, teacher2 = student.clone(), teacher.clone()
    student2[1, 3:] = 50.0
    teacher2[1, 3:] = -50.0
    assert float(
        CTCPosteriorKD(temperature=t, blank_threshold=thr, blank_weight=bw)(student2, teacher2, lengths)
    ) == pytest.approx(float(loss))


def test_ctc_loss_sum_is_pytorch_mean_times_batch() -> None:
    g = torch.Generator().manual_seed(1)
    lp = torch.log_softmax(torch.randn(3, 10, 5, generator=g), -1)
    labels = torch.tensor([[1, 2, 3], [4, 0, 0], [2, 2, 0]])
    lengths = torch.tensor([3, 1, 2])
    frames = torch.tensor([10, 7, 9])
    ref = F.ctc_loss(lp.transpose(0, 1), labels, frames, lengths, blank=0, reduction="mean")
    assert float(ctc_loss_sum(lp, labels, lengths, frames)) == pytest.approx(3 * float(ref), rel=1e-5)


def test_curriculum_competence_schedule() -> None:
    c = CurriculumOptions(enabled=True, start=0.3, ramp=0.5)
    assert c.competence(0, 100) == pytest.approx(0.3)
    assert c.competence(25, 100) == pytest.approx((0.09 + 0.91 * 0.5) ** 0.5)
    assert c.competence(50, 100) == 1.0 and c.competence(90, 100) == 1.0
    assert CurriculumOptions(enabled=False).competence(0, 100) == 1.0


class Recorder(nn.Module):
    """Returns fixed log-probs of the right shape and records the input widths and rows."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(image.shape))
        n, _, _, w = image.shape
        return torch.log_softmax(self.bias.expand(n, w // 4, -1), -1)


def _task(tmp_path: Path) -> HTRTask:
    data = HTRDataOptions(
        embedded={"digit_lines": 12, "font_lines": 4, "val_digit_lines": 2, "val_font_lines": 2}
    )
    return HTRTask(HTROptions(), data, seed=0, cache_dir=tmp_path)


def _ctx(
    stage: StageConfig, task: HTRTask, teachers: dict[str, nn.Module], step: int, total: int
) -> StepContext:
    from kdtool.engine.trainer import build_losses
    from kdtool.plugins import get_registries

    ctx = StepContext(
        device=torch.device("cpu"),
        precision="fp32",
        losses=build_losses(stage, get_registries()),
        scaler=None,
        grad_accum=1,
        teacher_fn=(lambda b: task.teacher_outputs(stage, teachers, b)) if teachers else None,
        teacher_cache=None,
    )
    ctx.total_steps = total
    ctx.use_stage(stage, task)
    ctx.begin_step(seed=0, step=step, epoch=0)
    return ctx


def _batch(task: HTRTask) -> dict[str, Any]:
    ds = task.build_dataset("train")
    return task.collate([ds[i] for i in range(16)])


def test_student_step_returns_ctc_and_kd_and_buckets_by_width(tmp_path: Path) -> None:
    task = _task(tmp_path)
    classes = task.charset.num_classes
    stage = StageConfig(
        name="student",
        model="student",
        role="student",
        teachers=["teacher"],
        steps=10,
        losses=[{"name": "ctc"}, {"name": "kd", "loss": "ctc_kd", "options": {"temperature": 2.0}}],
        options={"width_buckets": 2},
    )
    student, teacher = Recorder(classes), Recorder(classes)
    with torch.no_grad():
        teacher.bias[1] = 3.0
    batch = _batch(task)
    losses = task.training_step(
        stage, {"student": student, "teacher": teacher}, batch, _ctx(stage, task, {"teacher": teacher}, 0, 10)
    )
    assert set(losses) == {"ctc", "kd"}
    assert losses["kd"] > 0 and losses["ctc"] > 0
    # Two width buckets, each cropped to its own widest line (a multiple of the frame stride).
    widths = [c[3] for c in student.calls]
    assert len(widths) == 2 and widths[0] == batch["image"].shape[3] and widths[1] < widths[0]
    assert [c[0] for c in student.calls] == [8, 8] and teacher.calls == student.calls
    losses["kd"].backward()
    assert student.bias.grad is not None and student.bias.grad.abs().sum() > 0
    # The CTC term equals PyTorch's mean CTC over the whole (unbucketed) batch.
    full = Recorder(classes)
    stage1 = stage.model_copy(update={"options": {"width_buckets": 1}})
    one = task.training_step(
        stage1, {"student": full, "teacher": teacher}, batch, _ctx(stage1, task, {"teacher": teacher}, 0, 10)
    )
    assert float(one["ctc"].detach()) == pytest.approx(float(losses["ctc"].detach()), rel=1e-5)


def test_teacher_and_baseline_steps_are_ctc_only(tmp_path: Path) -> None:
    task = _task(tmp_path)
    for role, extra in (("teacher", {}), ("baseline", {"baseline_for": "student"})):
        stage = StageConfig(name=role, model="m", role=role, steps=5, **extra)
        out = task.training_step(
            stage, {"m": Recorder(task.charset.num_classes)}, _batch(task), _ctx(stage, task, {}, 0, 5)
        )
        assert set(out) == {"ctc"}


def test_curriculum_skips_long_lines_early(tmp_path: Path) -> None:
    task = _task(tmp_path)
    stage = StageConfig(
        name="baseline_student",
        model="m",
        role="baseline",
        baseline_for="student",
        steps=100,
        options={"curriculum": {"enabled": True, "start": 0.3, "ramp": 0.5}, "width_buckets": 1},
    )
    batch = _batch(task)
    model = Recorder(task.charset.num_classes)
    task.training_step(stage, {"m": model}, batch, _ctx(stage, task, {}, 0, 100))
    expected = int((batch["difficulty"] <= 0.3).sum())
    assert model.calls[0][0] == max(expected, 4) < 16
    model.calls.clear()
    task.training_step(stage, {"m": model}, batch, _ctx(stage, task, {}, 60, 100))
    assert model.calls[0][0] == 16


def test_bad_stage_options_are_a_recipe_error(tmp_path: Path) -> None:
    from kdtool.errors import RecipeError

    task = _task(tmp_path)
    stage = StageConfig(name="s", model="m", role="teacher", steps=5, options={"curiculum": {}})
    with pytest.raises(RecipeError, match="curiculum"):
        task.training_step(stage, {"m": Recorder(5)}, _batch(task), _ctx(stage, task, {}, 0, 5))
