"""The distillation engine: runs a recipe's stages in order, one trainable model per stage.

The engine knows stages, never a domain: the task builds data and models and computes the
losses of a step; the engine owns devices, mixed precision, accumulation, DDP, clipping,
schedules, evaluation, checkpoints, resume, logging and the run directory.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from kdtool import __version__
from kdtool.data import EpochSampler
from kdtool.distill import build_module, check_entry, loss_accepts, plan_stage
from kdtool.engine import distributed as kdist
from kdtool.engine.build import build_task, load_run_model, rebuild_model
from kdtool.engine.checkpoint import StageCheckpointer, TrainerState
from kdtool.engine.context import StepContext, TeacherCache
from kdtool.engine.device import check_precision, resolve_device
from kdtool.engine.evaluation import StageEvaluator, evaluate_isolated
from kdtool.engine.options import check_component_options
from kdtool.engine.progress import StageProgress
from kdtool.engine.rundir import (
    SUMMARY_SCHEMA_VERSION,
    MetricsLog,
    mark_failed,
    new_run_dir,
    newest_run,
    point_latest,
    read_state,
    read_summary,
    resolve_run,
    write_resolved_recipe,
    write_state,
    write_summary,
)
from kdtool.engine.stagehash import plan_resume, stage_hashes
from kdtool.engine.step import training_step
from kdtool.errors import RecipeError, RunError
from kdtool.io import load_weights, read_json, save_weights, write_json
from kdtool.plugins import PluginManager, Registries, get_plugin_manager
from kdtool.recipe import LoadedRecipe, ModelConfig, Recipe, StageConfig, TeacherRef
from kdtool.run import Run
from kdtool.task import Task


@dataclass
class DistillOptions:
    max_steps: int | None = None
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    dry_run: bool = False
    resume: bool = False
    resume_dir: Path | None = None
    progress: bool = True
    echo: Callable[[str], None] = print


@dataclass
class BuiltModel:
    module: nn.Module
    config: dict[str, Any]


@dataclass
class StageSetup:
    """What a stage's training loop needs, built by :meth:`Engine._set_up_stage`."""

    built: BuiltModel
    model: nn.Module
    teachers: dict[str, nn.Module]
    losses: nn.ModuleDict
    train_set: Dataset[Any]
    sampler: EpochSampler
    loader: DataLoader[Any]
    per_rank: int
    steps_per_epoch: int
    total_steps: int
    params: list[nn.Parameter]
    loss_params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    cache: TeacherCache | None
    ctx: StepContext
    grad_accum: int

    def epoch_iterator(self, epoch: int, within: int) -> Iterator[Any]:
        """A fresh iterator over ``epoch``, starting ``within`` optimizer steps into it."""
        self.sampler.set_epoch(epoch, start=within * self.per_rank * self.grad_accum)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        return iter(self.loader)


@dataclass
class _LossWindow:
    """Running means of the loss terms and the sample rate between two train-log records."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def flush(self, log: MetricsLog | None, record: dict[str, Any], lr: float) -> float:
        """Append the window's record to ``log`` (when given), start a new window; returns samples/s."""
        elapsed = time.perf_counter() - self.start
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        if log is not None:
            record.update({f"loss/{k}": v / self.count for k, v in self.sums.items()})
            record["lr"] = lr
            record["samples_per_s"] = rate
            log.append(record)
        self.sums, self.count, self.samples = {}, 0, 0
        self.start = time.perf_counter()
        return rate


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


_WARNED_SUMMARY_EXTRAS: set[type] = set()


def warn_summary_extras(task_cls: type) -> None:
    """``Task.summary_extras`` is deprecated: warn once per task class."""
    if task_cls in _WARNED_SUMMARY_EXTRAS:
        return
    _WARNED_SUMMARY_EXTRAS.add(task_cls)
    warnings.warn(
        f"task {getattr(task_cls, 'name', task_cls.__name__)!r} ({task_cls.__module__}.{task_cls.__qualname__}) "
        "overrides Task.summary_extras, deprecated since plugin API 2.0: override "
        "Task.on_run_end(run) and write through run.add_model / run.update_summary",
        DeprecationWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- building


def build_model(task: Task, registries: Registries, name: str, cfg: ModelConfig) -> BuiltModel:
    """A fresh model of the recipe's ``models[name]``, with the config that rebuilds it."""
    factory = registries.models.get(cfg.arch)
    options = task.model_options(name, cfg.arch, dict(cfg.options))
    try:
        module = factory(**options)
    except TypeError as exc:
        raise RecipeError(
            f"models.{name}: architecture {cfg.arch!r} rejected its options {options}: {exc}"
        ) from None
    if cfg.checkpoint:
        module.load_state_dict(load_weights(Path(cfg.checkpoint)))
    config = {"arch": cfg.arch, "options": options, "task": task.name}
    return BuiltModel(module, config)


def load_teacher(
    ref: TeacherRef, *, task: Task, registries: Registries, run_dir: Path, loaded: LoadedRecipe | None = None
) -> nn.Module:
    if ref.stage is not None:
        cfg_path = run_dir / "models" / f"{ref.stage}.json"
        weights = run_dir / "models" / f"{ref.stage}.safetensors"
        if not weights.exists():
            raise RunError(
                f"teacher {ref.name!r} is stage {ref.stage!r}, which has not finished in run {run_dir}",
                hint="run that stage first (drop --only/--skip), or point the teacher at another run",
            )
        return rebuild_model(registries, read_json(cfg_path, what="model config"), weights)
    if ref.run is not None:
        assert ref.model is not None  # checked by the recipe schema
        return load_run_model(registries, resolve_run(ref.run), ref.model)[0]
    if ref.onnx is not None:
        from kdtool.engine.teachers import OnnxTeacher

        return OnnxTeacher(Path(ref.onnx))
    if ref.program is not None:
        from kdtool.engine.teachers import load_program_teacher

        return load_program_teacher(Path(ref.program), trust=ref.trust_code)
    assert ref.checkpoint is not None and ref.arch is not None
    built = build_model(task, registries, ref.name, ModelConfig(arch=ref.arch, options=ref.options))
    try:
        built.module.load_state_dict(load_weights(Path(ref.checkpoint)))
    except RuntimeError as exc:
        raise RecipeError(
            f"teacher {ref.name!r}: {ref.checkpoint} does not fit architecture {ref.arch!r}: {exc}"
        ) from None
    return built.module


def load_stage_teachers(
    stage: StageConfig,
    *,
    task: Task,
    registries: Registries,
    run_dir: Path,
    loaded: LoadedRecipe | None,
    device: torch.device | str = "cpu",
    load: Callable[[TeacherRef], nn.Module] | None = None,
) -> dict[str, nn.Module]:
    """The stage's teachers by name: loaded (``load``, default :func:`load_teacher`), moved to
    ``device``, frozen in eval mode and accepted by the task's ``check_teacher``."""
    teachers: dict[str, nn.Module] = {}
    for ref in stage.teachers:
        if load is not None:
            teacher = load(ref)
        else:
            teacher = load_teacher(ref, task=task, registries=registries, run_dir=run_dir, loaded=loaded)
        teacher.to(device).eval().requires_grad_(False)
        task.check_teacher(stage, ref.name, teacher)
        teachers[ref.name] = teacher
    return teachers


def init_stage_model(task: Task, run_dir: Path, stage: StageConfig, built: BuiltModel) -> BuiltModel:
    """``init``: start from an earlier stage's weights; ``quantization_aware``: fold, place
    fake quantizers and calibrate them (:mod:`kdtool.quant`), the plan kept in the config."""
    if stage.init is not None:
        weights = run_dir / "models" / f"{stage.init}.safetensors"
        if not weights.exists():
            raise RunError(
                f"stage {stage.name!r} starts from stage {stage.init!r}, which has not finished in run {run_dir}",
                hint="run that stage first (drop --only/--skip)",
            )
        built.module.load_state_dict(load_weights(weights))
    qa = stage.quantization_aware
    if qa is not None:
        from kdtool.quant import prepare_stage_model

        plan = prepare_stage_model(
            built.module,
            task,
            stage.model,
            activations=qa.activations,
            calibration_samples=qa.calibration_samples,
            exclude=qa.exclude,
        )
        plan["init"] = stage.init
        built = BuiltModel(built.module, {**built.config, "quantization_aware": plan})
    return built


def build_losses(stage: StageConfig, registries: Registries) -> nn.ModuleDict:
    modules = nn.ModuleDict()
    for term in stage.losses:
        if term.loss is None:
            continue
        cls = registries.losses.get(term.loss)
        modules[term.name] = build_module(term, cls, where=f"stage {stage.name!r}, losses.{term.name}")
    return modules


def check_recipe_names(recipe: Recipe, registries: Registries) -> None:
    """Fail before any training when a recipe names something no plugin registered."""
    task_cls = registries.tasks.get(recipe.task.name)
    for name, cfg in recipe.models.items():
        if cfg.arch not in registries.models:
            raise _unknown(f"models.{name}.arch", registries.models, cfg.arch)
    for stage in recipe.stages:
        where = f"stages.{stage.name}"
        for term in stage.losses:
            if term.loss is not None and term.loss not in registries.losses:
                raise _unknown(f"{where}.losses.{term.name}.loss", registries.losses, term.loss)
            if term.loss is None:
                continue
            loss_cls = registries.losses.get(term.loss)
            if loss_accepts(loss_cls) and getattr(task_cls, "distill_points", ()):
                check_entry(
                    term,
                    loss_cls,
                    list(getattr(task_cls, "distill_points", ()) or ()),
                    task_cls.default_between,
                    task_name=recipe.task.name,
                    where=f"{where}.losses.{term.name}",
                    registered={n: loss_accepts(registries.losses.get(n)) for n in registries.losses.names()},
                )
            elif term.between is not None:
                raise RecipeError(
                    f"{where}.losses.{term.name}: loss {term.loss!r} declares no point kinds it accepts, "
                    "so it cannot take 'between'",
                    hint="distillation losses set `accepts = (...)`; see docs/writing-a-kd-loss.md",
                )
        if stage.optimizer.name not in registries.optimizers:
            raise _unknown(f"{where}.optimizer.name", registries.optimizers, stage.optimizer.name)
        if stage.schedule.name not in registries.schedules:
            raise _unknown(f"{where}.schedule.name", registries.schedules, stage.schedule.name)
        for t in stage.teachers:
            if t.name == stage.model:
                raise RecipeError(
                    f"{where}: teacher name {t.name!r} equals the trained model's name; rename the teacher"
                )
            if t.arch is not None and t.arch not in registries.models:
                raise _unknown(f"{where}.teachers.{t.name}.arch", registries.models, t.arch)


def _unknown(where: str, registry: Any, name: str) -> RecipeError:
    """The registry's unknown-name error (with its suggestion), prefixed with the field path."""
    try:
        registry.get(name)
    except Exception as exc:
        return RecipeError(f"{where}: {exc}")
    return RecipeError(f"{where}: invalid value {name!r}")


# --------------------------------------------------------------------------- engine


class Engine:
    def __init__(
        self, loaded: LoadedRecipe, opts: DistillOptions, manager: PluginManager | None = None
    ) -> None:
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.opts = opts
        self.manager = manager or get_plugin_manager()
        self.registries = self.manager.registries()
        check_recipe_names(self.recipe, self.registries)
        if self.recipe.threads is not None:
            torch.set_num_threads(self.recipe.threads)
        self.dist = kdist.init_distributed(resolve_device(self.recipe.device).type)
        self.device = resolve_device(self.recipe.device, self.dist.local_rank)
        check_precision(self.recipe.precision, self.device)
        self.task = build_task(loaded, self.registries)
        check_component_options(loaded, self.registries, self.task)
        self._datasets: dict[str, Dataset[Any]] = {}
        self.echo = opts.echo if self.dist.is_main else (lambda _msg: None)

    # ------------------------------------------------------------ run dir

    def _open_run_dir(self) -> Path:
        runs_dir = Path(self.recipe.runs_dir)
        path: Path | None = None
        if self.dist.is_main:
            if self.opts.resume:
                path = self._run_to_resume(runs_dir)
                state = read_state(path)
                self.echo(f"resuming run {path}")
                if state.get("recipe_hash") not in (None, self.recipe.hash()):
                    plan_resume(self.recipe, state, path, self.echo)
            else:
                path = new_run_dir(runs_dir, self.recipe.name)
        return Path(kdist.broadcast_object(self.dist, str(path) if path else ""))

    def _run_to_resume(self, runs_dir: Path) -> Path:
        """``--run DIR``, else the newest run of this recipe (``latest`` names only finished runs)."""
        if self.opts.resume_dir is not None:
            path = self.opts.resume_dir
            if not path.exists():
                raise RunError(f"nothing to resume: no run at {path}", hint="start it without --resume")
            return path.resolve()
        found = newest_run(runs_dir / self.recipe.name)
        if found is None:
            raise RunError(
                f"nothing to resume: no run of recipe {self.recipe.name!r} under {runs_dir / self.recipe.name}",
                hint="start it without --resume",
            )
        return found.resolve()

    def _summary_base(self, run_dir: Path) -> dict[str, Any]:
        if (run_dir / "summary.json").exists():
            return read_summary(run_dir)
        metric = self.task.primary_metric
        return {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "kdtool_version": __version__,
            "task": self.recipe.task.name,
            "recipe": self.recipe.name,
            "recipe_hash": self.recipe.hash(),
            "recipe_file": self.loaded.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "device": str(self.device),
            "precision": self.recipe.precision,
            "world_size": self.dist.world_size,
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "platform": platform.platform(),
                "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            },
            "plugins": {
                name: {"version": info.version, "distribution": info.distribution}
                for name, info in self.manager.infos.items()
                if info.status == "ok"
            },
            "primary_metric": {"name": metric.name, "higher_is_better": metric.higher_is_better},
            "deploy_model": self.recipe.default_deploy_model(self.task.role_specs()),
            "models": {},
        }

    # ------------------------------------------------------------ public

    def dry_run(self) -> dict[str, Any]:
        """Validate, build every model, report parameter counts and the stage plan."""
        plan: dict[str, Any] = {"models": {}, "stages": []}
        for name, cfg in self.recipe.models.items():
            built = build_model(self.task, self.registries, name, cfg)
            plan["models"][name] = {"arch": cfg.arch, "params": count_params(built.module)}
        train_len = len(self._dataset("train"))  # type: ignore[arg-type]
        for stage in self.recipe.stages:
            per_rank = self._per_rank_batch(stage)
            steps_per_epoch = max(1, train_len // self.dist.world_size // per_rank // stage.grad_accum)
            total = self._total_steps(stage, steps_per_epoch)
            plan["stages"].append(
                {
                    "name": stage.name,
                    "role": stage.role,
                    "model": stage.model,
                    "teachers": [t.name for t in stage.teachers],
                    "losses": {t.name: t.weight for t in stage.losses},
                    "optimizer": stage.optimizer.name,
                    "steps": total,
                    "batch_size": stage.batch_size,
                    "skipped": not self._selected(stage),
                }
            )
        return plan

    def run(self) -> Path:
        seed_everything(self.recipe.seed)
        run_dir = self._open_run_dir()
        try:
            self._run_in(run_dir)
        except BaseException as exc:
            if self.dist.is_main:
                mark_failed(run_dir, exc)
            raise
        if self.dist.is_main:
            # Only a run that ended without an error becomes latest, when it ends.
            point_latest(Path(self.recipe.runs_dir), run_dir)
        kdist.shutdown(self.dist)
        return run_dir

    def _run_in(self, run_dir: Path) -> None:
        """Train the selected stages that are not complete in ``run_dir``."""
        if self.dist.is_main:
            write_resolved_recipe(run_dir, self.recipe.model_dump(mode="json"))
            state = read_state(run_dir)
            state["recipe_hash"] = self.recipe.hash()
            state["stage_hashes"] = stage_hashes(self.recipe)
            write_state(run_dir, state)
            summary = self._summary_base(run_dir)
            summary["status"] = "running"
            summary.pop("error", None)
            summary["recipe_hash"] = self.recipe.hash()
            write_summary(run_dir, summary)
        kdist.barrier(self.dist)
        self.task.prepare(run_dir)
        kdist.barrier(self.dist)
        completed = set(read_state(run_dir).get("completed", []))
        for index, stage in enumerate(self.recipe.stages):
            if not self._selected(stage):
                self.echo(f"stage {stage.name}: skipped (--only/--skip)")
                continue
            if stage.name in completed:
                self.echo(f"stage {stage.name}: already complete, skipped")
                continue
            self._train_stage(run_dir, index, stage)
            kdist.barrier(self.dist)
        if self.dist.is_main:
            self._end_run(run_dir)

    def _end_run(self, run_dir: Path) -> None:
        """Record the run's status, then let the task add to it (``Task.on_run_end``)."""
        done = set(read_state(run_dir).get("completed", []))
        run = Run(run_dir, self.manager, task=self.task)
        run.update_summary(
            status="complete" if all(s.name in done for s in self.recipe.stages) else "partial"
        )
        if type(self.task).summary_extras is not Task.summary_extras:  # a plugin written for API 1.x
            warn_summary_extras(type(self.task))
            extras = dict(self.task.summary_extras(run_dir))

            def merge(summary: dict[str, Any]) -> None:
                summary["models"].update(extras.pop("models", {}))
                summary.update(extras)

            run.update_summary(merge)
        self.task.on_run_end(run)

    # ------------------------------------------------------------ helpers

    def _selected(self, stage: StageConfig) -> bool:
        if self.opts.only and stage.name not in self.opts.only:
            return False
        return stage.name not in self.opts.skip

    def _dataset(self, split: str) -> Dataset[Any]:
        if split not in self._datasets:
            self._datasets[split] = self.task.build_dataset(split)  # type: ignore[arg-type]
            if len(self._datasets[split]) == 0:  # type: ignore[arg-type]
                raise RecipeError(
                    f"the {split} split of task {self.task.name!r} is empty; check the recipe's data section"
                )
        return self._datasets[split]

    def _per_rank_batch(self, stage: StageConfig) -> int:
        if stage.batch_size % self.dist.world_size:
            raise RecipeError(
                f"stage {stage.name!r}: batch_size {stage.batch_size} (the global batch) is not divisible by "
                f"the {self.dist.world_size} processes"
            )
        return stage.batch_size // self.dist.world_size

    def _total_steps(self, stage: StageConfig, steps_per_epoch: int) -> int:
        total = stage.steps if stage.steps is not None else (stage.epochs or 1) * steps_per_epoch
        if self.opts.max_steps is not None:
            total = min(total, self.opts.max_steps)
        return total

    def _stage_progress(self, stage: StageConfig, total_steps: int, step: int) -> StageProgress:
        """A live bar on a terminal; plain lines at the recipe's interval when piped."""
        logging = self.recipe.logging
        return StageProgress(
            enabled=self.opts.progress and logging.progress and self.dist.is_main,
            description=stage.name,
            total=total_steps,
            completed=step,
            echo=self.echo,
            every_seconds=logging.plain_every_seconds,
            every_steps=logging.plain_every_steps,
        )

    # ------------------------------------------------------------ one stage

    def _train_stage(self, run_dir: Path, index: int, stage: StageConfig) -> None:
        """Set up, resume if asked, train step by step (logging, evaluating and checkpointing
        on the recipe's intervals), then keep the best or last weights."""
        recipe, dist_info = self.recipe, self.dist
        s = self._set_up_stage(run_dir, index, stage)
        metrics_log = MetricsLog(
            run_dir / "metrics.jsonl", tensorboard=recipe.logging.tensorboard and dist_info.is_main
        )
        checkpointer = StageCheckpointer(
            run_dir / "checkpoints" / stage.name,
            model=s.model,
            losses=s.losses,
            optimizer=s.optimizer,
            scheduler=s.scheduler,
            scaler=s.scaler,
            keep_last=recipe.checkpoint.keep_last,
            is_main=dist_info.is_main,
            on_saved=lambda step, path: self.manager.notify(
                "on_checkpoint_saved", run_dir=run_dir, stage=stage.name, step=step, path=path
            ),
        )
        state = TrainerState(step=0, epoch=0, best_metric=None, best_step=None, train_seconds=0.0)
        resumed = checkpointer.resume() if self.opts.resume else None
        if resumed is not None:
            state, ckpt = resumed
            self.echo(
                f"stage {stage.name}: resuming from {ckpt.relative_to(run_dir)} (step {state.step}/{s.total_steps})"
            )
            if dist_info.is_main:
                metrics_log.truncate_after(stage.name, state.step)
        train_model = self._wrap_distributed(s.model)
        models_view: dict[str, nn.Module] = {stage.model: train_model, **s.teachers}
        if dist_info.is_main:
            self.manager.notify(
                "on_stage_start", run_dir=run_dir, stage=stage.name, recipe=recipe.model_dump(mode="json")
            )
        self.echo(
            f"stage {stage.name} ({stage.role}): model {stage.model} ({s.built.config['arch']}), "
            f"{count_params(s.model):,} parameters, {s.total_steps} steps of batch {stage.batch_size}"
            + (f", teachers {', '.join(s.teachers)}" if s.teachers else "")
        )
        metric = self.task.primary_metric
        evaluator = StageEvaluator(
            task=self.task,
            stage=stage,
            model=s.model,
            device=self.device,
            state=state,
            metrics_log=metrics_log,
            best_path=run_dir / "models" / f".{stage.name}.best.safetensors",
            tune_size=self._tune_size,
            is_main=dist_info.is_main,
        )

        s.model.train()
        progress = self._stage_progress(stage, s.total_steps, state.step)
        window = _LossWindow()
        stage_start = time.perf_counter() - state.train_seconds
        data_iter: Iterator[Any] | None = None
        with progress:
            while state.step < s.total_steps:
                epoch, within = divmod(state.step, s.steps_per_epoch)
                if data_iter is None or within == 0:
                    state.epoch = epoch
                    data_iter = s.epoch_iterator(epoch, within)
                s.ctx.begin_step(seed=recipe.seed + index, step=state.step, epoch=epoch)
                step_terms = self._optimizer_step(
                    s, stage, train_model, models_view, data_iter, state.step, window
                )
                state.step += 1
                window.add(step_terms)
                progress.update(state.step, step_terms["total"])
                if state.step % recipe.logging.every_steps == 0 or state.step == s.total_steps:
                    rate = window.flush(
                        metrics_log if dist_info.is_main else None,
                        {"stage": stage.name, "step": state.step, "epoch": epoch, "split": "train"},
                        s.optimizer.param_groups[0]["lr"],
                    )
                    progress.set_rate(rate)
                end_of_epoch = state.step % s.steps_per_epoch == 0
                wants_eval = (
                    state.step % stage.eval_every_steps == 0 if stage.eval_every_steps else end_of_epoch
                ) or state.step == s.total_steps
                if wants_eval:
                    last_eval = evaluator(state.step)
                    if last_eval:
                        progress.set_metric(metric.name, last_eval[metric.name])
                state.train_seconds = time.perf_counter() - stage_start
                every = recipe.checkpoint.every_steps
                # every_steps: 0 checkpoints only at the end of the stage
                if (every and (state.step % every == 0 or end_of_epoch)) or state.step == s.total_steps:
                    checkpointer.save(state)

        last_eval = evaluator.final()
        if dist_info.is_main:
            self._finish_stage(
                run_dir, stage, s.model, s.built, last_eval, state, s.teachers, evaluator.best_path, s.cache,
                evaluator.seconds,
            )  # fmt: skip
        kdist.barrier(self.dist)

    def _set_up_stage(self, run_dir: Path, index: int, stage: StageConfig) -> StageSetup:
        """Everything a stage's loop needs: the model (initial weights depend on the seed and
        the model's name only, so a student and its baseline start alike), frozen teachers,
        loss modules, the data loader, optimizer, schedule, scaler, teacher cache and step context."""
        recipe, task, dist_info, device = self.recipe, self.task, self.dist, self.device

        def initial(name: str) -> BuiltModel:
            if name not in recipe.models:
                raise RecipeError(
                    f"stage {stage.name!r}: no model {name!r} in the recipe ({sorted(recipe.models)})"
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(recipe.seed * 1_000_003 + zlib.crc32(name.encode()))
                return build_model(task, self.registries, name, recipe.models[name])

        built = initial(stage.model)
        # a task may start a model from another's initial weights (e.g. a supernet's slice)
        task.init_stage_model(stage, built.module, lambda name: initial(name).module, recipe.stages)
        with torch.random.fork_rng(devices=[]):
            built = init_stage_model(task, run_dir, stage, built)
        model = built.module.to(device)
        teachers = load_stage_teachers(
            stage, task=task, registries=self.registries, run_dir=run_dir, loaded=self.loaded, device=device
        )
        losses = build_losses(stage, self.registries)
        distill_plan = plan_stage(stage, task, self.registries.losses, losses)
        losses = losses.to(device)

        train_set = self._dataset("train")
        subset = self._train_subset(stage)
        stage_set: Dataset[Any] = train_set if subset is None else Subset(train_set, subset)
        if subset is not None and len(subset) == 0:
            raise RecipeError(f"stage {stage.name!r}: the task selected no training samples for this stage")
        per_rank = self._per_rank_batch(stage)
        # Every stage sees the data in the same order (seeded by the recipe, not the stage), so
        # a student and its baseline are paired sample for sample.
        sampler = EpochSampler(
            len(stage_set),  # type: ignore[arg-type]
            seed=recipe.seed,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        loader = DataLoader(
            stage_set,
            batch_size=per_rank,
            sampler=sampler,
            collate_fn=task.collate,
            num_workers=recipe.num_workers,
            drop_last=True,
            # A private generator: creating an iterator must not draw from the global RNG,
            # or a run resumed mid-epoch would see a different dropout stream.
            generator=torch.Generator().manual_seed(recipe.seed + index),
        )
        steps_per_epoch = len(sampler) // per_rank // stage.grad_accum
        if steps_per_epoch == 0:
            raise RecipeError(
                f"stage {stage.name!r}: the stage trains on {len(stage_set)} samples, fewer than one step of "  # type: ignore[arg-type]
                f"batch_size x grad_accum = {stage.batch_size * stage.grad_accum}"
            )
        total_steps = self._total_steps(stage, steps_per_epoch)

        params = [p for p in model.parameters() if p.requires_grad]
        loss_params = [p for p in losses.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": params, "param_names": names}]
        if loss_params:
            groups.append(
                {"params": loss_params, "param_names": [f"loss.{n}" for n, _ in losses.named_parameters()]}
            )
        opt_cfg = stage.optimizer
        optimizer = self.registries.optimizers.get(opt_cfg.name)(
            groups, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, **opt_cfg.options
        )
        scheduler = self.registries.schedules.get(stage.schedule.name)(
            optimizer,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=stage.schedule.warmup_steps,
            **stage.schedule.options,
        )
        scaler = torch.amp.GradScaler("cuda") if recipe.precision == "fp16-mixed" else None
        cache = self._teacher_cache(stage)

        def teacher_fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            return task.teacher_outputs(stage, teachers, batch)

        ctx = StepContext(
            device=device,
            precision=recipe.precision,
            losses=losses,
            scaler=scaler,
            grad_accum=stage.grad_accum,
            teacher_fn=teacher_fn if teachers else None,
            teacher_cache=cache,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        ctx.total_steps = total_steps
        ctx.distill_plan = distill_plan
        return StageSetup(
            built=built, model=model, teachers=teachers, losses=losses, train_set=train_set, sampler=sampler,
            loader=loader, per_rank=per_rank, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
            params=params, loss_params=loss_params, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            cache=cache, ctx=ctx, grad_accum=stage.grad_accum,
        )  # fmt: skip

    def _teacher_cache(self, stage: StageConfig) -> TeacherCache | None:
        if not stage.teacher_cache:
            return None
        if not stage.teachers:
            raise RecipeError(f"stage {stage.name!r}: teacher_cache is on but the stage has no teachers")
        if not self.task.teacher_cache_safe(stage):
            raise RecipeError(
                f"stage {stage.name!r}: teacher_cache is on, but task {self.task.name!r} says the teacher's outputs "
                f"are not fixed per sample in this stage (random augmentation or noise reaches the teacher)",
                hint="turn teacher_cache off, or remove the augmentation/noise the teacher sees",
            )
        return TeacherCache()

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        """The module the loop trains: ``model`` itself, or a DDP wrapper (with SyncBatchNorm)."""
        if not self.dist.enabled:
            return model
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def _optimizer_step(
        self,
        s: StageSetup,
        stage: StageConfig,
        train_model: nn.Module,
        models_view: dict[str, nn.Module],
        data_iter: Iterator[Any],
        step: int,
        window: _LossWindow,
    ) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's mean terms."""
        dist_info = self.dist
        s.optimizer.zero_grad(set_to_none=True)
        step_terms: dict[str, float] = {}
        for micro in range(stage.grad_accum):
            batch = s.ctx.to_device(next(data_iter))
            last_micro = micro == stage.grad_accum - 1
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if not last_micro and dist_info.enabled:
                sync = train_model.no_sync()  # type: ignore[operator]
            with sync:
                terms, total = training_step(self.task, stage, models_view, batch, s.ctx, step)
            for k, term_value in terms.items():
                step_terms[k] = step_terms.get(k, 0.0) + float(term_value.detach()) / stage.grad_accum
            step_terms["total"] = step_terms.get("total", 0.0) + float(total.detach()) / stage.grad_accum
            window.samples += _batch_len(batch) * dist_info.world_size
        kdist.all_reduce_grads(dist_info, s.loss_params)
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        if stage.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(s.params + s.loss_params, stage.grad_clip)
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.scheduler.step()
        return step_terms

    def _finish_stage(
        self,
        run_dir: Path,
        stage: StageConfig,
        model: nn.Module,
        built: BuiltModel,
        last_eval: dict[str, float],
        state: TrainerState,
        teachers: dict[str, nn.Module],
        best_path: Path,
        cache: TeacherCache | None,
        eval_seconds: float = 0.0,
    ) -> None:
        weights = run_dir / "models" / f"{stage.name}.safetensors"
        config_path = run_dir / "models" / f"{stage.name}.json"
        final_metrics = last_eval
        kept = "last"
        if stage.keep == "best" and best_path.exists():
            best_state = load_weights(best_path)
            model.load_state_dict(best_state)
            save_weights(best_state, weights)
            best_path.unlink()
            kept = f"best (step {state.best_step}" + (", selected on tune)" if self._tune_size() else ")")
            if state.best_step != state.step:
                final_metrics = evaluate_isolated(self.task, model, stage.name, self.device, "val")
        else:
            save_weights(model, weights)
        config = {**built.config, "stage": stage.name, "role": stage.role, "recipe_hash": self.recipe.hash()}
        write_json(config_path, config)
        entry: dict[str, Any] = {
            "role": stage.role,
            "baseline_for": stage.baseline_for,
            "model": stage.model,
            "arch": built.config["arch"],
            "params": count_params(model),
            "metrics": final_metrics,
            "weights": str(weights.relative_to(run_dir)),
            "config": str(config_path.relative_to(run_dir)),
            "train_seconds": round(state.train_seconds, 3),
            # validation time within train_seconds (this process's evaluations; not kept on resume)
            "eval_seconds": round(eval_seconds, 3),
            "steps": state.step,
            "kept": kept,
            "teachers": list(teachers),
        }
        if cache is not None:
            entry["teacher_cache"] = {"hits": cache.hits, "misses": cache.misses}
        Run(run_dir, self.manager, task=self.task).add_model(stage.name, entry)  # under the summary lock
        run_state = read_state(run_dir)
        run_state.setdefault("completed", []).append(stage.name)
        write_state(run_dir, run_state)
        metric = self.task.primary_metric
        self.echo(
            f"stage {stage.name}: done in {state.train_seconds:.1f}s, {metric.name} = "
            f"{final_metrics.get(metric.name, float('nan')):.4g} (kept {kept})"
        )
        self.manager.notify("on_stage_end", run_dir=run_dir, stage=stage.name, metrics=final_metrics)

    # ------------------------------------------------------------ tune split

    def _tune_size(self) -> int:
        """Size of the tune split: the first ``ceil(tune_fraction x N)`` samples of the task's
        train split (0 without one). A prefix, so every task's own ``evaluate(..., "train",
        limit=n)`` scores it (without augmentation) and no task needs to know about it."""
        fraction = self.recipe.tune_fraction
        if fraction <= 0:
            return 0
        n = len(self._dataset("train"))  # type: ignore[arg-type]
        size = max(1, math.ceil(n * fraction))
        if size >= n:
            raise RecipeError(f"tune_fraction {fraction} of {n} training samples leaves none to train on")
        return size

    def _train_subset(self, stage: StageConfig) -> list[int] | None:
        """The stage's training indices (the task's choice) less the tune split."""
        subset = self.task.train_indices(stage)
        tune = self._tune_size()
        if tune == 0:
            return subset
        base = range(len(self._dataset("train"))) if subset is None else subset  # type: ignore[arg-type]
        return [i for i in base if i >= tune]


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict) and "index" in batch:
        return len(batch["index"])
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return len(first)
    return len(batch)


def run_recipe(loaded: LoadedRecipe, opts: DistillOptions | None = None) -> Path | dict[str, Any]:
    """Run (or dry-run) a recipe; returns the run directory (or the dry-run plan)."""
    engine = Engine(loaded, opts or DistillOptions())
    if engine.opts.dry_run:
        return engine.dry_run()
    return engine.run()
