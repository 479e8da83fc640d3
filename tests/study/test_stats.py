"""The study's statistics against hand computations (t quantiles from a printed table)."""

from __future__ import annotations

import math

import pytest

from kdtool.study import HELPED, HURT, NO_DIFFERENCE, TOO_FEW, aggregate, mean_std, paired_difference

# Two-sided 95 % quantiles of Student's t (t_{0.975, dof}), from a printed table.
T_TABLE = {1: 12.706, 2: 4.303, 4: 2.776}


def test_ci_of_three_paired_seeds_matches_hand_computation() -> None:
    # differences 0.01, 0.03, -0.01: mean 0.01, sd sqrt((0 + 0.02^2 + 0.02^2) / 2) = 0.02
    out = paired_difference([0.93, 0.95, 0.91], [0.92, 0.92, 0.92], higher_is_better=True)
    assert out["differences"] == pytest.approx([0.01, 0.03, -0.01])
    assert out["mean"] == pytest.approx(0.01)
    assert out["std"] == pytest.approx(0.02)
    half = T_TABLE[2] * 0.02 / math.sqrt(3)  # 0.04968
    assert out["t_quantile"] == pytest.approx(T_TABLE[2], abs=1e-3)
    assert out["ci"][0] == pytest.approx(0.01 - half, abs=1e-4)
    assert out["ci"][1] == pytest.approx(0.01 + half, abs=1e-4)
    assert out["wins"] == 2
    assert out["verdict"] == NO_DIFFERENCE


def test_lower_is_better_metric_counts_lower_as_a_win() -> None:
    # NME-like: the student is lower on every seed; differences -0.5 -0.3 -0.7 -0.5 -0.4
    student = [3.0, 3.1, 2.9, 3.0, 3.05]
    baseline = [3.5, 3.4, 3.6, 3.5, 3.45]
    out = paired_difference(student, baseline, higher_is_better=False)
    diffs = [-0.5, -0.3, -0.7, -0.5, -0.4]
    mean = sum(diffs) / 5  # -0.48
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    half = T_TABLE[4] * sd / math.sqrt(5)
    assert out["mean"] == pytest.approx(mean)
    assert out["ci"] == pytest.approx([mean - half, mean + half], abs=1e-3)
    assert out["wins"] == 5
    assert out["verdict"] == HELPED
    # the same numbers for a higher-is-better metric: distillation hurt, no wins
    flipped = paired_difference(student, baseline, higher_is_better=True)
    assert flipped["verdict"] == HURT
    assert flipped["wins"] == 0


def test_two_seeds_use_the_wide_t_quantile_and_one_seed_gives_no_ci() -> None:
    out = paired_difference([0.6, 0.7], [0.5, 0.5], higher_is_better=True)
    # mean 0.15, sd 0.0707: half = 12.706 * 0.0707 / sqrt(2) = 0.635
    assert out["ci"][1] - out["ci"][0] == pytest.approx(2 * T_TABLE[1] * 0.05, abs=1e-3)
    assert out["verdict"] == NO_DIFFERENCE
    single = paired_difference([0.6], [0.5], higher_is_better=True)
    assert single["ci"] is None and single["verdict"] == TOO_FEW and single["wins"] == 1


def test_mean_std_uses_the_sample_std() -> None:
    stat = mean_std([1.0, 2.0, 3.0, 4.0])
    assert stat["mean"] == 2.5
    assert stat["std"] == pytest.approx(math.sqrt(5 / 3))
    assert stat["n"] == 4


def _summary(
    values: dict[str, float], extra: dict[str, dict[str, object]] | None = None
) -> dict[str, object]:
    models: dict[str, dict[str, object]] = {
        "teacher": {
            "role": "teacher",
            "params": 100,
            "metrics": {"wer": values["teacher"]},
            "train_seconds": 2.0,
        },
        "supernet": {
            "role": "supernet",
            "params": 50,
            "metrics": {"wer": values["supernet"]},
            "train_seconds": 3.0,
        },
        "baseline": {
            "role": "baseline",
            "baseline_for": "supernet",
            "params": 10,
            "metrics": {"wer": values["baseline"]},
            "train_seconds": 1.0,
        },
        "supernet-largest": {"role": "subnet", "params": 50, "metrics": {"wer": values["supernet"]}},
        "supernet-smallest": {"role": "subnet", "params": 10, "metrics": {"wer": values["small"]}},
    }
    models.update(extra or {})
    return {"primary_metric": {"name": "wer", "higher_is_better": False}, "models": models}


def test_aggregate_pairs_a_supernet_baseline_with_the_same_size_subnet() -> None:
    summaries = {
        0: _summary({"teacher": 0.1, "supernet": 0.2, "baseline": 0.40, "small": 0.30}),
        1: _summary({"teacher": 0.1, "supernet": 0.2, "baseline": 0.42, "small": 0.31}),
        2: _summary({"teacher": 0.1, "supernet": 0.2, "baseline": 0.41, "small": 0.33}),
    }
    study = aggregate(summaries)
    assert study["seeds"] == [0, 1, 2]
    assert [(p["student"], p["baseline"]) for p in study["pairs"]] == [("supernet-smallest", "baseline")]
    pair = study["pairs"][0]
    assert pair["differences"] == pytest.approx([-0.10, -0.11, -0.08])
    assert pair["wins"] == 3 and pair["verdict"] == HELPED
    assert study["models"]["baseline"]["metrics"]["wer"]["mean"] == pytest.approx(0.41)
    assert study["models"]["teacher"]["train_seconds"]["mean"] == 2.0
    # subnet entries carry no train_seconds: reported as None, not a crash
    assert study["models"]["supernet-largest"]["train_seconds"] is None
