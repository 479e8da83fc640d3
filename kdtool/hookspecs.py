"""Every hook a kdtool plugin can implement. The docstrings here are the plugin documentation.

Plugin API version ``PLUGIN_API_VERSION`` (``MAJOR.MINOR``). A plugin module may declare the
version it was written for as a module attribute ``KDTOOL_PLUGIN_API = "2.0"``; a plugin built
for another MAJOR version is reported as incompatible by ``kdtool plugins`` and not loaded
(using a name it would register fails with an error listing ``API_CHANGES``).
MINOR versions only add hooks, so a plugin written for 2.0 runs on 2.x.

Registration hooks receive a ``register`` callback. Call it once per object:
``register(name, obj, description="...")``. The name must be unique across all plugins:
two plugins registering one name is an error that names both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import typer

PROJECT_NAME = "kdtool"
PLUGIN_API_VERSION = "2.0"

# What changed from the previous MAJOR version (shown to a plugin written for 1.x).
API_CHANGES: list[str] = [
    "Task.roles: a task declares its stage roles as {role: kdtool.RoleSpec(description, options, "
    "loss_slots, teachers, baseline, deploy_rank)}; a recipe stage's role must be one of them "
    "(was: the fixed teacher/student/baseline/supernet). A task without `roles` gets teacher, "
    "student and baseline taking `StageOptions`",
    "stage options are validated once, when the recipe loads, by the role's options model; read "
    "them with `self.stage_options(stage)` (the validated model), not per batch",
    "a stage with no options model accepts no options (was: any dict when StageOptions was None)",
    "the baseline_for rule comes from RoleSpec.baseline (was: the role name 'baseline')",
    "Recipe.default_deploy_model(roles) ranks roles by RoleSpec.deploy_rank",
    "DeployMetadata.preprocessing/postprocessing are typed models (ImagePreprocessing, "
    "AudioPreprocessing, TextLineImagePreprocessing, ClassPostprocessing, CTCDecoding, "
    "TransducerDecoding, LandmarksPostprocessing); plain dicts are still accepted and parsed by "
    "'kind'; image 'normalization' is 'inside' | 'outside' | 'none' (was prose); metadata "
    "schema_version 2",
    "Task is generic: Task[OptionsT, DataT] types self.options and self.data",
    "distillation points: a task declares `distill_points` (kdtool.distill.PointSpec) and its "
    "step calls `ctx.expose(kind, tensor[, side='teacher'])`; the engine pairs every KD loss of "
    "the recipe with matching points (a task no longer calls `ctx.loss(name)` for KD terms)",
    "export verification (parity, metric, tolerances) is done by the export driver "
    "(kdtool.export.verify); an exporter converts, loads a runner and optionally inspects",
]

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class Register(Protocol):
    """The callback registration hooks receive."""

    def __call__(self, name: str, obj: Any, *, description: str = "") -> None: ...


# --------------------------------------------------------------------------- registration


@hookspec
def register_tasks(register: Register) -> None:
    """Register task classes (subclasses of :class:`kdtool.Task`) by name.

    A task is a domain: it builds models, data and stages from a recipe, owns the training
    step and the evaluation metric, and describes its models for export. The name is what a
    recipe's ``task.name`` refers to, e.g. ``register("facial_landmarks", LandmarksTask)``.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register model architectures by name: ``register("mobilenetv2", factory)``.

    ``factory(**options) -> torch.nn.Module``. Recipes name architectures in
    ``models.<name>.arch``; a run's ``config.json`` stores the name and options, so any model
    of a run can be rebuilt from the registry alone (how ``kdtool export`` loads it).
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register loss classes (``torch.nn.Module`` subclasses) by name.

    ``register("kl_t", SoftTargetKL)``. Recipes name losses in ``stages[].losses[].name`` with
    keyword ``options``; the engine instantiates them, moves them to the device, optimises
    their parameters (e.g. a FitNets hint projection) with the stage and checkpoints them.
    Losses are dropped at export. A distillation loss declares the point kinds it compares
    (``accepts = ("logits", "sequence_posteriors")``, see :mod:`kdtool.distill`); the engine
    then pairs it with any task's exposed points of those kinds (docs/writing-a-kd-loss.md).
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers and learning-rate schedules by name.

    Optimizers: ``register("scaled_adam", factory)`` with
    ``factory(param_groups, **options) -> torch.optim.Optimizer``.
    Schedules: ``register("schedule:eden", factory)`` (the ``schedule:`` prefix marks a
    schedule) with ``factory(optimizer, total_steps=..., steps_per_epoch=..., **options)``
    returning a ``torch.optim.lr_scheduler.LRScheduler`` stepped once per optimizer step.
    Recipes name a schedule without the prefix: ``schedule: {name: eden}``.
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register exporters (subclasses of :class:`kdtool.Exporter`) by name, e.g. ``"onnx"``.

    An exporter declares its capabilities, validates its options, writes an artifact from an
    :class:`kdtool.ExportSpec`, verifies it and loads it back as an ``ArtifactRunner``.
    Exporter names and target profile names share one namespace.
    """


@hookspec
def register_targets(register: Register) -> None:
    """Register hardware target profiles (:class:`kdtool.export.TargetProfile`) by name.

    A profile names an exporter plus tuned defaults (precision, shapes, quantization, runtime
    settings), e.g. ``onnx-cpu-int8``. ``kdtool export --target NAME`` takes a profile name
    or an exporter name (meaning that exporter's default profile).
    """


@hookspec
def register_postprocessors(register: Register) -> None:
    """Register post-processors by name: decoders and correctors applied to model outputs.

    ``register("ctc_greedy", fn)`` where the callable's contract is set by the task that
    uses it (e.g. HTR: ``fn(texts: list[str]) -> list[str]`` for a language-model corrector).
    """


@hookspec
def register_report_figures(register: Register) -> None:
    """Register figures a run report can include: ``register("landmarks_ced", fn)``.

    ``fn(run_dir: pathlib.Path) -> list[pathlib.Path]`` returns image files (PNG) it wrote or
    found in the run directory; it should return ``[]`` for runs of other tasks.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add CLI commands: ``@app.command()`` or ``app.add_typer(sub, name="...")``."""


# --------------------------------------------------------------------------- lifecycle


@hookspec
def on_stage_start(run_dir: Path, stage: str, recipe: dict[str, Any]) -> None:
    """Called on rank 0 when a stage starts (or resumes) training."""


@hookspec
def on_stage_end(run_dir: Path, stage: str, metrics: dict[str, float]) -> None:
    """Called on rank 0 when a stage finished, with its final validation metrics."""


@hookspec
def on_checkpoint_saved(run_dir: Path, stage: str, step: int, path: Path) -> None:
    """Called on rank 0 after a checkpoint has been written atomically to ``path``."""


@hookspec
def on_export_done(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    """Called after an export wrote its artifact and ``manifest.json`` (even if verification
    failed: ``manifest["status"]`` says)."""


REGISTRATION_HOOKS = (
    "register_tasks",
    "register_models",
    "register_losses",
    "register_optimizers",
    "register_exporters",
    "register_targets",
    "register_postprocessors",
    "register_report_figures",
)
LIFECYCLE_HOOKS = ("on_stage_start", "on_stage_end", "on_checkpoint_saved", "on_export_done")
ALL_HOOKS = (*REGISTRATION_HOOKS, "register_commands", *LIFECYCLE_HOOKS)
