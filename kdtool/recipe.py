"""Recipes: YAML data (never code) validated into pydantic models.

``load_recipe(path, overrides)`` reads the file with ``yaml.safe_load``, applies ``--set``
overrides (``stages.student.epochs=3``: list items may be addressed by their ``name``), and
validates. Every error names the file, the line, the field path, what was expected, and a
close match for a misspelt key. The task's own sections (``task.options`` and ``data``) are
validated by the task plugin's models in :func:`validate_task_sections`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from kdtool.errors import RecipeError
from kdtool.registry import suggest

RECIPE_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskSection(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """An architecture registered through ``register_models`` and its options."""

    arch: str
    options: dict[str, Any] = Field(default_factory=dict)
    # Local safetensors file to initialise from (nothing is ever downloaded).
    checkpoint: str | None = None


class TeacherRef(_Strict):
    """A frozen model a stage learns from, from exactly one source:

    - ``stage``: an earlier stage of this run;
    - ``run`` + ``model``: a model of another run (its summary.json names it);
    - ``checkpoint`` + ``arch`` (+ ``options``): a safetensors file for a registered architecture;
    - ``onnx``: an ONNX file run through onnxruntime (any framework that exports ONNX can teach);
    - ``program``: a ``torch.export`` ExportedProgram (``.pt2``). An archive whose parts
      need pickle (which can run code) is refused unless ``trust_code: true``.

    Teachers from ``onnx`` and ``program`` files take the task's deploy inputs (what its
    exported models take, e.g. pixels in [0, 1]); the others take its training inputs.
    File paths resolve against the working directory.
    """

    name: str
    stage: str | None = None
    run: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    arch: str | None = None
    onnx: str | None = None
    program: str | None = None
    # allow a `program` archive whose parts need pickle: only for files from a trusted source
    trust_code: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherRef:
        sources = [x is not None for x in (self.stage, self.run, self.checkpoint, self.onnx, self.program)]
        if sum(sources) != 1:
            raise ValueError(
                "a teacher needs exactly one of 'stage', 'run' (with 'model'), 'checkpoint' (with 'arch'), "
                "'onnx' or 'program'"
            )
        if self.run is not None and self.model is None:
            raise ValueError(
                "a teacher from another run needs 'model' (a model name in that run's summary.json)"
            )
        if self.checkpoint is not None and self.arch is None:
            raise ValueError("a teacher from a checkpoint needs 'arch' (a registered architecture)")
        return self


class Between(_Strict):
    """The distillation points a KD loss compares, e.g. ``{student: logits, teacher: logits}``
    or ``features/layer3`` (see :mod:`kdtool.distill`)."""

    student: str
    teacher: str


class LossTerm(_Strict):
    """A named loss term and its weight. ``loss`` instantiates a registered loss module for
    the term. A distillation loss (one that declares the point kinds it ``accepts``) is
    evaluated by the engine ``between`` a student and a teacher point (default: the task's
    pairing), with ``temperature`` passed to the loss; any other loss is the task's
    (``ctx.loss(name)``). Without ``loss`` the task computes the term."""

    name: str
    weight: float = 1.0
    loss: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    between: Between | None = None
    temperature: float | None = Field(default=None, gt=0)

    @model_serializer(mode="wrap")
    def _without_unset_pairing(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Entries written before points existed dump (and hash, see engine/stagehash.py) as before.
        data = handler(self)
        for key in ("between", "temperature"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _between_needs_loss(self) -> LossTerm:
        if (self.between is not None or self.temperature is not None) and self.loss is None:
            raise ValueError("'between' and 'temperature' need a 'loss' (a registered distillation loss)")
        return self


class OptimizerConfig(_Strict):
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    options: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Strict):
    name: str = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


class QuantizationAwareConfig(_Strict):
    """``quantization_aware`` on a stage: fine-tune with INT8 simulated as the exporter will
    write it (see :mod:`kdtool.quant`); ``int8`` is shorthand for the defaults."""

    precision: Literal["int8"] = "int8"
    # u8 is the onnx-cpu-int8 (x86) default; s8 for targets that prefer signed activations.
    activations: Literal["u8", "s8"] = "u8"
    calibration_samples: int = Field(default=32, ge=1)
    # module names (or name prefixes) kept in float, besides the task's own export hints
    exclude: list[str] = Field(default_factory=list)


class StageConfig(_Strict):
    """One training stage: one model trains, optionally learning from frozen teachers."""

    name: str
    model: str
    # One of the task's declared roles (``Task.roles``), checked with the task when the recipe loads.
    role: str = "student"
    # The stage this one is the control of (required for a role the task declares a baseline).
    baseline_for: str | None = None
    teachers: list[TeacherRef] = Field(default_factory=list)
    losses: list[LossTerm] = Field(default_factory=list)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=None, gt=0)
    teacher_cache: bool = False
    keep: Literal["best", "last"] = "best"
    eval_every_steps: int | None = Field(default=None, ge=1)
    # Task-specific per-stage options (curriculum, temperature, ...), read by the task.
    options: dict[str, Any] = Field(default_factory=dict)
    # An earlier stage of the same model whose trained weights this stage starts from.
    init: str | None = None
    quantization_aware: QuantizationAwareConfig | None = None

    @field_validator("quantization_aware", mode="before")
    @classmethod
    def _quant_shorthand(cls, value: Any) -> Any:
        return {"precision": value} if isinstance(value, str) else value

    @field_validator("teachers", mode="before")
    @classmethod
    def _teacher_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v, "stage": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _length(self) -> StageConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("a stage needs exactly one of 'epochs' or 'steps'")
        return self

    def loss_weight(self, term: str) -> float:
        for t in self.losses:
            if t.name == term:
                return t.weight
        return 1.0


class CheckpointConfig(_Strict):
    """Checkpoint every N steps and at each epoch end (0: only when the stage ends)."""

    every_steps: int = Field(default=200, ge=0)
    keep_last: int = Field(default=2, ge=1)


class LoggingConfig(_Strict):
    every_steps: int = Field(default=10, ge=1)
    tensorboard: bool = False
    progress: bool = True
    # When stdout is not a terminal: a plain progress line every N seconds (or N steps).
    plain_every_seconds: float = Field(default=30.0, gt=0)
    plain_every_steps: int | None = Field(default=None, ge=1)


class ReportConfig(_Strict):
    """The report written at the end of ``kdtool distill`` (``kdtool report`` has flags for
    the same). Latency timing is bounded: ``latency_seconds`` per model, ``budget_seconds``
    for all of them."""

    enabled: bool = True
    measure: bool = True  # count MACs (and time the models, see latency)
    latency: bool = True
    latency_seconds: float = Field(default=0.5, gt=0)
    budget_seconds: float = Field(default=60.0, gt=0)
    figures: bool = True


class ExportDefaults(_Strict):
    target: str = "onnx"
    precision: Literal["fp32", "fp16", "int8"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Recipe(_Strict):
    schema_version: int = RECIPE_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    task: TaskSection
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    data: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelConfig]
    stages: list[StageConfig] = Field(min_length=1)
    deploy_model: str | None = None
    runs_dir: str = "runs"
    num_workers: int = Field(default=0, ge=0)
    # CPU threads for torch (None: torch's default, or OMP_NUM_THREADS where set).
    threads: int | None = Field(default=None, ge=1)
    # The tune split: the first ceil(tune_fraction x N) samples of the task's train split are
    # held out of every stage's training and select each `keep: best` stage's checkpoint, so
    # the validation split that is reported never chose anything (0: select on validation).
    tune_fraction: float = Field(default=0.0, ge=0.0, le=0.5)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    export: ExportDefaults = Field(default_factory=ExportDefaults)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("expected auto, cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _references(self) -> Recipe:
        seen: list[str] = []
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice")
            if stage.model not in self.models:
                raise ValueError(_unknown("stage", stage.name, "model", stage.model, list(self.models)))
            for t in stage.teachers:
                if t.stage is not None and t.stage not in seen:
                    raise ValueError(
                        _unknown("stage", stage.name, "teacher stage (an earlier stage)", t.stage, seen)
                    )
            if stage.init is not None:
                if stage.init not in seen:
                    raise ValueError(
                        _unknown("stage", stage.name, "init stage (an earlier stage)", stage.init, seen)
                    )
                if self.stage(stage.init).model != stage.model:
                    raise ValueError(
                        f"stage {stage.name!r}: init stage {stage.init!r} trains model "
                        f"{self.stage(stage.init).model!r}, not {stage.model!r}"
                    )
            seen.append(stage.name)
        for stage in self.stages:
            if stage.baseline_for and stage.baseline_for not in seen:
                raise ValueError(
                    _unknown("stage", stage.name, "baseline_for stage", stage.baseline_for, seen)
                )
        if self.deploy_model is not None and self.deploy_model not in seen:
            raise ValueError(_unknown("recipe", self.name, "deploy_model stage", self.deploy_model, seen))
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise RecipeError(
            f"recipe {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}"
        )

    def default_deploy_model(self, roles: Mapping[str, Any] | None = None) -> str:
        """``deploy_model``, else the last stage of the role with the highest ``deploy_rank``
        (``roles``: the task's role specs; without them, the last stage)."""
        if self.deploy_model:
            return self.deploy_model
        if roles:
            ranked = [(getattr(roles.get(s.role), "deploy_rank", -1), i) for i, s in enumerate(self.stages)]
            return self.stages[max(ranked)[1]].name
        return self.stages[-1].name

    def hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _unknown(owner_kind: str, owner: str, what: str, value: str, known: list[str]) -> str:
    close = suggest(value, known)
    msg = f"{owner_kind} {owner!r}: unknown {what} {value!r}; known: {known}"
    return msg + (f" (did you mean {close!r}?)" if close else "")


# --------------------------------------------------------------------------- loading


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``path`` (the deepest node found on the way)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == key:
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """Readable field path: list items named by their ``name`` where they have one."""
    parts: list[str] = []
    cur = data
    for key in loc:
        if isinstance(key, int) and isinstance(cur, list) and key < len(cur):
            item = cur[key]
            name = item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{key}]" + (f"({name})" if name else ""))
            cur = item
        else:
            parts.append(("." if parts else "") + str(key))
            cur = cur.get(key) if isinstance(cur, dict) else None
    return "".join(parts)


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    return list(model.model_fields) if model is not None else []


def _resolve_model(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for close-match suggestions)."""
    current: Any = root
    for key in loc[:-1]:
        if isinstance(key, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(key)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            for c in args:
                inner = getattr(c, "__args__", ())
                current = next((i for i in inner if isinstance(i, type) and issubclass(i, BaseModel)), None)
                if current is not None:
                    break
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(
    err: ValidationError,
    *,
    source: str,
    data: Any,
    root_node: yaml.Node | None,
    model: type[BaseModel],
    prefix: tuple[Any, ...] = (),
) -> RecipeError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        full = prefix + loc
        line = _line_of(root_node, full)
        where = f"{source}:{line}" if line else source
        path = _field_path(full, data) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            owner = _resolve_model(model, loc)
            close = suggest(str(loc[-1]), _allowed_keys(owner))
            msg = f"unknown key {loc[-1]!r}" + (f" (did you mean {close!r}?)" if close else "")
            if owner is not None:
                msg += f"; allowed: {', '.join(_allowed_keys(owner))}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{where}: {path}: {msg}")
    return RecipeError("invalid recipe\n  " + "\n  ".join(lines))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. stages.student.epochs=3")
    key, _, raw = text.partition("=")
    if not key.strip():
        raise RecipeError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any, *, text: str) -> None:
    cur: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(cur, list):
            idx = _list_index(cur, part, text)
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
            else:
                if part not in cur or cur[part] is None:
                    cur[part] = {}
                cur = cur[part]
        else:
            raise RecipeError(f"--set {text}: {'.'.join(path[:i])} is a value, not a section")


def _list_index(items: list[Any], part: str, text: str) -> int:
    if part.isdigit():
        idx = int(part)
        if idx < len(items):
            return idx
    for idx, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return idx
    names = [item.get("name") for item in items if isinstance(item, dict)]
    close = suggest(part, [n for n in names if n])
    raise RecipeError(
        f"--set {text}: no list item {part!r}; items: {names}"
        + (f" (did you mean {close!r}?)" if close else "")
    )


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(
            f"recipe file not found: {path}", hint="`kdtool recipes list` shows the shipped recipes"
        ) from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return data, node


class LoadedRecipe:
    """A validated recipe with what is needed to report errors in its task sections."""

    def __init__(self, recipe: Recipe, *, source: str, data: dict[str, Any], node: yaml.Node | None) -> None:
        self.recipe = recipe
        self.source = source
        self.data = data
        self.node = node


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    path = Path(path)
    data, node = read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe is a YAML mapping (name, task, models, stages, ...), got {type(data).__name__}"
        )
    data = copy.deepcopy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value, text=text)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(
            err, source=str(path), data=data, root_node=node, model=Recipe
        ) from None
    return LoadedRecipe(recipe, source=str(path), data=data, node=node)


def validate_section(
    loaded: LoadedRecipe, model: type[BaseModel], section: tuple[str, ...], value: dict[str, Any]
) -> BaseModel:
    """Validate a task-owned section (``task.options`` or ``data``) with the task's model."""
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise format_validation_error(
            err, source=loaded.source, data=loaded.data, root_node=loaded.node, model=model, prefix=section
        ) from None


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> LoadedRecipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, source=source, data=data, root_node=None, model=Recipe) from None
    return LoadedRecipe(recipe, source=source, data=data, node=None)
