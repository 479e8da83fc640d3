"""Curves for the report, drawn with matplotlib's Agg backend and returned as PNG bytes.

Inputs are the records of ``metrics.jsonl``: training records (``split: train``) carry
``loss/<term>`` (running means since the previous record), ``lr`` and ``samples_per_s``;
validation records (``split: val``) carry the task's metrics. Non-finite values are dropped.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_DPI = 100


def _style(stage: Sequence[str]) -> str:
    """A stage entry is (name, role) or (name, role, line style): the report passes ``--``
    for a control (a stage with ``baseline_for``); no role name is known here."""
    return stage[2] if len(stage) > 2 else "-"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def series(
    records: Iterable[dict[str, Any]], stage: str, split: str, key: str
) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` in the ``split`` records of ``stage``, in step order.

    A resumed run may log a step twice; the last record of a step wins."""
    points: dict[float, float] = {}
    for rec in records:
        if rec.get("stage") != stage or rec.get("split") != split:
            continue
        value, step = rec.get(key), rec.get("step")
        if _finite(value) and _finite(step):
            points[float(step)] = float(value)  # type: ignore[arg-type]
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def loss_terms(records: Iterable[dict[str, Any]], stage: str) -> list[str]:
    """The ``loss/<term>`` keys logged for a stage, ``loss/total`` first."""
    keys: dict[str, None] = {}
    for rec in records:
        if rec.get("stage") == stage and rec.get("split") == "train":
            for k in rec:
                if k.startswith("loss/"):
                    keys[k] = None
    names = sorted(keys)
    if "loss/total" in keys:
        names.remove("loss/total")
        names.insert(0, "loss/total")
    return names


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    return buf.getvalue()


def _use_log(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) > 50


def stage_curves(
    records: Sequence[dict[str, Any]], stage: str, metric: str, higher_is_better: bool, title: str
) -> bytes | None:
    """Three panels for one stage: training losses, the validation metric, the learning rate.

    Returns None when the stage logged nothing."""
    terms = loss_terms(records, stage)
    val_steps, val_values = series(records, stage, "val", metric)
    lr_steps, lr_values = series(records, stage, "train", "lr")
    if not terms and not val_steps:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1.3, 1.0, 0.8]})
    ax = axes[0]
    all_values: list[float] = []
    for term in terms:
        steps, values = series(records, stage, "train", term)
        if not steps:
            continue
        all_values.extend(values)
        label = term.removeprefix("loss/")
        ax.plot(
            steps,
            values,
            label=label,
            linewidth=2.0 if label == "total" else 1.2,
            marker="." if len(steps) < 12 else None,
        )
    if all_values and _use_log(all_values):
        ax.set_yscale("log")
    ax.set_title("training losses (unweighted terms, weighted total)", fontsize=9)
    ax.set_xlabel("step")
    if terms:
        ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)

    ax = axes[1]
    if val_steps:
        ax.plot(val_steps, val_values, marker="o", markersize=3, color="tab:green")
        best = max(val_values) if higher_is_better else min(val_values)
        ax.axhline(best, color="tab:green", alpha=0.3, linestyle=":")
        ax.annotate(
            f"{val_values[-1]:.4g}",
            (val_steps[-1], val_values[-1]),
            fontsize=8,
            xytext=(3, 3),
            textcoords="offset points",
        )
    else:
        ax.text(
            0.5, 0.5, "no validation records", ha="center", va="center", transform=ax.transAxes, fontsize=9
        )
    arrow = "higher is better" if higher_is_better else "lower is better"
    ax.set_title(f"validation {metric} ({arrow})", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)

    ax = axes[2]
    if lr_steps:
        ax.plot(lr_steps, lr_values, color="tab:purple")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title("learning rate", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    last = max(
        [
            *val_steps,
            *lr_steps,
            *(
                series(records, stage, "train", t)[0][-1]
                for t in terms
                if series(records, stage, "train", t)[0]
            ),
        ],
        default=0.0,
    )
    if last > 0:
        for a in axes:  # one step axis for the three panels
            a.set_xlim(0, last * 1.04)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return _png(fig)


def metric_overview(
    records: Sequence[dict[str, Any]], stages: Sequence[tuple[str, ...]], metric: str, higher_is_better: bool
) -> bytes | None:
    """The validation metric of every stage on one axis (stage, role) -> one line each."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    drawn = 0
    for entry in stages:
        stage, role = entry[0], entry[1]
        steps, values = series(records, stage, "val", metric)
        if not steps:
            continue
        ax.plot(
            steps,
            values,
            label=f"{stage} ({role})",
            linestyle=_style(entry),
            marker="o",
            markersize=3,
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    arrow = "higher is better" if higher_is_better else "lower is better"
    ax.set_title(f"validation {metric} of every stage ({arrow})", fontsize=10)
    ax.set_xlabel("step of its stage")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def comparison_curves(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]], Sequence[tuple[str, ...]]]],
    metric: str,
    higher_is_better: bool,
) -> bytes | None:
    """Validation metric of every stage of every run: one colour per run, one line style per role.

    ``runs``: (label, records, [(stage, role), ...]) per run."""
    fig, ax = plt.subplots(figsize=(9, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, (label, records, stages) in enumerate(runs):
        for entry in stages:
            stage = entry[0]
            steps, values = series(records, stage, "val", metric)
            if not steps:
                continue
            ax.plot(
                steps,
                values,
                color=colors[i % len(colors)],
                linestyle=_style(entry),
                marker="o",
                markersize=2.5,
                label=f"{label}: {stage}",
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    arrow = "higher is better" if higher_is_better else "lower is better"
    ax.set_title(f"validation {metric} ({arrow}); colour = run, dashed = baseline", fontsize=10)
    ax.set_xlabel("step of its stage")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- subnet figures (used by tasks)


def subnet_twin_pareto(points: Sequence[dict[str, Any]], *, title: str) -> bytes | None:
    """Size vs WER of a supernet's named subnets (dots, joined as a front) and of their twins
    trained alone (crosses), an arrow from each twin to its subnet. ``points``: dicts with
    ``label``, ``params``, ``wer`` and optional ``twin_params``/``twin_wer`` (WER as a fraction)."""
    rows = [p for p in points if _finite(p.get("params")) and _finite(p.get("wer"))]
    if not rows:
        return None
    rows = sorted(rows, key=lambda p: p["params"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(
        [p["params"] for p in rows],
        [100 * p["wer"] for p in rows],
        "-o",
        color="tab:red",
        label="subnets (supernet)",
    )
    twins = [p for p in rows if _finite(p.get("twin_params")) and _finite(p.get("twin_wer"))]
    if twins:
        ax.scatter(
            [p["twin_params"] for p in twins],
            [100 * p["twin_wer"] for p in twins],
            marker="x",
            s=60,
            color="tab:blue",
            label="twins (trained alone)",
            zorder=3,
        )
        for p in twins:
            ax.annotate(
                "",
                xy=(p["params"], 100 * p["wer"]),
                xytext=(p["twin_params"], 100 * p["twin_wer"]),
                arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8},
            )
    for p in rows:
        ax.annotate(
            p["label"], (p["params"], 100 * p["wer"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation WER (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def subnet_curves(
    records: Sequence[dict[str, Any]], curves: Sequence[tuple[str, str, str, str]], *, title: str
) -> bytes | None:
    """Validation curves on one axis: ``curves`` are (legend label, stage, metric key, line
    style); a subnet and its twin share a colour (consecutive entries with the same first word)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict[str, str] = {}
    drawn = 0
    for label, stage, key, style in curves:
        steps, values = series(records, stage, "val", key)
        if not steps:
            continue
        color = groups.setdefault(label.split()[0], colors[len(groups) % len(colors)])
        ax.plot(
            steps,
            [100 * v for v in values],
            linestyle=style,
            marker="o",
            markersize=3,
            color=color,
            label=label,
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("validation WER (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _png(fig)
