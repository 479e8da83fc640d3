"""Commands loaded on use, and help text without Python type names.

``kdtool --help`` must start fast: a command's module (which may import torch) is imported
only when that command runs or shows its own help. The root group lists each built-in
command from a :class:`LazyCommand` (name, where it lives, one help line); plugin commands
come from the plugins' ``register_commands`` hook, run when the command list is first needed.
A plugin keeps its own start light with :func:`add_lazy_command`.

Every command the group hands out is tidied for help: flags show no value placeholder,
options show ``INTEGER``/``PATH``/``TEXT`` (or their metavar) instead of ``<int>`` or
``<list[str]>``, and arguments show as ``RECIPE``, ``[RUN]``, ``INPUTS...`` rather than
``{recipe}``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
import typer.main
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from kdtool.errors import KdtoolError


@dataclass(frozen=True)
class LazyCommand:
    """A command that is imported on use.

    ``target`` is ``"module:attribute"``: a ``typer.Typer`` (its command or group is used), or
    a function ``register(app)`` that adds the command ``name`` to the Typer app it receives
    (the convention of ``kdtool/cli/*.py``). ``help`` is the one line ``kdtool --help`` shows.
    ``help_extra``, optional, is another ``"module:function"`` returning text appended to the
    command's own ``--help`` (computed only when that help is shown).
    """

    name: str
    target: str
    help: str
    help_extra: str = ""

    def load(self) -> Any:
        """The real (tidied) click command, importing its module."""
        obj = _resolve(self.target)
        command: Any
        if isinstance(obj, typer.Typer):
            # a sub-app with commands is a group; get_group adds no shell-completion options
            has_commands = bool(obj.registered_commands or obj.registered_groups)
            command = typer.main.get_group(obj) if has_commands else typer.main.get_command(obj)
        else:
            holder = typer.Typer()
            obj(holder)
            group = typer.main.get_group(holder)
            command = group.commands.get(self.name)
            if command is None:
                raise KdtoolError(
                    f"{self.target} did not register a command named {self.name!r} "
                    f"(it registered: {', '.join(group.commands) or 'nothing'})"
                )
        command.name = self.name
        tidy(command)
        if self.help_extra:
            command._kdtool_help_extra = _resolve(self.help_extra)
        return command

    def stub(self) -> TyperCommand:
        """A stand-in that only carries the help line (for listing without importing)."""
        command = TyperCommand(name=self.name, help=self.help, short_help=self.help)
        command._kdtool_lazy = self  # type: ignore[attr-defined]
        return command


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    if not attribute:
        raise KdtoolError(f"lazy command target {target!r} must be 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)


def add_lazy_command(app: typer.Typer, name: str, target: str, help: str) -> None:
    """Register ``name`` on ``app`` without importing ``target`` until the command is used.

    For a plugin's ``register_commands`` hook: ``add_lazy_command(app, "subnets",
    "my_plugin.cli:register", help="...")`` keeps ``kdtool --help`` from importing the
    plugin's command module (and torch). ``target`` is as in :class:`LazyCommand`. On
    kdtool's own command group the real command is loaded when it runs; on any other Typer
    app the placeholder forwards its arguments to it.
    """
    spec = LazyCommand(name=name, target=target, help=help)

    def forward(ctx: typer.Context) -> Any:
        command = spec.load()
        return command.main(args=list(ctx.args), prog_name=ctx.command_path, standalone_mode=False)

    forward._kdtool_lazy = spec  # type: ignore[attr-defined]
    app.command(
        name,
        help=help,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )(forward)


# --------------------------------------------------------------------------- help tidying


def _type_label(param: Any) -> str | None:
    """``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH`` or ``[a|b]`` for an option's value."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return None
    if getattr(descriptor, "is_choice", False):
        return "[" + "|".join(str(c) for c in descriptor.choices or ()) + "]"
    if getattr(descriptor, "is_path", False):
        return "PATH"
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}.get(annotation, "VALUE")


def _option_type(self: Any, ctx: Any, _original: Callable[[Any], str | None]) -> str | None:
    if getattr(self, "is_flag", False) or getattr(self, "count", False):
        return None  # a flag takes no value: show none
    if self.metavar is not None:
        return str(self.metavar)
    return _type_label(self) or _original(ctx)


def _argument_usage(self: Any) -> str:
    name = str(self.display_name_raw)
    return name if self.required else f"[{name}]"


def _help_option(self: Any, ctx: Any, _original: Callable[[Any], Any]) -> Any:
    option = _original(ctx)
    if option is not None:
        _tidy_param(option)
    return option


def _format_help(self: Any, ctx: Any, formatter: Any, _original: Callable[[Any, Any], None]) -> None:
    extra: Callable[[], str] | None = getattr(self, "_kdtool_help_extra", None)
    if extra is not None and not getattr(self, "_kdtool_extra_done", False):
        try:
            text = extra()
        except KdtoolError as exc:  # e.g. a broken plugin: the help still shows
            text = f"({exc.message})"
        self.epilog = "\n\n".join(p for p in (self.epilog, text) if p)
        self._kdtool_extra_done = True
    _original(ctx, formatter)


def _override(obj: Any, name: str, function: Callable[..., Any], *, pass_original: bool = True) -> None:
    """Bind ``function`` as ``obj.name`` (this instance only), handing it the original method."""
    if getattr(obj, f"_kdtool_{name}", False):
        return
    original = getattr(obj, name)
    if pass_original:
        setattr(obj, name, lambda *a, **k: function(obj, *a, _original=original, **k))
    else:
        setattr(obj, name, lambda *a, **k: function(obj, *a, **k))
    setattr(obj, f"_kdtool_{name}", True)


def _tidy_param(param: Any) -> None:
    if isinstance(param, TyperArgument):
        if param.metavar is None:
            param.metavar = (param.name or "value").upper() + ("..." if param.nargs != 1 else "")
        _override(param, "display_type_rich", lambda self, ctx: None, pass_original=False)
        _override(param, "_usage_display_name", _argument_usage, pass_original=False)
    elif isinstance(param, TyperOption):
        _override(param, "display_type_rich", _option_type)


def tidy(command: Any) -> Any:
    """Make ``command`` (and its sub-commands) show flags, values and arguments plainly."""
    for param in getattr(command, "params", []):
        _tidy_param(param)
    if isinstance(command, TyperCommand | TyperGroup):
        _override(command, "get_help_option", _help_option)
        _override(command, "format_help", _format_help)
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command


# --------------------------------------------------------------------------- the root group


def _warn(message: str) -> None:
    print(f"kdtool: warning: {message}", file=sys.stderr)


class KdtoolGroup(TyperGroup):
    """The root command group: built-in commands from ``lazy_commands``, loaded on use, and
    plugin commands, collected from the plugins the first time the command list is needed
    (``kdtool --help``, or a command name that is not built in)."""

    lazy_commands: tuple[LazyCommand, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False
        self._plugins_loaded = False
        self._builtin = {spec.name for spec in self.lazy_commands}
        for spec in self.lazy_commands:
            self.commands.setdefault(spec.name, spec.stub())
        tidy(self)

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from kdtool.plugins import get_plugin_manager

        holder = typer.Typer()
        try:
            get_plugin_manager().add_commands(holder)
        except KdtoolError as exc:
            _warn(f"plugin commands not loaded: {exc.message}")
            return
        if not (holder.registered_commands or holder.registered_groups):
            return
        for name, command in typer.main.get_group(holder).commands.items():
            if name in self._builtin:
                _warn(f"a plugin's command {name!r} has the name of a built-in command; it is ignored")
                continue
            spec = getattr(getattr(command, "callback", None), "_kdtool_lazy", None)
            self.commands[name] = spec.stub() if isinstance(spec, LazyCommand) else tidy(command)

    def list_commands(self, ctx: Any) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            self._load_plugin_commands()
        command = self.commands.get(cmd_name)
        spec = getattr(command, "_kdtool_lazy", None)
        if spec is not None and not self._listing:
            command = spec.load()
            self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True  # list commands from their stubs: import nothing
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
