"""The export driver: run directory + target -> verified artifact + ``manifest.json``.

Resolution order for exporter options: command line > target profile > the recipe's
``export`` defaults > the exporter's defaults. The manifest records the resolved options,
parity and metric results, what was not verified and why, versions, size and latency.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdtool import __version__
from kdtool.errors import ExportError, KdtoolError
from kdtool.export.exporter import Artifact, ExportContext, Exporter, ExporterOptions
from kdtool.export.manifest import MANIFEST_SCHEMA_VERSION, file_entries, run_reference, write_manifest
from kdtool.export.spec import DynamicAxis, ExportSpec
from kdtool.export.targets import TargetProfile
from kdtool.export.verify import artifact_graphs, compare_metric, describe_failures, verify_artifact
from kdtool.io import sha256_file
from kdtool.plugins import PluginManager, Registries
from kdtool.registry import suggest
from kdtool.run import Run
from kdtool.task import Predictor


@dataclass
class ExportRequest:
    run: Path | None = None
    target: str = "onnx"
    model: str | None = None
    precision: str | None = None
    batch: int | None = None
    options: list[str] = field(default_factory=list)
    max_metric_drop: float | None = None
    out: Path | None = None
    verify: bool = True
    # Validation samples used for the metric comparison (None: the whole split).
    eval_limit: int | None = None
    # Replace an existing folder that holds a different artifact (or no artifact).
    force: bool = False
    # Rewrite RUN/report.html (when the run has one) so it shows this export.
    refresh_report: bool = True


@dataclass
class ExportOutcome:
    directory: Path
    manifest: dict[str, Any]


def resolve_target(name: str, registries: Registries) -> tuple[TargetProfile, Exporter]:
    """A profile name, or an exporter name meaning that exporter's default profile."""
    if name in registries.targets:
        profile: TargetProfile = registries.targets.get(name)
    elif name in registries.exporters:
        cls = registries.exporters.get(name)
        default = cls.capabilities.default_profile
        if default in registries.targets:
            profile = registries.targets.get(default)
        else:
            profile = TargetProfile(name=name, exporter=name, description=cls.capabilities.description)
    else:
        known = sorted({*registries.targets.names(), *registries.exporters.names()})
        close = suggest(name, known)
        raise ExportError(
            f"unknown target {name!r}; targets and exporters: {', '.join(known) or '(none installed)'}",
            hint=f"did you mean {close!r}?" if close else "`kdtool targets` lists them",
        )
    if profile.exporter not in registries.exporters:
        raise ExportError(
            f"target {profile.name!r} needs exporter {profile.exporter!r}, which is not installed"
        )
    exporter_cls = registries.exporters.get(profile.exporter)
    missing = exporter_cls.capabilities.missing_requirements()
    if missing:
        mod, hint = missing[0]
        raise ExportError(f"exporter {profile.exporter!r} needs {mod!r}, which is not installed", hint=hint)
    return profile, exporter_cls()


def parse_cli_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ExportError(f"--opt {item!r}: expected key=value, e.g. --opt calibration=entropy")
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ExportError(f"--opt {item!r}: value is not valid YAML ({exc})") from None
    return out


def resolve_options(
    exporter: Exporter, profile: TargetProfile, recipe_export: dict[str, Any], cli: dict[str, Any]
) -> ExporterOptions:
    model = exporter.capabilities.options_model
    merged: dict[str, Any] = {}
    recipe_options = dict(recipe_export.get("options") or {})
    recipe_target = recipe_export.get("target")
    if recipe_options and recipe_target in (profile.name, profile.exporter):
        merged.update(recipe_options)
    merged.update(profile.options)
    merged.update(cli)
    try:
        return model.model_validate(merged)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                close = suggest(str(e["loc"][-1]), list(model.model_fields))
                problems.append(
                    f"unknown option {key!r}"
                    + (f" (did you mean {close!r}?)" if close else "")
                    + f"; options of {exporter.capabilities.name}: {', '.join(model.model_fields)}"
                )
            else:
                problems.append(f"option {key!r}: {e['msg']} (got {e.get('input')!r})")
        raise ExportError(f"invalid options for target {profile.name!r}: " + "; ".join(problems)) from None


def apply_batch(spec: ExportSpec, batch: int) -> ExportSpec:
    """``--batch N``: the batch axis of every graph is tuned for N (and allows it)."""
    graphs = []
    for g in spec.graphs:
        axes = dict(g.dynamic_axes)
        if "batch" in axes:
            a = axes["batch"]
            axes["batch"] = DynamicAxis(min(a.min, batch), batch, max(a.max, batch))
        graphs.append(replace(g, dynamic_axes=axes))
    return replace(spec, graphs=graphs)


def warn_own_verify(exporter: Exporter, echo: Callable[[str], None]) -> None:
    """Plugin API 2.0: the driver verifies every artifact; an exporter's own ``verify()`` is
    not called any more. Say so (once per export) so the plugin's author removes it."""
    if getattr(type(exporter), "verify", None) is not None:
        echo(
            f"kdtool: warning: exporter {exporter.capabilities.name!r} defines verify(), which kdtool no longer "
            "calls: the export driver verifies every artifact (kdtool.export.verify) through load(); move "
            "structural checks to inspect() and tolerances to Capabilities(tolerances=...)"
        )


class RunContext(Run):
    """Deprecated: use :class:`kdtool.run.Run` (``Run.open(path)``); kept for old imports."""

    def __init__(self, run: Path | str | None, manager: PluginManager | None = None) -> None:
        warnings.warn(
            "kdtool.export.driver.RunContext is deprecated; use kdtool.run.Run.open(path)",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(Run.open(run, manager=manager).run_dir, manager)


def export_model(
    request: ExportRequest, *, manager: PluginManager | None = None, echo: Callable[[str], None] = print
) -> ExportOutcome:
    ctx_run = Run.open(request.run, manager=manager)
    registries = ctx_run.registries
    profile, exporter = resolve_target(request.target, registries)
    caps = exporter.capabilities
    model_name = ctx_run.model_name(request.model)
    recipe_export = ctx_run.loaded.recipe.export.model_dump()
    precision = (
        request.precision
        or (profile.precision if profile.precision else None)
        or recipe_export.get("precision")
        or "fp32"
    )
    if precision not in caps.precisions:
        raise ExportError(
            f"target {profile.name!r} (exporter {caps.name}) does not support precision {precision!r}; "
            f"supported: {', '.join(caps.precisions)}"
        )
    options = _with_precision(
        resolve_options(exporter, profile, recipe_export, parse_cli_options(request.options)), precision
    )
    if request.batch is not None and request.batch < 1:
        raise ExportError(f"--batch must be >= 1, got {request.batch}")
    cli_options = parse_cli_options(request.options)
    out_dir = request.out or ctx_run.run_dir / "exports" / default_folder_name(
        profile, precision, model_name, ctx_run.summary.get("deploy_model"), request.batch, cli_options
    )
    identity = artifact_identity(profile.name, precision, model_name, options, request.batch)
    check_overwrite(out_dir, identity, force=request.force, echo=echo)
    echo(f"export {profile.name}: {model_name} ({precision}) -> {out_dir}")
    spec = ctx_run.export_spec(model_name)
    if caps.tasks and spec.task not in caps.tasks:
        raise ExportError(
            f"target {profile.name!r} (exporter {caps.name}) exports only task(s) {', '.join(caps.tasks)}; "
            f"model {model_name!r} is task {spec.task!r}",
            hint="`kdtool targets` lists the targets",
        )
    if request.batch is not None:
        spec = apply_batch(spec, request.batch)

    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    dependencies: dict[str, Any] = {}

    def require_artifact(target: str, extra: dict[str, Any]) -> Artifact:
        dep_profile, dep_exporter = resolve_target(target, registries)
        dep_options = resolve_options(dep_exporter, dep_profile, {}, extra)
        dep_dir = tmp_dir / f"from-{dep_profile.name}"
        dep_dir.mkdir(parents=True, exist_ok=True)
        dep_ctx = ExportContext(
            target=dep_profile.name, precision="fp32", require_artifact=require_artifact, log=echo
        )
        artifact = dep_exporter.export(spec, dep_options, dep_dir, dep_ctx)
        dependencies[dep_profile.name] = {
            "exporter": dep_profile.exporter,
            "options": dep_options.model_dump(mode="json"),
            "files": [str(p.relative_to(tmp_dir)) for p in artifact.files()],
        }
        return artifact

    ctx = ExportContext(target=profile.name, precision=precision, require_artifact=require_artifact, log=echo)
    echo(f"export {profile.name}: converting" + (" and calibrating" if precision == "int8" else ""))
    start = time.perf_counter()
    try:
        artifact = exporter.export(spec, _with_precision(options, precision), tmp_dir, ctx)
    except KdtoolError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        echo(f"export {profile.name} failed")
        raise
    export_seconds = time.perf_counter() - start

    not_verified = list(artifact.not_verified)
    here_ok, here_why = profile.verifiable_here()
    if not here_ok:
        not_verified.append(f"target hardware: {here_why}")
    verification: dict[str, Any] = {"parity": [], "passed": None, "checks": {}}
    metric_block: dict[str, Any] | None = None
    status = "ok"
    parity_problem = ""
    manifest: dict[str, Any] = _base_manifest(
        ctx_run, profile, exporter, precision, options, model_name, spec, artifact, tmp_dir, export_seconds
    )
    # relative to the manifest's folder: an artifact copied together with its run finds it
    manifest["source"]["run"] = run_reference(ctx_run.run_dir, out_dir)
    manifest["dependencies"] = dependencies
    manifest["batch"] = request.batch
    if request.verify:
        echo(f"export {profile.name}: verifying parity with PyTorch")
        warn_own_verify(exporter, echo)

        def measure(runner: Predictor) -> dict[str, Any]:
            echo(
                f"export {profile.name}: computing {ctx_run.task.primary_metric.name} of PyTorch and the artifact "
                f"on {request.eval_limit or 'all'} validation samples"
            )
            return compare_metric(ctx_run.task, spec, runner, request.eval_limit)

        result = verify_artifact(exporter, spec, artifact, options, manifest, metric=measure)
        not_verified.extend(result.not_verified)
        verification = {
            "parity": [p.to_dict() for p in result.parity],
            "passed": result.passed if result.parity else None,
            "checks": result.checks,
        }
        if result.parity and not result.passed:
            status = "parity_failed"
            parity_problem = describe_failures(result)
        metric_block = result.metric
        if metric_block is not None and request.max_metric_drop is not None:
            metric_block["max_drop"] = request.max_metric_drop
            if metric_block["drop"] > request.max_metric_drop and status == "ok":
                status = "metric_failed"
    else:
        not_verified.append("verification skipped (--no-verify)")
    manifest["status"] = status
    manifest["verification"] = verification
    manifest["metric"] = metric_block
    manifest["not_verified"] = not_verified
    write_manifest(tmp_dir / "manifest.json", manifest)
    swap_in(tmp_dir, out_dir)
    manifest["files"] = file_entries(out_dir, [out_dir / f["path"] for f in manifest["files"]])
    ctx_run.manager.notify("on_export_done", artifact_dir=out_dir, manifest=manifest)

    main_file = out_dir / next(iter(manifest["graphs"].values()))["file"]
    size = manifest["size_bytes"]
    line = f"export {profile.name}: {main_file} ({_human(size)}) in {export_seconds:.1f}s"
    if verification["passed"] is not None:
        worst = max(
            (p["max_rel_error"] for p in verification["parity"] if p["tolerance"] != float("inf")),
            default=0.0,
        )
        line += f"; parity {'ok' if verification['passed'] else 'FAILED'} (max rel err {worst:.2e})"
    if metric_block:
        line += (
            f"; {metric_block['name']} {metric_block['pytorch']:.4g} (pytorch) -> {metric_block['artifact']:.4g} "
            f"({metric_block['artifact'] - metric_block['pytorch'] + 0.0:+.4g})"
        )
    if not_verified:
        line += f"; not verified: {len(not_verified)} item(s), see manifest"
    echo(line)
    if request.refresh_report:
        refresh_run_report(ctx_run.run_dir, echo)
    if status == "parity_failed":
        raise ExportError(
            f"export {profile.name}: the artifact does not match PyTorch: {parity_problem} "
            f"(see {out_dir / 'manifest.json'})"
        )
    if status == "metric_failed":
        assert metric_block is not None
        raise ExportError(
            f"export {profile.name}: {metric_block['name']} dropped by {metric_block['drop']:.4g}, more than "
            f"--max-metric-drop {request.max_metric_drop} (artifact kept at {out_dir}, marked metric_failed)"
        )
    return ExportOutcome(out_dir, manifest)


def default_folder_name(
    profile: TargetProfile,
    precision: str,
    model_name: str,
    deploy_model: str | None,
    batch: int | None,
    cli_options: dict[str, Any],
) -> str:
    """``RUN/exports/<name>``: the target, then whatever makes this artifact differ from the
    target's default one (precision, model, batch, command-line options), so two different
    artifacts never share a folder: ``onnx-cpu``, ``onnx-cpu-fp16``, ``onnx-b8-teacher``."""
    parts = [profile.name]
    if precision != (profile.precision or "fp32") and not profile.name.endswith(f"-{precision}"):
        parts.append(precision)
    if batch is not None:
        parts.append(f"b{batch}")
    if cli_options:
        blob = json.dumps(cli_options, sort_keys=True, default=str).encode()
        parts.append("opt" + hashlib.sha256(blob).hexdigest()[:6])
    if model_name != deploy_model:
        parts.append(model_name)
    return "-".join(parts)


def artifact_identity(
    target: str, precision: str, model: str, options: ExporterOptions, batch: int | None
) -> dict[str, Any]:
    """What makes two artifacts of a run the same artifact (compared with a folder's manifest)."""
    return {
        "target": target,
        "precision": precision,
        "model": model,
        "options": json.loads(json.dumps(options.model_dump(mode="json"), default=str)),
        "batch": batch,
    }


def check_overwrite(
    out_dir: Path, identity: dict[str, Any], *, force: bool, echo: Callable[[str], None]
) -> None:
    """Refuse to replace a folder holding a different artifact (or anything else) unless
    ``force``; the same artifact made again (e.g. after more training) replaces the old one."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    manifest_path = out_dir / "manifest.json"
    existing: dict[str, Any] | None = None
    if manifest_path.exists():
        try:
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
            existing = {k: m.get(k) for k in identity}
        except (OSError, ValueError):
            existing = None
    if existing == identity:
        echo(f"export: replacing the earlier export in {out_dir} (same target, precision, model and options)")
        return
    if force:
        echo(f"export: --force: replacing {out_dir}")
        return
    if existing is None:
        what = (
            "files that are not a kdtool artifact" if not manifest_path.exists() else "an unreadable manifest"
        )
    else:
        diff = [
            f"{k} {existing[k]!r} (now {identity[k]!r})"
            for k in identity
            if k != "options" and existing[k] != identity[k]
        ]
        old_opts, new_opts = existing.get("options") or {}, identity["options"]
        diff += [
            f"option {k} {old_opts.get(k)!r} (now {new_opts.get(k)!r})"
            for k in sorted({*old_opts, *new_opts})
            if k != "precision" and old_opts.get(k) != new_opts.get(k)
        ]
        what = "a different artifact: " + "; ".join(diff)
    raise ExportError(
        f"{out_dir} holds {what}",
        hint="pass --force to replace it, or --out DIR for another folder",
    )


def swap_in(tmp_dir: Path, out_dir: Path) -> None:
    """Put the finished artifact in ``tmp_dir`` at ``out_dir`` without ever leaving a
    half-replaced folder: the old folder is moved aside, the new one renamed in, then the
    old one removed (a crash in between leaves the old or the new folder whole)."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def refresh_run_report(run_dir: Path, echo: Callable[[str], None]) -> None:
    """Rewrite the run's report (if it has one) so its exports table shows the new artifact;
    its measurements are cached, so this is quick. A failure here never fails the export."""
    from kdtool.report import REPORT_FILE, ReportOptions, write_report

    if not (run_dir / REPORT_FILE).exists():
        return
    try:
        path = write_report(run_dir, ReportOptions(echo=echo))
    except Exception as exc:
        echo(f"export: report not refreshed ({type(exc).__name__}: {exc}); `kdtool report {run_dir}` does it")
        return
    echo(f"report: {path} (refreshed)")


def _with_precision(options: ExporterOptions, precision: str) -> ExporterOptions:
    return options.model_copy(update={"precision": precision})


def _base_manifest(
    ctx_run: Run,
    profile: TargetProfile,
    exporter: Exporter,
    precision: str,
    options: ExporterOptions,
    model_name: str,
    spec: ExportSpec,
    artifact: Artifact,
    directory: Path,
    export_seconds: float,
) -> dict[str, Any]:
    entry = ctx_run.summary["models"][model_name]
    weights = ctx_run.run_dir / entry["weights"]
    files = file_entries(directory, artifact.files())
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "kdtool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "format": exporter.capabilities.name,
        "target": profile.name,
        "target_description": profile.description,
        "machine": profile.machine,
        "precision": precision,
        "options": options.model_dump(mode="json"),
        "task": spec.task,
        "model": model_name,
        "role": entry.get("role"),
        "params": entry.get("params"),
        "source": {
            "run": str(ctx_run.run_dir),  # made relative to the final folder by export_model
            "run_at_export": str(ctx_run.run_dir),
            "recipe": ctx_run.summary.get("recipe"),
            "recipe_hash": ctx_run.summary.get("recipe_hash"),
            "weights": entry["weights"],
            "weights_sha256": sha256_file(weights),
        },
        "export_spec_version": spec.version,
        "graphs": artifact_graphs(spec, artifact),
        "metadata": spec.metadata.to_dict(),
        "files": files,
        "size_bytes": sum(f["bytes"] for f in files),
        "versions": {"kdtool": __version__, **exporter.versions()},
        "export_seconds": round(export_seconds, 3),
        "details": artifact.details,
        "bench": {},
    }


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"
