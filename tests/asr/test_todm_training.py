"""TODM training parts: the subnet loss-mix schedule, the largest-only warm-up, fair twins
(initial weights = the supernet's slice, the subnet's in-supernet dropout)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from kdtool_asr.models import SupernetRNNT
from kdtool_asr.task import AsrData, AsrOptions, AsrSupernetTask
from kdtool_asr.training import Ramp, weight_at

from kdtool.errors import RecipeError
from kdtool.recipe import StageConfig

ARCH: dict[str, Any] = {
    "vocab_size": 7,
    "num_mel_bins": 8,
    "head_dim": 4,
    "max_heads": 2,
    "max_layers": 2,
    "max_ffn": 8,
    "state_size": 4,
    "front_channels": 8,
    "joiner_dim": 8,
    "predictor_dim": 8,
    "layer_choices": [1, 2],
    "head_choices": [1, 2],
    "ffn_choices": [4, 8],
}
SMALL = {
    **ARCH,
    "max_layers": 1,
    "max_heads": 1,
    "max_ffn": 4,
    "layer_choices": [1],
    "head_choices": [1],
    "ffn_choices": [4],
}
TRAIN = {
    "optimizer": {"name": "scaled_adam", "lr": 0.03},
    "schedule": {"name": "eden", "warmup_steps": 2},
    "steps": 10,
    "batch_size": 4,
}


def _task(tmp_path: Path) -> AsrSupernetTask:
    return AsrSupernetTask(AsrOptions(), AsrData(), seed=0, cache_dir=tmp_path)


def test_ramp_weights_at_given_steps() -> None:
    down = Ramp(start=1.0, end=0.2, from_step=100, to_step=300)
    assert down.at(0) == 1.0 and down.at(100) == 1.0
    assert down.at(200) == pytest.approx(0.6)
    assert down.at(250) == pytest.approx(0.4)
    assert down.at(300) == pytest.approx(0.2) and down.at(10_000) == pytest.approx(0.2)
    up = Ramp(start=0.0, end=1.0, to_step=50)
    assert [up.at(s) for s in (0, 25, 50, 60)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert weight_at(0.3, 12345) == 0.3
    with pytest.raises(ValueError):
        Ramp(start=0, end=1, from_step=10, to_step=5)


def test_stage_options_accept_numbers_and_ramps(tmp_path: Path) -> None:
    task = _task(tmp_path)
    stage = StageConfig(
        name="s",
        model="m",
        role="supernet",
        options={
            "kd_weight": {"start": 0.0, "end": 1.0, "to_step": 200},
            "subnet_rnnt_weight": 0.5,
            "largest_only_steps": 20,
        },
        **TRAIN,
    )
    opts = task.stage_options(stage)
    assert weight_at(opts.kd_weight, 100) == pytest.approx(0.5)
    assert weight_at(opts.subnet_rnnt_weight, 100) == 0.5
    with pytest.raises(RecipeError, match="subnet_rnnt_weight"):
        task.stage_options(StageConfig(name="s", model="m", options={"subnet_rnnt_weight": -1}, **TRAIN))
    with pytest.raises(RecipeError, match="to_step"):
        task.stage_options(
            StageConfig(name="s", model="m", options={"kd_weight": {"start": 1, "end": 0}}, **TRAIN)
        )


def _initial(name: str) -> SupernetRNNT:
    """What the engine's seed rule builds for a recipe model (seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        return SupernetRNNT(**(ARCH if name == "supernet" else SMALL))


def _stages(train: dict[str, Any] | None = None, model: str = "small") -> list[StageConfig]:
    supernet = StageConfig(
        name="supernet",
        model="supernet",
        role="supernet",
        options={"dropout_max": 0.2, "dropout_min": 0.05},
        **TRAIN,
    )
    twin_stage = StageConfig(
        name="twin_smallest",
        model=model,
        role="baseline",
        baseline_for="supernet",
        options={"twin": {"stage": "supernet", "subnet": "smallest"}},
        **{**TRAIN, **(train or {})},
    )
    return [supernet, twin_stage]


def test_twin_starts_from_the_supernets_slice_with_its_dropout(tmp_path: Path) -> None:
    task = _task(tmp_path)
    stages = _stages()
    twin = _initial("small")
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    task.init_stage_model(stages[1], twin, _initial, stages)
    expected = _initial("supernet").extract(_initial("supernet").smallest)
    got = twin.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    # the seed rule alone would have given other weights (keyed on the model name)
    assert not torch.equal(before["blocks.0.ff1.weight"], got["blocks.0.ff1.weight"])
    # the smallest gets dropout_min inside the supernet, so its twin trains with it
    assert task._twin_dropout["twin_smallest"] == pytest.approx(0.05)


def test_twin_must_train_like_its_supernet(tmp_path: Path) -> None:
    task = _task(tmp_path)
    stages = _stages(train={"steps": 20})
    with pytest.raises(RecipeError, match="steps"):
        task.init_stage_model(stages[1], _initial("small"), _initial, stages)
    wrong = _stages(model="supernet")
    with pytest.raises(RecipeError, match="not the architecture"):
        task.init_stage_model(wrong[1], _initial("supernet"), _initial, wrong)


def test_subnet_pick_and_its_stability_under_latency_noise() -> None:
    from kdtool_asr.subnets import pick, pick_stability, quartiles

    rows = [
        {
            "label": "small",
            "params": 10,
            "wer": 0.30,
            "latency_ms": 5.0,
            "latency_quartiles_ms": [4.8, 5.0, 5.3],
        },
        {
            "label": "mid",
            "params": 20,
            "wer": 0.20,
            "latency_ms": 9.0,
            "latency_quartiles_ms": [8.5, 9.0, 10.5],
        },
        {"label": "big", "params": 40, "wer": 0.10, "latency_ms": 20.0, "latency_quartiles_ms": [19, 20, 21]},
    ]
    assert pick(rows, 12.0, None)["label"] == "mid"  # type: ignore[index]
    assert pick(rows, 1.0, None) is None
    assert pick(rows, None, 15)["label"] == "small"  # type: ignore[index]
    assert pick_stability(rows, 12.0, None) == {
        "picks": {"q1": "mid", "median": "mid", "q3": "mid"},
        "stable": True,
    }
    # a budget inside mid's spread: at its third quartile it no longer fits
    unstable = pick_stability(rows, 10.0, None)
    assert unstable["picks"] == {"q1": "mid", "median": "mid", "q3": "small"} and not unstable["stable"]
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)


def test_report_gain_compares_each_subnet_with_its_twin(tmp_path: Path) -> None:
    from kdtool.report.collect import model_rows

    def entry(role: str, wer: float, **extra: Any) -> dict[str, Any]:
        return {"role": role, "arch": "asr_supernet_rnnt", "metrics": {"wer": wer}, **extra}

    summary = {
        "primary_metric": {"name": "wer", "higher_is_better": False},
        "models": {
            "supernet": entry("supernet", 0.20, compare_with="twin_largest"),
            "twin_largest": entry("baseline", 0.25, baseline_for="supernet", twin_of="supernet-largest"),
            "twin_smallest": entry("baseline", 0.30, baseline_for="supernet", twin_of="supernet-smallest"),
            "supernet-largest": entry("subnet", 0.20, twin="twin_largest", compare_with="twin_largest"),
            "supernet-smallest": entry("subnet", 0.33, twin="twin_smallest", compare_with="twin_smallest"),
            "supernet-middle": entry("subnet", 0.22),
        },
    }
    rows = {r.name: r for r in model_rows(summary, tmp_path)}
    # like with like: not the 280k supernet against the smallest baseline (the last baseline listed)
    assert rows["supernet"].gain_baseline == "twin_largest" and rows["supernet"].gain == pytest.approx(0.05)
    assert rows["supernet-smallest"].gain_baseline == "twin_smallest"
    assert rows["supernet-smallest"].gain == pytest.approx(-0.03)
    assert rows["supernet-middle"].gain is None


def test_student_with_teachers_distils_from_their_mean_lattice(tmp_path: Path) -> None:
    """A ``student`` stage with teachers (e.g. QAD from the FP32 supernet): KD defaults to
    alpha_div, and several teachers give the log of their mean collapsed distribution."""
    from kdtool_asr.losses import lattice_point

    task = _task(tmp_path)
    teachers = [{"name": "a", "stage": "supernet"}, {"name": "b", "stage": "other"}]
    student = StageConfig(name="qad", model="supernet", role="student", teachers=teachers, **TRAIN)
    assert [(t.name, t.loss) for t in task.default_distill(student)] == [("kd", "alpha_div")]
    alone = StageConfig(name="plain", model="supernet", role="student", **TRAIN)
    assert task.default_distill(alone) == []

    torch.manual_seed(0)
    a, b = SupernetRNNT(**ARCH).eval(), SupernetRNNT(**ARCH).eval()
    batch = {
        "features": torch.randn(2, 24, a.num_mel_bins),
        "feature_lengths": torch.tensor([24, 17]),
        "targets": torch.randint(1, a.vocab_size, (2, 3)),
    }
    with torch.no_grad():
        got = task.teacher_outputs(student, {"a": a, "b": b}, batch)["lattice"]
        points = [
            lattice_point(
                m(batch["features"], batch["feature_lengths"], batch["targets"])[0], batch["targets"], a.blank
            )
            for m in (a, b)
        ]
    want = torch.log((points[0].exp() + points[1].exp()) / 2)
    assert got.shape == points[0].shape and got.shape[-1] == 3
    torch.testing.assert_close(got, want)
    with torch.no_grad():  # one teacher: its own lattice
        torch.testing.assert_close(task.teacher_outputs(student, {"a": a}, batch)["lattice"], points[0])
    with pytest.raises(RecipeError, match="asr_supernet_rnnt"):
        task.teacher_outputs(student, {"a": torch.nn.Linear(2, 2)}, batch)
