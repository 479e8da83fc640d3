"""The hook reference in docs/plugins.md, generated from kdtool/hookspecs.py so it cannot drift.

``render_reference()`` turns every hook's signature and docstring into Markdown;
``update(path)`` rewrites the block between the markers in a Markdown file; ``is_current(path)``
says whether the file already holds exactly what ``render_reference()`` gives (a test runs it).
``kdtool plugins docs`` prints, ``--write`` updates, ``--check`` fails on drift.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from kdtool import hookspecs
from kdtool.errors import PluginError

BEGIN = "<!-- BEGIN GENERATED hook reference: `kdtool plugins docs --write docs/plugins.md` rewrites this block -->"
END = "<!-- END GENERATED hook reference -->"

_GROUPS = (
    ("Registration hooks", hookspecs.REGISTRATION_HOOKS),
    ("Command hook", ("register_commands",)),
    ("Lifecycle hooks", hookspecs.LIFECYCLE_HOOKS),
)


def _signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    sig = inspect.signature(fn)
    params = ", ".join(
        f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
        for p in sig.parameters.values()
    )
    returns = sig.return_annotation if sig.return_annotation is not inspect.Signature.empty else "None"
    return f"def {name}({params}) -> {returns}: ..."


def render_reference() -> str:
    """Markdown for every hook (signature and contract), in hookspecs.py's order."""
    covered = [h for _, hooks in _GROUPS for h in hooks]
    missing = [h for h in hookspecs.ALL_HOOKS if h not in covered]
    if missing:  # a new hook family must be given a heading here
        raise PluginError(f"hooks without a documentation group: {missing}")
    module_doc = inspect.cleandoc(hookspecs.__doc__ or "")
    lines = [
        f"Plugin API version **{hookspecs.PLUGIN_API_VERSION}** (`kdtool.hookspecs.PLUGIN_API_VERSION`).",
        "",
        _markdown(module_doc),
        "",
        "The `register` callback every registration hook receives:",
        "",
        "```python",
        f'def register(name: str, obj: Any, *, description: str = "") -> None: ...{_protocol_note()}',
        "```",
    ]
    for title, hooks in _GROUPS:
        lines += ["", f"### {title}"]
        for name in hooks:
            doc = _markdown(inspect.cleandoc(getattr(hookspecs, name).__doc__ or ""))
            lines += [
                "",
                f"#### `{name}`",
                "",
                "```python",
                "@kdtool.hookimpl",
                _signature(name),
                "```",
                "",
                doc,
            ]
    return "\n".join(lines).rstrip() + "\n"


def _markdown(doc: str) -> str:
    """Sphinx roles (:class:`x`) as Markdown code spans."""
    return re.sub(r":(?:class|func|meth|mod|data|attr):`~?([^`]+)`", r"`\1`", doc)


def _protocol_note() -> str:
    doc = inspect.cleandoc(hookspecs.Register.__doc__ or "")
    return f"  # {doc}" if doc else ""


def splice(text: str, reference: str) -> str:
    """``text`` with the block between the markers replaced by ``reference``."""
    if BEGIN not in text or END not in text:
        raise PluginError(f"the document has no generated block; add the two marker lines:\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{reference}\n{END}{tail}"


def update(path: Path | str) -> bool:
    """Rewrite the generated block of ``path``; True when the file changed."""
    path = Path(path)
    old = path.read_text()
    new = splice(old, render_reference())
    if new != old:
        path.write_text(new)
    return new != old


def is_current(path: Path | str) -> bool:
    """Whether ``path``'s generated block is exactly what hookspecs.py gives now."""
    text = Path(path).read_text()
    return splice(text, render_reference()) == text
