"""Subnet extraction and ``kdtool subnets RUN``: deploy many models from one supernet.

``kdtool subnets RUN`` lists every subnet of the run's supernet (the search space's layers x
heads x ffn choices) with its parameters, validation WER and latency measured on this
machine (encoder plus greedy decoding of a fixed validation utterance, PyTorch, batch 1;
``--repeats`` rounds interleaved over the subnets, so a load change on a shared machine
shifts all of them alike; the median and the quartiles are kept), keeps the table in
``RUN/subnets/table.json`` (reused when the machine and settings match), and writes a
size-vs-WER and latency-vs-WER Pareto plot ``RUN/subnets/pareto.png`` (also
``RUN/figures/subnets_pareto.png``, so ``kdtool report`` shows it) with the run's twins
(each architecture trained alone) overlaid. With ``--max-latency-ms X`` and/or
``--max-params N`` it picks the most accurate subnet within the budget (by median latency),
says whether the pick holds at the first and third latency quartiles too (stable against
latency noise), and adds it to the run's ``summary.json`` as a model (role ``subnet``, named
``--name``) that ``kdtool export --model NAME`` extracts.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from kdtool.io import atomic_path, read_json, save_weights, write_json
from kdtool.task import Predictor, Task

from .models import Subnet, SupernetRNNT


def build_subnet_model(
    supernet: SupernetRNNT, options: dict[str, Any], sub: Subnet
) -> tuple[SupernetRNNT, dict[str, Any]]:
    """A standalone model holding copies of ``sub``'s slices of ``supernet``, and its options."""
    sub_options = supernet.subnet_options(options, sub)
    model = SupernetRNNT(**sub_options)
    model.load_state_dict(supernet.extract(sub))
    return model.eval(), sub_options


def write_subnet_model(
    task: Task,
    run_dir: Path,
    stage_name: str,
    supernet: SupernetRNNT,
    config: dict[str, Any],
    sub: Subnet,
    name: str,
    *,
    label: str,
    eval_limit: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``models/NAME.safetensors`` + ``.json`` for a subnet, evaluate it, return its
    summary entry (role ``subnet``)."""
    model, sub_options = build_subnet_model(supernet, config["options"], sub)
    weights = run_dir / "models" / f"{name}.safetensors"
    config_path = run_dir / "models" / f"{name}.json"
    save_weights(model, weights)
    write_json(
        config_path,
        {
            "arch": config["arch"],
            "options": sub_options,
            "task": task.name,
            "stage": stage_name,
            "role": "subnet",
            "subnet": sub.to_dict(),
        },
    )
    metrics = task.evaluate(task.predictor(model, name), "val", limit=eval_limit)
    return {
        "role": "subnet",
        "supernet": stage_name,
        "subnet": {**sub.to_dict(), "label": label},
        "model": name,
        "arch": config["arch"],
        "params": sum(p.numel() for p in model.parameters()),
        "metrics": metrics,
        "weights": str(weights.relative_to(run_dir)),
        "config": str(config_path.relative_to(run_dir)),
        **(extra or {}),
    }


def measure_latency(predictor: Predictor, features: torch.Tensor, *, repeats: int = 5) -> float:
    """Median milliseconds of encoder + greedy decoding of one utterance (batch 1)."""
    return statistics.median(measure_latencies({"_": predictor}, features, rounds=repeats)["_"])


def measure_latencies(
    predictors: dict[str, Predictor], features: torch.Tensor, *, rounds: int = 5
) -> dict[str, list[float]]:
    """Milliseconds of encoder + greedy decoding of one utterance (batch 1) per predictor,
    ``rounds`` times each, interleaved (round r times every predictor once), so that a load
    change on a shared machine shifts every subnet alike instead of the last ones measured."""
    from .decoding import DecoderInfo, decode_batch

    lengths = torch.tensor([features.shape[1]])

    def once(predictor: Predictor) -> float:
        info = DecoderInfo.from_metadata(predictor.metadata)
        start = time.perf_counter()
        enc, enc_lens = predictor.graphs["encoder"](features, lengths)[:2]
        decode_batch(predictor, enc, enc_lens, info, beam=0, max_symbols=3)
        return (time.perf_counter() - start) * 1000

    for predictor in predictors.values():
        once(predictor)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predictor in predictors.items():
            times[name].append(once(predictor))
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def pick(
    rows: list[dict[str, Any]],
    max_latency_ms: float | None,
    max_params: int | None,
    latency_key: str = "latency_ms",
) -> dict[str, Any] | None:
    """The most accurate row within the budget (ties: the faster), None when nothing fits."""
    fits = [
        r
        for r in rows
        if (max_latency_ms is None or r[latency_key] <= max_latency_ms)
        and (max_params is None or r["params"] <= max_params)
    ]
    return min(fits, key=lambda r: (r["wer"], r[latency_key])) if fits else None


def pick_stability(
    rows: list[dict[str, Any]], max_latency_ms: float | None, max_params: int | None
) -> dict[str, Any]:
    """Whether the pick holds when every latency is taken at its first or third quartile
    instead of the median (the spread of the repeats): the picks under the three."""
    picks: dict[str, str | None] = {}
    for which, index in (("q1", 0), ("median", 1), ("q3", 2)):
        shifted = [
            {**r, "_lat": r["latency_quartiles_ms"][index]} for r in rows if "latency_quartiles_ms" in r
        ]
        best = pick(shifted, max_latency_ms, max_params, "_lat") if len(shifted) == len(rows) else None
        picks[which] = best["label"] if best else None
    return {"picks": picks, "stable": len(set(picks.values())) == 1}


def pareto(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows not dominated in (key, wer): no other row is at most as large and more accurate."""
    front = []
    for r in sorted(rows, key=lambda r: (r[key], r["wer"])):
        if not front or r["wer"] < front[-1]["wer"]:
            front.append(r)
    return front


def plot_pareto(
    rows: list[dict[str, Any]], path: Path, named: dict[str, str], twins: list[dict[str, Any]] | None = None
) -> None:
    """Size and latency vs WER of every subnet, the Pareto fronts, and the twins trained
    alone (``twins``: dicts with ``label`` (the subnet's), ``name``, ``params``, ``wer``; a
    twin has its subnet's architecture, so it is drawn at its subnet's measured latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, xlabel in (
        (axes[0], "params", "parameters"),
        (axes[1], "latency_ms", "latency (ms, this machine)"),
    ):
        ax.scatter(
            [r[key] for r in rows], [100 * r["wer"] for r in rows], s=18, c="tab:gray", label="subnets"
        )
        front = pareto(rows, key)
        ax.plot(
            [r[key] for r in front],
            [100 * r["wer"] for r in front],
            "-o",
            c="tab:red",
            ms=4,
            label="Pareto front",
        )
        for r in rows:
            if r["label"] in named:
                ax.annotate(named[r["label"]], (r[key], 100 * r["wer"]), fontsize=8)
        by_label = {r["label"]: r for r in rows}
        drawn = [t for t in twins or [] if t["label"] in by_label and t.get("wer") is not None]
        if drawn:
            xs = [t["params"] if key == "params" else by_label[t["label"]][key] for t in drawn]
            ax.scatter(
                xs,
                [100 * t["wer"] for t in drawn],
                marker="x",
                s=50,
                c="tab:blue",
                label="twins (trained alone)",
            )
            for x, t in zip(xs, drawn, strict=True):
                ax.annotate(
                    t["name"],
                    (x, 100 * t["wer"]),
                    fontsize=7,
                    color="tab:blue",
                    xytext=(3, -9),
                    textcoords="offset points",
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WER (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("TODM supernet: subnets (and their twins), size and latency vs WER")
    fig.tight_layout()
    from kdtool.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def subnets_table(
    run: Path | None, *, eval_limit: int | None, repeats: int, refresh: bool, echo: Any = print
) -> tuple[Any, str, SupernetRNNT, dict[str, Any], list[dict[str, Any]]]:
    from kdtool.errors import RunError
    from kdtool.run import Run

    ctx = Run.open(run)
    task = ctx.task
    stages = [
        n
        for n, m in ctx.summary.get("models", {}).items()
        if m.get("role") == "supernet" and m.get("weights")
    ]
    if not stages:
        raise RunError(f"run {ctx.run_dir} has no finished supernet stage (role 'supernet')")
    stage_name = stages[0]
    entry = ctx.summary["models"][stage_name]
    config = read_json(ctx.run_dir / entry["config"], what="model config")
    supernet, _ = ctx.registries.models.get(config["arch"]), None
    from kdtool.io import load_weights

    supernet = SupernetRNNT(**config["options"])
    supernet.load_state_dict(load_weights(ctx.run_dir / entry["weights"]))
    supernet.eval()
    table_path = ctx.run_dir / "subnets" / "table.json"
    key = {
        "machine": platform.node(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "eval_limit": eval_limit,
        "weights": entry["weights"],
    }
    cached: dict[str, Any] = {}
    if table_path.exists() and not refresh:
        stored = read_json(table_path, what="subnet table")
        if stored.get("key") == key:
            cached = {r["label"]: r for r in stored.get("rows", [])}
    dataset = task.build_dataset("val")
    features = dataset.features(0)[None]  # type: ignore[attr-defined]
    rows = []
    subnets = supernet.all_subnets()
    predictors: dict[str, Predictor] = {}
    for i, sub in enumerate(subnets):
        if sub.label in cached and "latency_quartiles_ms" in cached[sub.label]:
            rows.append(cached[sub.label])
            continue
        model, _ = build_subnet_model(supernet, config["options"], sub)
        predictor = task.predictor(model, sub.label)
        metrics = task.evaluate(predictor, "val", limit=eval_limit)
        predictors[sub.label] = predictor
        rows.append(
            {
                "label": sub.label,
                **sub.to_dict(),
                "params": sum(p.numel() for p in model.parameters()),
                "wer": metrics["wer"],
                "cer": metrics["cer"],
            }
        )
        echo(
            f"[{i + 1}/{len(subnets)}] {sub.label}: {rows[-1]['params']:,} params, WER {100 * metrics['wer']:.2f}%"
        )
    if predictors:
        echo(f"latency: {repeats} interleaved rounds over {len(predictors)} subnets (median, quartiles)")
        times = measure_latencies(predictors, features, rounds=repeats)
        for row in rows:
            if row["label"] in times:
                q1, q2, q3 = quartiles(times[row["label"]])
                row["latency_ms"] = round(q2, 3)
                row["latency_quartiles_ms"] = [round(q1, 3), round(q2, 3), round(q3, 3)]
    write_json(table_path, {"key": key, "utterance_frames": int(features.shape[1]), "rows": rows})
    return ctx, stage_name, supernet, config, rows


def register_subnets_command(app: typer.Typer) -> None:
    @app.command("subnets")
    def subnets(
        run: Annotated[Path | None, typer.Argument(help="Run directory (default: runs/latest).")] = None,
        max_latency_ms: Annotated[
            float | None, typer.Option("--max-latency-ms", help="Latency budget on this machine.")
        ] = None,
        max_params: Annotated[int | None, typer.Option("--max-params", help="Parameter budget.")] = None,
        name: Annotated[
            str | None, typer.Option("--name", help="Model name for the pick (default: <stage>-<subnet>).")
        ] = None,
        eval_limit: Annotated[
            int | None, typer.Option("--eval-limit", help="Validation utterances per subnet.")
        ] = None,
        repeats: Annotated[
            int,
            typer.Option(
                "--repeats", help="Latency rounds, interleaved over the subnets (median, quartiles)."
            ),
        ] = 15,
        refresh: Annotated[
            bool, typer.Option("--refresh", help="Re-measure even if the table is cached.")
        ] = False,
    ) -> None:
        """List a supernet run's subnets (params, WER, latency here), plot the Pareto fronts,
        and with a budget add the most accurate subnet within it to the run as a model."""
        from rich.table import Table

        from kdtool.cli.common import console
        from kdtool.errors import RunError

        ctx, stage_name, supernet, config, rows = subnets_table(
            run, eval_limit=eval_limit, repeats=repeats, refresh=refresh, echo=console.print
        )
        named = {
            supernet.largest.label: "largest",
            supernet.middle.label: "middle",
            supernet.smallest.label: "smallest",
        }
        twins = [
            {
                "label": supernet_label,
                "name": tname,
                "params": entry.get("params"),
                "wer": (entry.get("metrics") or {}).get("wer"),
            }
            for tname, entry in ctx.summary.get("models", {}).items()
            if entry.get("twin_of")
            and (supernet_label := _subnet_label(ctx.summary["models"].get(entry["twin_of"], {})))
        ]
        plot = ctx.run_dir / "subnets" / "pareto.png"
        plot_pareto(rows, plot, named, twins)
        # the report shows every image under RUN/figures/
        figure = ctx.run_dir / "figures" / "subnets_pareto.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(figure) as tmp:
            tmp.write_bytes(plot.read_bytes())
        table = Table(title=f"subnets of {stage_name} ({ctx.run_dir})")
        for col in (
            "subnet",
            "layers",
            "heads",
            "ffn",
            "params",
            "WER %",
            "CER %",
            "latency ms",
            "IQR ms",
            "Pareto",
        ):
            table.add_column(col)
        front = {r["label"] for r in pareto(rows, "latency_ms")} | {
            r["label"] for r in pareto(rows, "params")
        }
        for r in sorted(rows, key=lambda r: r["params"]):
            table.add_row(
                r["label"] + (f" ({named[r['label']]})" if r["label"] in named else ""),
                str(r["layers"]),
                str(r["heads"]),
                str(r["ffn"]),
                f"{r['params']:,}",
                f"{100 * r['wer']:.2f}",
                f"{100 * r['cer']:.2f}",
                f"{r['latency_ms']:.1f}",
                "{:.1f}-{:.1f}".format(*r["latency_quartiles_ms"][::2])
                if "latency_quartiles_ms" in r
                else "",
                "*" if r["label"] in front else "",
            )
        console.print(table)
        if twins:
            by_label = {r["label"]: r for r in rows}
            versus = Table(title="named subnets vs their twins (same architecture trained alone)")
            for col in ("subnet", "WER %", "twin", "twin WER %", "relative", "within 5 %"):
                versus.add_column(col)
            for t in sorted(twins, key=lambda t: t["params"] or 0):
                r = by_label.get(t["label"])
                if r is None or t["wer"] is None:
                    continue
                rel = (r["wer"] - t["wer"]) / t["wer"] if t["wer"] > 0 else 0.0
                versus.add_row(
                    t["label"] + (f" ({named[t['label']]})" if t["label"] in named else ""),
                    f"{100 * r['wer']:.2f}",
                    t["name"],
                    f"{100 * t['wer']:.2f}",
                    f"{100 * rel:+.1f} %",
                    "yes" if rel <= 0.05 else "no",
                )
            console.print(versus)
            if eval_limit is not None:
                console.print(
                    f"[yellow]note[/]: subnet WERs on the first {eval_limit} validation utterances "
                    "(--eval-limit), the twins' on the whole validation set"
                )
        console.print(f"Pareto plot: {plot}")
        if max_latency_ms is None and max_params is None:
            return
        best = pick(rows, max_latency_ms, max_params)
        if best is None:
            raise RunError(
                f"no subnet fits the budget (latency <= {max_latency_ms} ms, params <= {max_params}); fastest is "
                f"{min(r['latency_ms'] for r in rows):.1f} ms, smallest {min(r['params'] for r in rows):,} params"
            )
        stability = pick_stability(rows, max_latency_ms, max_params)
        sub = Subnet(best["layers"], best["heads"], best["ffn"])
        model_name = name or f"{stage_name}-{sub.label}"
        entry = write_subnet_model(
            ctx.task,
            ctx.run_dir,
            stage_name,
            supernet,
            config,
            sub,
            model_name,
            label=sub.label,
            eval_limit=eval_limit,
            extra={
                "picked_by": {
                    "max_latency_ms": max_latency_ms,
                    "max_params": max_params,
                    "latency_ms": best["latency_ms"],
                    "latency_quartiles_ms": best.get("latency_quartiles_ms"),
                    "repeats": repeats,
                    "stable": stability["stable"],
                    "picks_at_quartiles": stability["picks"],
                    "machine": platform.node(),
                }
            },
        )
        ctx.add_model(model_name, entry)  # under the run's summary lock
        q = best.get("latency_quartiles_ms") or [best["latency_ms"]] * 3
        if stability["stable"]:
            console.print(
                f"pick stable under latency noise: the same subnet at the first quartile, median and third "
                f"quartile of {repeats} repeats ({sub.label}: {q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f} ms)"
            )
        else:
            console.print(
                f"[yellow]pick NOT stable under latency noise[/]: at the first quartile / median / third quartile "
                f"the pick is {stability['picks']['q1']} / {stability['picks']['median']} / {stability['picks']['q3']}; "
                f"use more --repeats, a quieter machine, or a budget away from the boundary"
            )
        console.print(
            f"picked {sub.label}: WER {100 * best['wer']:.2f}%, {best['latency_ms']:.1f} ms, {best['params']:,} params "
            f"-> model {model_name!r}; export it with `kdtool export {ctx.run_dir} --target onnx --model {model_name}`"
        )


def _subnet_label(entry: dict[str, Any]) -> str | None:
    """The search-space label (L4-H4-F192) of a summary's subnet entry."""
    sub = entry.get("subnet") or {}
    try:
        return Subnet(int(sub["layers"]), int(sub["heads"]), int(sub["ffn"])).label
    except (KeyError, TypeError, ValueError):
        return None
