"""The engine's named parts: RNG-isolating evaluation, the training step's loss, the stage
checkpointer and evaluator (kdtool.engine.evaluation / step / checkpoint)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kdtool.engine.checkpoint import StageCheckpointer, TrainerState
from kdtool.engine.context import StepContext
from kdtool.engine.evaluation import StageEvaluator, evaluate_isolated, isolated_rng
from kdtool.engine.rundir import MetricsLog
from kdtool.engine.step import training_step, weighted_total
from kdtool.errors import TrainingError
from kdtool.recipe import StageConfig
from kdtool.task import PrimaryMetric


def _draws() -> tuple[float, float, float]:
    return float(torch.rand(())), float(np.random.rand()), random.random()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_isolated_rng_restores_torch_numpy_and_python_random() -> None:
    _seed_all(3)
    expected = [_draws() for _ in range(3)]
    _seed_all(3)
    with isolated_rng():
        inside = [_draws() for _ in range(5)]
    after = [_draws() for _ in range(3)]
    assert after == expected
    assert inside[:3] == expected  # the body saw the same streams, they were only rewound
    # also restored when the body raises
    _seed_all(3)
    with pytest.raises(RuntimeError), isolated_rng():
        _draws()
        raise RuntimeError("boom")
    assert _draws() == expected[0]


def _stage(**kw: Any) -> StageConfig:
    return StageConfig.model_validate(
        {
            "name": "s",
            "model": "m",
            "steps": 1,
            "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 2.0}],
            **kw,
        }
    )


def test_weighted_total_weights_terms_and_refuses_nan_and_inf() -> None:
    stage = _stage()
    total = weighted_total(stage, {"ce": torch.tensor(2.0), "kd": torch.tensor(3.0)}, step=0)
    assert float(total.detach()) == pytest.approx(0.5 * 2.0 + 2.0 * 3.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TrainingError, match=r"stage 's', step 7: loss term 'kd' is"):
            weighted_total(stage, {"ce": torch.tensor(1.0), "kd": torch.tensor(bad)}, step=7)
    with pytest.raises(TrainingError, match="returned no loss terms"):
        weighted_total(stage, {}, step=0)


class _LinearTask:
    name = "linear"
    primary_metric = PrimaryMetric("score", higher_is_better=True)

    def __init__(self, loss_value: float | None = None) -> None:
        self.loss_value = loss_value
        self.evaluations = 0

    def training_step(self, stage: Any, models: dict[str, nn.Module], batch: Any, ctx: Any) -> dict[str, Any]:
        out = models[stage.model](batch).pow(2).mean()
        if self.loss_value is not None:
            out = out * self.loss_value
        return {"ce": out, "kd": out * 0.1}

    def predictor(self, model: nn.Module, name: str, device: Any) -> nn.Module:
        return model

    def evaluate(self, predictor: Any, split: str = "val", *, limit: int | None = None) -> dict[str, float]:
        # evaluation that draws from every global stream, as augmentation or noise would
        self.evaluations += 1
        torch.rand(4)
        np.random.rand(4)
        random.random()
        return {"score": float(self.evaluations if split == "val" else -self.evaluations)}


def _ctx(losses: nn.ModuleDict | None = None) -> StepContext:
    return StepContext(
        device=torch.device("cpu"), precision="fp32", losses=losses or nn.ModuleDict(), scaler=None,
        grad_accum=1, teacher_fn=None, teacher_cache=None,
    )  # fmt: skip


def test_training_step_backpropagates_the_weighted_total_and_stops_on_nan() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    stage = _stage()
    ctx = _ctx()
    ctx.begin_step(seed=0, step=0, epoch=0)
    terms, total = training_step(_LinearTask(), stage, {"m": model}, torch.ones(2, 3), ctx, step=0)  # type: ignore[arg-type]
    assert set(terms) == {"ce", "kd"}
    assert float(total.detach()) == pytest.approx(
        0.5 * float(terms["ce"].detach()) + 2.0 * float(terms["kd"].detach())
    )
    assert model.weight.grad is not None and bool(model.weight.grad.abs().sum() > 0)
    model.zero_grad()
    with pytest.raises(TrainingError, match="step 4: loss term 'ce' is nan"):
        training_step(_LinearTask(float("nan")), stage, {"m": model}, torch.ones(2, 3), ctx, step=4)  # type: ignore[arg-type]
    assert model.weight.grad is None  # nothing was back-propagated


def _checkpointer(directory: Path, model: nn.Module) -> StageCheckpointer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return StageCheckpointer(
        directory, model=model, losses=nn.ModuleDict(), optimizer=optimizer, scheduler=scheduler,
        scaler=None, keep_last=2, on_saved=lambda step, path: saved.append((step, path)),
    )  # fmt: skip


saved: list[tuple[int, Path]] = []


def test_stage_checkpointer_resume_round_trip(tmp_path: Path) -> None:
    saved.clear()
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    ckpt = _checkpointer(tmp_path / "checkpoints" / "s", model)
    assert ckpt.resume() is None  # nothing saved yet
    for _ in range(3):
        ckpt.optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        ckpt.optimizer.step()
        ckpt.scheduler.step()
    state = TrainerState(step=3, epoch=1, best_metric=0.5, best_step=2, train_seconds=1.25)
    path = ckpt.save(state)
    assert path is not None and saved == [(3, path)]
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_lr = ckpt.optimizer.param_groups[0]["lr"]
    expected_draws = _draws()

    fresh_model = nn.Linear(3, 2)
    fresh = _checkpointer(tmp_path / "checkpoints" / "s", fresh_model)
    _seed_all(99)
    resumed = fresh.resume()
    assert resumed is not None
    got, got_path = resumed
    assert got_path == path
    assert got == state
    for k, v in fresh_model.state_dict().items():
        assert torch.equal(v, expected_weights[k])
    assert fresh.optimizer.param_groups[0]["lr"] == expected_lr
    assert fresh.optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0
    assert _draws() == expected_draws  # the RNG streams continue where the save left them
    # a non-main process never writes
    other = _checkpointer(tmp_path / "other", fresh_model)
    other.is_main = False
    assert other.save(state) is None and not (tmp_path / "other").exists()


def _evaluator(
    tmp_path: Path, task: _LinearTask, model: nn.Module, state: TrainerState, **kw: Any
) -> StageEvaluator:
    return StageEvaluator(
        task=task, stage=_stage(**kw), model=model, device=torch.device("cpu"), state=state,  # type: ignore[arg-type]
        metrics_log=MetricsLog(tmp_path / "metrics.jsonl"), best_path=tmp_path / "best.safetensors",
        tune_size=lambda: 0,
    )  # fmt: skip


def test_evaluation_does_not_perturb_the_training_rng_stream(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    _seed_all(5)
    expected = [_draws() for _ in range(4)]
    _seed_all(5)
    state = TrainerState(step=0, epoch=0, best_metric=None, best_step=None, train_seconds=0.0)
    evaluator = _evaluator(tmp_path, _LinearTask(), model, state)
    got = [_draws()]
    evaluator(1)
    assert model.training  # the evaluator hands the model back in train mode
    got.append(_draws())
    assert evaluate_isolated(evaluator.task, model, "s", "cpu", "val")["score"] == 2.0  # type: ignore[arg-type]
    got += [_draws(), _draws()]
    assert got == expected
    assert not model.training  # evaluate_isolated leaves it in eval mode


def test_stage_evaluator_keeps_the_best_and_logs(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    state = TrainerState(step=0, epoch=0, best_metric=None, best_step=None, train_seconds=0.0)
    task = _LinearTask()
    evaluator = _evaluator(tmp_path, task, model, state)
    assert evaluator(2) == {"score": 1.0}
    assert (state.best_metric, state.best_step) == (1.0, 2) and evaluator.best_path.exists()
    state.step = 4
    assert evaluator.final() == {"score": 2.0}  # step 4 not evaluated yet: evaluates now
    assert evaluator.final() == {"score": 2.0} and task.evaluations == 2  # evaluated: reused
    assert state.best_step == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"], r["score"]) for r in records] == [(2, "val", 1.0), (4, "val", 2.0)]
    # keep: last never writes best weights
    last = _evaluator(tmp_path / "last", _LinearTask(), model, state, keep="last")
    (tmp_path / "last").mkdir()
    last(1)
    assert not last.best_path.exists()
