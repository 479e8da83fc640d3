"""The ``Task`` contract: what a domain plugin implements (versioned with the plugin API).

The engine knows stages, never a domain. A task builds data and models, owns the training
step (``training_step`` returns named losses; ``ctx`` hides AMP, accumulation and DDP),
evaluates through a :class:`Predictor` (the same code scores a PyTorch model and an exported
artifact), and describes models for export with an :class:`~kdtool.export.spec.ExportSpec`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import Dataset, default_collate

from kdtool.distill import PointSpec
from kdtool.export.spec import ExportSpec, as_tuple

if TYPE_CHECKING:
    from kdtool.engine.context import StepContext
    from kdtool.recipe import LossTerm, StageConfig
    from kdtool.run import Run

Split = Literal["train", "val"]


class TaskOptions(BaseModel):
    """Base for a task's recipe options (``task.options``). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class NoStageOptions(BaseModel):
    """The options model of a role that takes no ``stages[].options`` (any key is an error)."""

    model_config = ConfigDict(extra="forbid")


TeacherNeed = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class RoleSpec:
    """What a stage of one role is, declared by the task (``Task.roles``).

    The engine, the recipe loader and the report read roles only through these fields; no role
    name is known to core. ``options`` validates the stage's ``options`` once, when the recipe
    loads (``kdtool recipes validate`` catches what ``distill`` would); ``loss_slots`` names the
    loss terms the task's step returns for the role (``losses[].name`` may weight them, or add
    registered losses); ``teachers`` says whether a stage needs frozen teachers; a ``baseline``
    is a control of another stage (it needs ``baseline_for``); ``deploy_rank`` orders the roles
    when the recipe names no ``deploy_model`` (highest wins, the last such stage; 0: only when
    nothing else trains).
    """

    description: str = ""
    options: type[BaseModel] = NoStageOptions
    loss_slots: tuple[str, ...] = ()
    teachers: TeacherNeed = "optional"
    baseline: bool = False
    deploy_rank: int = 0

    def describe_options(self) -> list[tuple[str, str, str, str]]:
        """(name, type, default, description) of each option, for ``kdtool recipes roles``."""
        rows = []
        for name, field in self.options.model_fields.items():
            ann = field.annotation
            type_name = getattr(ann, "__name__", None) if isinstance(ann, type) else None
            # "kdtool_asr.training.Ramp | None" -> "Ramp | None"
            type_text = type_name or re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(ann))
            if field.is_required():
                default = "(required)"
            elif field.default_factory is not None:
                default = repr(field.default_factory())  # type: ignore[call-arg]
            else:
                default = repr(field.default)
            rows.append((name, type_text, default, field.description or ""))
        return rows


def default_roles(stage_options: type[BaseModel] | None = None) -> dict[str, RoleSpec]:
    """The roles of a task that declares none: teacher, student and baseline, all taking
    ``stage_options`` (the task's ``StageOptions``) or no options."""
    opts = stage_options or NoStageOptions
    return {
        "teacher": RoleSpec("trains on the labels alone (a model to learn from)", opts, deploy_rank=0),
        "student": RoleSpec("learns from its teachers and the labels", opts, deploy_rank=30),
        "baseline": RoleSpec(
            "the student's architecture trained without teachers (a control)",
            opts,
            baseline=True,
            deploy_rank=10,
        ),
    }


OptionsT = TypeVar("OptionsT", bound=BaseModel)
DataT = TypeVar("DataT", bound=BaseModel)


@dataclass(frozen=True)
class PrimaryMetric:
    name: str
    higher_is_better: bool


class Predictor:
    """Callables for each graph of a model: a PyTorch model or a loaded artifact.

    ``predictor(*inputs)`` runs the only graph; ``predictor.graphs[name](*inputs)`` picks one.
    Inputs and outputs are CPU torch tensors; outputs are always a tuple.
    """

    def __init__(
        self,
        graphs: Mapping[str, Callable[..., tuple[torch.Tensor, ...]]],
        *,
        kind: str,
        input_names: Mapping[str, list[str]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.graphs = dict(graphs)
        self.kind = kind  # "pytorch", "onnxruntime", ...
        # Graph name -> its input names, so a task can tell e.g. a 4-input teacher graph apart.
        self.input_names = dict(input_names or {})
        # The export spec's DeployMetadata as a dict (labels, pre/post-processing).
        self.metadata = dict(metadata or {})

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(self.graphs) != 1:
            raise TypeError(f"model has graphs {sorted(self.graphs)}; call predictor.graphs[name](...)")
        return next(iter(self.graphs.values()))(*inputs)

    @classmethod
    def from_spec(cls, spec: ExportSpec, device: torch.device | str = "cpu") -> Predictor:
        """Run each graph's PyTorch module (eval mode, no grad) on ``device``."""
        device = torch.device(device)

        def make(module: nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
            @torch.no_grad()
            def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
                out = as_tuple(module(*[x.to(device) for x in inputs]))
                return tuple(o.detach().float().cpu() if o.is_floating_point() else o.cpu() for o in out)

            return run

        for g in spec.graphs:
            g.module.eval()
        return cls(
            {g.name: make(g.module) for g in spec.graphs},
            kind="pytorch",
            input_names={g.name: [t.name for t in g.inputs] for g in spec.graphs},
            metadata=spec.metadata.to_dict(),
        )


class Task(ABC, Generic[OptionsT, DataT]):
    """A domain. Subclass, set the class attributes, implement the abstract methods.

    ``Task[MyOptions, MyData]`` types ``self.options`` and ``self.data``; ``roles`` declares
    the stage roles the task trains (:class:`RoleSpec`: options model, loss slots, teachers).

    Items of the datasets are dicts with an ``"index"`` entry (the sample's position in its
    split), so the engine can cache teacher outputs per sample and resume mid-epoch.
    Random augmentation must draw from :func:`kdtool.data.sample_rng` so a resumed run is
    bit-identical on CPU.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[TaskOptions]] = TaskOptions  # validates the recipe's task.options
    DataOptions: ClassVar[type[TaskOptions]] = TaskOptions  # validates the recipe's data section
    primary_metric: ClassVar[PrimaryMetric]
    # Stage roles this task can train, with a line of what each does (``kdtool recipes``).
    description: ClassVar[str] = ""
    # What `kdtool predict` accepts for this task, in a phrase (shown by `kdtool predict --help`).
    predict_inputs: ClassVar[str] = ""
    # The stage roles this task trains: role name -> RoleSpec (None: teacher, student and
    # baseline, each taking ``StageOptions``).
    roles: ClassVar[Mapping[str, RoleSpec] | None] = None
    # Shorthand of plugin API 1.x: one options model for every role (used when ``roles`` is None).
    StageOptions: ClassVar[type[BaseModel] | None] = None
    # Distillation points the task's training step exposes (kdtool.distill): any registered
    # KD loss that accepts a point's kind can be paired on it by a recipe.
    distill_points: ClassVar[tuple[PointSpec, ...]] = ()
    # The pairing a KD loss entry without ``between`` uses, e.g. {"student": "logits",
    # "teacher": "logits"} (None: such an entry is an error).
    default_between: ClassVar[dict[str, str] | None] = None

    def __init__(self, options: OptionsT, data: DataT, *, seed: int, cache_dir: Path) -> None:
        self.options: OptionsT = options
        self.data: DataT = data
        self.seed = seed
        self.cache_dir = cache_dir
        self.run_dir: Path | None = None

    @classmethod
    def role_specs(cls) -> dict[str, RoleSpec]:
        """The declared roles (:attr:`roles`), or the default three."""
        return dict(cls.roles) if cls.roles is not None else default_roles(cls.StageOptions)

    @classmethod
    def role_spec(cls, role: str) -> RoleSpec:
        """The spec of ``role``; an unknown role is a recipe error naming the allowed ones."""
        from kdtool.errors import RecipeError
        from kdtool.registry import suggest

        specs = cls.role_specs()
        if role in specs:
            return specs[role]
        close = suggest(role, list(specs))
        raise RecipeError(
            f"task {cls.name!r} has no stage role {role!r}; allowed roles: {', '.join(specs)}"
            + (f" (did you mean {close!r}?)" if close else "")
        )

    # ---------------------------------------------------------------- set-up

    def prepare(self, run_dir: Path) -> None:
        """Called once per run before the first stage (e.g. fit a shape model, cache data)."""
        self.run_dir = run_dir

    @abstractmethod
    def build_dataset(self, split: Split) -> Dataset[dict[str, Any]]:
        """The dataset of a split. Items are dicts with an ``"index"`` entry."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return default_collate(items)

    def stage_options_model(self, stage: StageConfig) -> type[BaseModel]:
        """The pydantic model of a stage's ``options``: its role's ``RoleSpec.options``."""
        return self.role_spec(stage.role).options

    def stage_options(self, stage: StageConfig) -> Any:
        """The stage's validated options (an instance of its role's options model).

        Validated once, when the recipe loads (:func:`kdtool.engine.options.check_stage_options`
        stores them here); a stage that did not go through the loader (a test calling the
        step directly) is validated on first use, never per batch."""
        key = (stage.name, stage.role, repr(sorted(stage.options.items())))
        parsed = self.__dict__.get("_parsed_stage_options", {}).get(key)
        if parsed is None:
            from pydantic import ValidationError

            from kdtool.errors import RecipeError

            model = self.stage_options_model(stage)
            try:
                parsed = model.model_validate(stage.options)
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in err.errors()
                )
                raise RecipeError(
                    f"stage {stage.name!r} (role {stage.role!r}): invalid options: {problems}",
                    hint=f"allowed options: {', '.join(model.model_fields) or '(none)'}",
                ) from None
            self.set_stage_options(stage, parsed)
        return parsed

    def set_stage_options(self, stage: StageConfig, parsed: BaseModel) -> None:
        """Store a stage's options validated by the recipe loader."""
        store = self.__dict__.setdefault("_parsed_stage_options", {})
        store[(stage.name, stage.role, repr(sorted(stage.options.items())))] = parsed

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        """Complete a model's recipe options with what the data decides (classes, points)."""
        return options

    # ---------------------------------------------------------------- training

    @abstractmethod
    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """Named, unweighted losses for one batch. The engine weights them with the stage's
        ``losses[].weight`` (1.0 for terms the recipe does not list), sums and back-propagates,
        unless the step called ``ctx.backward`` itself (e.g. the sandwich rule)."""

    def distill_between(self, stage: StageConfig) -> dict[str, str] | None:
        """The default pairing of a stage (default :attr:`default_between`); a task may pick
        it from the stage's options."""
        return self.default_between

    def default_distill(self, stage: StageConfig) -> Sequence[LossTerm]:
        """KD entries the engine uses when the stage's recipe lists none (each a LossTerm with
        a registered ``loss``; its weight comes from the recipe entry of the same name, or 1).
        E.g. a task that always distils its students names its default loss here. Default: none."""
        return ()

    def init_stage_model(
        self,
        stage: StageConfig,
        model: nn.Module,
        initial_model: Callable[[str], nn.Module],
        stages: Sequence[StageConfig],
    ) -> None:
        """Called when a stage's model is built, before a checkpoint is resumed: a task may
        replace the initial weights in place, e.g. with a slice of another recipe model's
        initial weights (``initial_model(name)`` builds that model as its own stage would
        start, same seed rule). ``stages`` are all the recipe's stages. Default: no change."""
        return None

    def before_quantization_aware(self, model: nn.Module, model_name: str) -> None:
        """Called on a trained model (its ``init`` weights loaded) just before a
        ``quantization_aware`` stage folds it and places its fake quantizers: a task may make
        the weights agree with what its export graph runs, in place. E.g. segmentation zeroes
        the stem's 4th-channel (label) weights that its RGB export drops, so that the per-channel
        weight scales learned in training are the exported ones. Default: no change."""
        return None

    def teacher_outputs(
        self, stage: StageConfig, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Outputs of the frozen teachers for a batch (first dim = batch). Used through
        ``ctx.teacher_outputs(batch)``, which caches them when the recipe asks and
        :meth:`teacher_cache_safe` allows."""
        raise NotImplementedError(f"task {self.name!r} does not compute teacher outputs")

    def train_indices(self, stage: StageConfig) -> list[int] | None:
        """The training samples a stage draws its batches from (None: all of them). E.g. a
        supervised baseline in a semi-supervised recipe trains on the labelled subset only."""
        return None

    def check_teacher(self, stage: StageConfig, name: str, teacher: nn.Module) -> None:
        """Fail early, naming both, when a teacher and the data disagree (input shape,
        number of classes, label order). Called once per teacher when a stage starts."""
        return None

    def teacher_cache_safe(self, stage: StageConfig) -> bool:
        """True when teacher outputs for a sample never change within the stage: a frozen
        teacher, no random augmentation of its input, no noise fed to it."""
        return False

    # ---------------------------------------------------------------- evaluation

    @abstractmethod
    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        """The task's validation metrics (must include ``primary_metric.name``)."""

    # ---------------------------------------------------------------- export

    @abstractmethod
    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        """Describe a trained model for export: graphs, shapes, metadata, calibration."""

    def predictor(self, model: nn.Module, model_name: str, device: torch.device | str = "cpu") -> Predictor:
        return Predictor.from_spec(self.export_spec(model, model_name), device)

    # ---------------------------------------------------------------- deployment

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        """Run a predictor on real input files with the manifest's pre/post-processing
        (``kdtool predict``). Returns one JSON-able result per input."""
        raise NotImplementedError(f"task {cls.name!r} does not support kdtool predict")

    def on_run_end(self, run: Run) -> None:
        """Called by the engine (main process) when a run's stages are done, after
        ``summary.json`` records the run's status. Add what the task knows about the run
        through ``run`` (a :class:`kdtool.run.Run`): ``run.add_model(...)`` for models it
        derives (e.g. a supernet's subnets, role ``subnet``), ``run.update_summary(...)`` for
        its own fields. Both write ``summary.json`` atomically under the run's lock."""
        return None  # the default task adds nothing

    def summary_extras(self, run_dir: Path) -> dict[str, Any]:
        """Deprecated (plugin API 2.0): override :meth:`on_run_end` instead. Still honoured:
        the engine merges what it returns into ``summary.json`` (a ``"models"`` entry into the
        summary's models) and warns once per task class."""
        return {}

    def write_figures(self, predictor: Predictor, model_name: str, out_dir: Path) -> list[Path]:
        """Task figures for the run report (PNG files written into ``out_dir``)."""
        return []
