"""Distillation points: typed outputs a task's models expose, paired by the engine.

A task declares what its models expose for distillation (:attr:`kdtool.task.Task.distill_points`):
a list of :class:`PointSpec`, each a *kind* and, for ``features``, a *name*. A registered KD
loss declares the kinds it ``accepts`` (a class attribute). A recipe pairs a student point with a
teacher point for any matching loss::

    losses:
      - {name: kd, loss: kl_t, weight: 0.5, temperature: 2.0,
         between: {student: logits, teacher: logits}}

Without ``between`` the task's :meth:`~kdtool.task.Task.distill_between` (its ``default_between``)
is used, so a recipe written before points existed keeps working. The engine, not the task,
pairs the points: the task's training step *exposes* tensors through the step context
(``ctx.expose("logits", student_logits)``; ``ctx.expose("logits", teacher_logits,
side="teacher")``), skips computing points nobody asked for (``ctx.wants(...)``), and either
calls ``ctx.distill()`` where it needs the values (several sub-batches, its own backward) or
lets the engine compute every pending pair when the step returns.

Calling convention of a KD loss: ``forward(student, teacher, **extra)`` with the two tensors
first; ``extra`` holds, for each keyword the forward declares, ``mask`` (positions to average
over, built from the point's ``lengths`` when it has no mask), ``lengths``, ``target`` (ground
truth the task attached to the student point, e.g. landmarks or label sequences) and
``teacher_points`` (every exposed teacher tensor by point reference, for losses with several
teachers). A loss may return a tensor (the term's value) or a mapping of term names to tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdtool.errors import RecipeError, TrainingError

if TYPE_CHECKING:
    from kdtool.recipe import LossTerm, StageConfig
    from kdtool.registry import Registry

#: The point kinds, with the shape each carries (documented in docs/writing-a-kd-loss.md).
POINT_KINDS: dict[str, str] = {
    "logits": "(B, C) class scores",
    "sequence_posteriors": "(B, T, V) per-frame scores or log-probabilities, with lengths (B,)",
    "lattice": "(B, T, U+1, K) transducer joiner distributions (log-probabilities) with a (B, T, U+1) mask",
    "features": "(B, C, H, W) or (B, T, C) named intermediate features",
    "landmarks": "(B, N, 2) landmark coordinates, the ground truth attached as target",
}

#: Keywords a loss's forward may declare to receive from the points (besides the two tensors).
EXTRA_ARGUMENTS = ("mask", "lengths", "target", "teacher_points")

SIDES = ("student", "teacher")


def parse_point(ref: str) -> tuple[str, str]:
    """``"features/layer3"`` -> ``("features", "layer3")``; ``"logits"`` -> ``("logits", "")``."""
    kind, _, name = ref.partition("/")
    return kind, name


@dataclass(frozen=True)
class PointSpec:
    """A point a task's models expose: a kind from :data:`POINT_KINDS` and an optional name."""

    kind: str
    name: str = ""
    description: str = ""
    sides: tuple[str, ...] = SIDES  # which side can expose it (student model, teacher model or both)

    def __post_init__(self) -> None:
        if self.kind not in POINT_KINDS:
            raise ValueError(f"unknown point kind {self.kind!r}; kinds: {', '.join(POINT_KINDS)}")
        if self.kind == "features" and not self.name:
            raise ValueError("a 'features' point needs a name, e.g. PointSpec('features', 'layer3')")

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}" if self.name else self.kind


@dataclass
class Point:
    """A tensor exposed by a training step, with what a loss needs to mask or score it."""

    ref: str
    value: torch.Tensor
    lengths: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    target: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return parse_point(self.ref)[0]

    def position_mask(self) -> torch.Tensor | None:
        """The mask over leading positions: the given one, else (B, T) from lengths."""
        if self.mask is not None:
            return self.mask
        if self.lengths is None:
            return None
        frames = self.value.shape[1]
        steps = torch.arange(frames, device=self.value.device)
        return steps.unsqueeze(0) < self.lengths.to(self.value.device).unsqueeze(1)


def loss_accepts(loss_cls: Any) -> tuple[str, ...]:
    """The point kinds a registered loss declares (empty: not a KD loss, e.g. ``ce``)."""
    return tuple(getattr(loss_cls, "accepts", ()) or ())


def _forward_keywords(module: nn.Module) -> frozenset[str]:
    params = inspect.signature(module.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(EXTRA_ARGUMENTS)
    return frozenset(name for name in params if name in EXTRA_ARGUMENTS)


@dataclass
class DistillEntry:
    """One recipe loss entry resolved to a pair of points and a built loss module."""

    term: str
    loss: str
    student: str
    teacher: str
    module: nn.Module
    keywords: frozenset[str] = field(default_factory=frozenset)

    def compute(self, student: Point, teachers: Mapping[str, Point]) -> dict[str, torch.Tensor]:
        teacher = teachers[self.teacher]
        extra: dict[str, Any] = {}
        if "mask" in self.keywords:
            extra["mask"] = student.position_mask()
        if "lengths" in self.keywords:
            extra["lengths"] = student.lengths
        if "target" in self.keywords:
            extra["target"] = student.target
        if "teacher_points" in self.keywords:
            extra["teacher_points"] = {ref: p.value for ref, p in teachers.items()}
        value = self.module(student.value, teacher.value.detach(), **extra)
        if isinstance(value, Mapping):
            return dict(value)
        return {self.term: value}


def resolve_between(term: LossTerm, default: Mapping[str, str] | None, *, where: str) -> tuple[str, str]:
    if term.between is not None:
        return term.between.student, term.between.teacher
    if not default:
        raise RecipeError(
            f"{where}: loss {term.loss!r} is a distillation loss, but the entry has no 'between' and the "
            "task declares no default pairing",
            hint="add between: {student: <point>, teacher: <point>} (docs/writing-a-kd-loss.md)",
        )
    return default["student"], default["teacher"]


def check_entry(
    term: LossTerm,
    loss_cls: Any,
    points: Sequence[PointSpec],
    default: Mapping[str, str] | None,
    *,
    task_name: str,
    where: str,
    registered: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[str, str]:
    """Validate one KD entry against the task's declared points; returns (student, teacher).
    ``registered``: each registered loss's accepted kinds, to suggest alternatives."""
    accepts = loss_accepts(loss_cls)
    student, teacher = resolve_between(term, default, where=where)
    declared = {p.ref: p for p in points}
    for side, ref in (("student", student), ("teacher", teacher)):
        spec = declared.get(ref)
        if spec is None or side not in spec.sides:
            offered = sorted(r for r, p in declared.items() if side in p.sides)
            raise RecipeError(
                f"{where}.between.{side}: task {task_name!r} exposes no {side} point {ref!r}",
                hint=f"{side} points of {task_name}: {', '.join(offered) or 'none'} (docs/writing-a-kd-loss.md)",
            )
        kind = parse_point(ref)[0]
        if kind not in accepts:
            raise RecipeError(
                f"{where}: loss {term.loss!r} accepts {', '.join(accepts)}, but the {side} point "
                f"{ref!r} is of kind {kind!r}",
                hint=f"losses that accept {kind!r}: "
                + (
                    ", ".join(sorted(n for n, k in (registered or {}).items() if kind in k))
                    or "none registered"
                )
                + "; or pair other points with between: {student: ..., teacher: ...}",
            )
    return student, teacher


def build_module(term: LossTerm, loss_cls: Any, *, where: str) -> nn.Module:
    options = dict(term.options)
    if term.temperature is not None:
        if "temperature" in options:
            raise RecipeError(f"{where}: temperature is given twice (entry and options); keep one")
        if "temperature" not in inspect.signature(loss_cls).parameters:
            raise RecipeError(f"{where}: loss {term.loss!r} has no temperature; drop the entry's temperature")
        options["temperature"] = term.temperature
    try:
        module = loss_cls(**options)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: loss {term.loss!r} rejected options {options}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise RecipeError(f"{where}: loss {term.loss!r} did not build an nn.Module")
    return module


class DistillPlan:
    """A stage's KD entries and the points exposed in the current step."""

    def __init__(
        self,
        entries: list[DistillEntry],
        *,
        stage_name: str = "",
        task_losses: Mapping[str, str] | None = None,
    ) -> None:
        self.entries = entries
        self.stage_name = stage_name
        # recipe terms with a registered loss that is not a KD loss: the task must compute them
        self.task_losses = dict(task_losses or {})
        self._checked = False
        self._student: dict[str, Point] = {}
        self._teacher: dict[str, Point] = {}
        self._computed: set[str] = set()

    @property
    def refs(self) -> set[tuple[str, str]]:
        return {("student", e.student) for e in self.entries} | {("teacher", e.teacher) for e in self.entries}

    def wants(self, ref: str, side: str | None = None) -> bool:
        return any(
            (side in (None, "student") and e.student == ref)
            or (side in (None, "teacher") and e.teacher == ref)
            for e in self.entries
        )

    def begin_step(self) -> None:
        self._student.clear()
        self._teacher.clear()
        self._computed.clear()

    def expose(self, point: Point, side: str) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be 'student' or 'teacher', got {side!r}")
        (self._student if side == "student" else self._teacher)[point.ref] = point

    def distill(self) -> dict[str, torch.Tensor]:
        """Every entry whose two points are exposed; the student points are then consumed."""
        out: dict[str, torch.Tensor] = {}
        for entry in self.entries:
            if entry.student in self._student and entry.teacher in self._teacher:
                student = self._student[entry.student]
                try:
                    values = entry.compute(student, self._teacher)
                except (ValueError, RuntimeError) as exc:  # e.g. shapes that do not pair
                    teacher = self._teacher[entry.teacher]
                    raise TrainingError(
                        f"stage {self.stage_name!r}: loss term {entry.term!r} ({entry.loss}) failed on student "
                        f"point {entry.student!r} {tuple(student.value.shape)} and teacher point "
                        f"{entry.teacher!r} {tuple(teacher.value.shape)}: {exc}",
                        hint="pair points of matching shapes (between:), or give the loss the options it needs",
                    ) from exc
                for name, value in values.items():
                    out[name] = out[name] + value if name in out else value
                self._computed.add(entry.term)
        self._student.clear()
        return out

    def finish_step(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the pairs the task exposed but did not compute; a half-exposed pair is an error."""
        pending = self.distill() if self._student else {}
        for name, value in pending.items():
            if name in terms:
                raise TrainingError(
                    f"stage {self.stage_name!r}: loss term {name!r} was returned by the task and computed "
                    "from exposed points; rename one"
                )
            terms[name] = value
        for entry in self.entries:
            if entry.term in self._computed:
                continue
            if entry.teacher in self._teacher:
                raise TrainingError(
                    f"stage {self.stage_name!r}: loss term {entry.term!r} ({entry.loss}) pairs student point "
                    f"{entry.student!r} with teacher point {entry.teacher!r}, but the step exposed only the teacher's"
                )
        self._teacher.clear()
        if not self._checked:
            self._checked = True
            missing = {n: loss for n, loss in self.task_losses.items() if n not in terms}
            if missing:
                name, loss = next(iter(missing.items()))
                raise TrainingError(
                    f"stage {self.stage_name!r}: loss term {name!r} names loss {loss!r}, which declares no "
                    "distillation point kinds, and the task's step did not compute it",
                    hint="a KD loss sets `accepts = (...)` (e.g. ('logits',)) so the engine pairs it; "
                    "see docs/writing-a-kd-loss.md",
                )
        return terms


def plan_stage(
    stage: StageConfig,
    task: Any,
    losses: Registry[Any],
    modules: nn.ModuleDict,
) -> DistillPlan:
    """Resolve the stage's KD entries (recipe ones, else the task's defaults) into a plan; the
    loss modules are added to ``modules`` (trained, checkpointed with the stage, never exported)."""
    points = list(getattr(task, "distill_points", ()) or ())
    if not points:  # a task that declares no points computes its KD terms itself (ctx.loss)
        return DistillPlan([], stage_name=stage.name)
    entries: list[DistillEntry] = []
    explicit = [t for t in stage.losses if t.loss is not None and loss_accepts(losses.get(t.loss))]
    terms = explicit or list(task.default_distill(stage))
    listed = {t.name: t for t in stage.losses}
    for term in terms:
        where = f"stages.{stage.name}.losses.{term.name}"
        if term.name in listed and listed[term.name].loss not in (None, term.loss):
            continue  # the recipe gives this term another (non-KD) loss
        cls = losses.get(term.loss)  # type: ignore[arg-type]
        student, teacher = check_entry(
            term, cls, points, task.distill_between(stage), task_name=task.name, where=where,
            registered={n: loss_accepts(losses.get(n)) for n in losses.names()},
        )  # fmt: skip
        if term.name not in modules:
            modules[term.name] = build_module(term, cls, where=where)
        module = modules[term.name]
        entries.append(
            DistillEntry(term.name, str(term.loss), student, teacher, module, _forward_keywords(module))
        )
    task_losses = {
        t.name: str(t.loss)
        for t in stage.losses
        if t.loss is not None and not loss_accepts(losses.get(t.loss))
    }
    return DistillPlan(entries, stage_name=stage.name, task_losses=task_losses)
