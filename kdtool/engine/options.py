"""Check every registered component's recipe options when the recipe loads.

A typo in a model's, loss's, optimizer's or schedule's ``options`` (``widht``, ``temprature``)
or in a stage's task options must fail in ``kdtool recipes validate`` and ``--dry-run``, with
the file, the line and a close match, not after hours of training. Components declare their
options by their signature (a model factory's or a loss class's keyword parameters) or, for
task stage options, by a pydantic model (:meth:`kdtool.task.Task.stage_options_model`).

A factory that takes ``**kwargs`` accepts anything, unless it says where it forwards them
with :func:`forwards_options` (e.g. the built-in ``adamw`` forwards to ``torch.optim.AdamW``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kdtool.errors import RecipeError
from kdtool.recipe import LoadedRecipe, _line_of, validate_section
from kdtool.registry import suggest

F = TypeVar("F", bound=Callable[..., Any])

# Parameters the engine passes itself (never recipe options).
_OPTIMIZER_ARGS = {"params", "lr", "weight_decay"}
_SCHEDULE_ARGS = {"optimizer", "total_steps", "steps_per_epoch", "warmup_steps"}


def forwards_options(target: Callable[..., Any], *, skip: tuple[str, ...] = ("params",)) -> Callable[[F], F]:
    """Mark a factory whose ``**options`` go to ``target`` (their names are checked there)."""

    def mark(fn: F) -> F:
        fn.__kdtool_forwards__ = (target, set(skip))  # type: ignore[attr-defined]
        return fn

    return mark


def accepted_options(obj: Any, engine_args: set[str] = frozenset()) -> tuple[list[str], list[str]] | None:  # type: ignore[assignment]
    """(accepted names, required names) of a factory or class, or None when it takes anything."""
    if inspect.isclass(obj):
        owner = next((c for c in obj.__mro__ if "__init__" in c.__dict__), object)
        if owner.__module__.startswith("torch.nn") or owner is object:
            return [], []  # a module without its own __init__ takes no options
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in engine_args
    ]
    required = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in engine_args
    ]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        forwarded = getattr(obj, "__kdtool_forwards__", None)
        if forwarded is None:
            return None
        target, skip = forwarded
        inner = accepted_options(target, set(skip) | set(engine_args))
        if inner is None:
            return None
        names = sorted({*names, *inner[0]})
    return names, required


class OptionProblems:
    """Unknown (and missing) options found in a recipe, each with file:line."""

    def __init__(self, loaded: LoadedRecipe) -> None:
        self.loaded = loaded
        self.lines: list[str] = []

    def where(self, path: tuple[Any, ...]) -> str:
        line = _line_of(self.loaded.node, path)
        return f"{self.loaded.source}:{line}" if line else self.loaded.source

    def check(
        self,
        path: tuple[Any, ...],
        label: str,
        what: str,
        obj: Any,
        options: dict[str, Any],
        *,
        engine_args: set[str] = frozenset(),  # type: ignore[assignment]
        check_required: bool = False,
    ) -> None:
        spec = accepted_options(obj, engine_args)
        if spec is None:
            return
        names, required = spec
        for key in options:
            if key in names:
                continue
            close = suggest(str(key), names)
            self.lines.append(
                f"{self.where((*path, key))}: {label}.{key}: unknown option {key!r} of {what}"
                + (f" (did you mean {close!r}?)" if close else "")
                + f"; options: {', '.join(names) or '(none)'}"
            )
        if check_required:
            for key in required:
                if key not in options:
                    self.lines.append(f"{self.where(path)}: {label}: {what} needs option {key!r}")


def check_component_options(loaded: LoadedRecipe, registries: Any, task: Any) -> None:
    """Fail (naming every problem, with file:line) when a recipe gives a registered component
    an option it does not take. Call after :func:`check_recipe_names`."""
    recipe = loaded.recipe
    problems = OptionProblems(loaded)
    for name, cfg in recipe.models.items():
        problems.check(
            ("models", name, "options"),
            f"models.{name}.options",
            f"architecture {cfg.arch!r}",
            registries.models.get(cfg.arch),
            cfg.options,
        )
    for i, stage in enumerate(recipe.stages):
        base = ("stages", i)
        label = f"stages.{stage.name}"
        for j, term in enumerate(stage.losses):
            if term.loss is not None:
                problems.check(
                    (*base, "losses", j, "options"),
                    f"{label}.losses.{term.name}.options",
                    f"loss {term.loss!r}",
                    registries.losses.get(term.loss),
                    term.options,
                    check_required=True,
                )
        for j, ref in enumerate(stage.teachers):
            if ref.arch is not None:
                problems.check(
                    (*base, "teachers", j, "options"),
                    f"{label}.teachers.{ref.name}.options",
                    f"architecture {ref.arch!r}",
                    registries.models.get(ref.arch),
                    ref.options,
                )
        problems.check(
            (*base, "optimizer", "options"),
            f"{label}.optimizer.options",
            f"optimizer {stage.optimizer.name!r}",
            registries.optimizers.get(stage.optimizer.name),
            stage.optimizer.options,
            engine_args=_OPTIMIZER_ARGS,
        )
        problems.check(
            (*base, "schedule", "options"),
            f"{label}.schedule.options",
            f"schedule {stage.schedule.name!r}",
            registries.schedules.get(stage.schedule.name),
            stage.schedule.options,
            engine_args=_SCHEDULE_ARGS,
        )
    if problems.lines:
        raise RecipeError("invalid recipe\n  " + "\n  ".join(problems.lines))
    check_stage_options(loaded, task)


def check_stage_options(loaded: LoadedRecipe, task: Any) -> None:
    """Check each stage against its role's :class:`~kdtool.task.RoleSpec` and validate its
    ``options`` with the role's model, once, storing the result on the task
    (``task.stage_options(stage)`` then never re-validates). Every problem names file:line."""
    recipe = loaded.recipe
    specs = task.role_specs() if hasattr(task, "role_specs") else None
    if specs is None:
        return
    problems = OptionProblems(loaded)
    for i, stage in enumerate(recipe.stages):
        label = f"stages[{i}]({stage.name})"
        spec = specs.get(stage.role)
        if spec is None:
            close = suggest(stage.role, list(specs))
            problems.lines.append(
                f"{problems.where(('stages', i, 'role'))}: {label}.role: task {task.name!r} has no role "
                f"{stage.role!r}"
                + (f" (did you mean {close!r}?)" if close else "")
                + f"; allowed roles: {', '.join(specs)}"
            )
            continue
        if spec.baseline and not stage.baseline_for:
            problems.lines.append(
                f"{problems.where(('stages', i, 'role'))}: {label}: a {stage.role!r} stage is a control and "
                "needs 'baseline_for' (the stage it is the control of)"
            )
        if spec.teachers == "required" and not stage.teachers:
            problems.lines.append(
                f"{problems.where(('stages', i, 'role'))}: {label}: a {stage.role!r} stage of task "
                f"{task.name!r} needs 'teachers'"
            )
        if spec.teachers == "none" and stage.teachers:
            problems.lines.append(
                f"{problems.where(('stages', i, 'teachers'))}: {label}.teachers: a {stage.role!r} stage of "
                f"task {task.name!r} takes no teachers"
            )
    if problems.lines:
        raise RecipeError("invalid recipe\n  " + "\n  ".join(problems.lines))
    for i, stage in enumerate(recipe.stages):
        model = task.stage_options_model(stage)
        if model is None:
            continue
        # the int list index is needed to locate the YAML line; validate_section's
        # ``tuple[str, ...]`` is narrower than the ``tuple[Any, ...]`` prefix it forwards to
        section = cast("tuple[str, ...]", ("stages", i, "options"))
        parsed = validate_section(loaded, model, section, stage.options)
        if hasattr(task, "set_stage_options"):
            task.set_stage_options(stage, parsed)
