"""Loading ``torch.export`` programs (``.pt2``) without running code from the file.

``torch.export.load`` reads some parts of an archive with pickle: tensors saved with
``use_pickle`` (tensor subclasses), custom and opaque objects, the legacy (torch 2.7) zip
format, and, when a safe read of sample inputs or constants fails, it *falls back* to
``torch.load(weights_only=False)``. Unpickling a file from an untrusted source can run any
code. So, unless the user says they trust the file (``trust_code: true`` on a recipe teacher,
``kdtool --trust``, or ``KDTOOL_TRUST_CODE=1``), kdtool

1. checks the archive first and refuses one whose parts need pickle (or carry compiled
   AOTInductor code), naming what it found, and
2. loads it with every ``torch.load`` forced to ``weights_only=True``
   (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), so the fallback cannot unpickle arbitrary objects.

Third-party logging, warnings and stderr output are silenced around the load, so a bad file
gives the user one line from kdtool instead of a page of torch's traceback.
ONNX files (``onnx:`` teachers, ONNX exports) are the safe path: onnxruntime runs no code
from the file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from kdtool.errors import KdtoolError, RecipeError

TRUST_ENV = "KDTOOL_TRUST_CODE"
TRUST_HINT = (
    "only if you trust where the file comes from: set `trust_code: true` on the teacher in the "
    f"recipe, or run `kdtool --trust ...` ({TRUST_ENV}=1); otherwise re-export it with "
    "torch.export.save from a plain model, or use an ONNX file"
)


def trusted(explicit: bool | None = None) -> bool:
    """Whether code-running loads are allowed: ``explicit``, else ``KDTOOL_TRUST_CODE=1``."""
    if explicit:
        return True
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def describe_path(path: Path) -> str:
    """``path`` resolved, and for a relative one, what it was resolved against."""
    resolved = path.expanduser().resolve()
    if path.is_absolute():
        return str(resolved)
    return f"{resolved} ({str(path)!r} resolved against the working directory {Path.cwd()})"


def unsafe_parts(path: Path) -> list[str]:
    """What in the ``.pt2`` archive at ``path`` loading would unpickle or execute (empty: none).

    Raises :class:`RecipeError` when the file is not a zip archive at all.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            inner = {name.split("/", 1)[1] if "/" in name else name: name for name in names}
            found: list[str] = []
            if "archive_format" not in inner:
                return ["an old torch.export format (read through pickle), or not a torch.export archive"]
            for key, name in inner.items():
                base = key.rsplit("/", 1)[-1]
                if key.startswith("data/aotinductor/"):
                    found.append("AOTInductor compiled code (data/aotinductor/)")
                elif key.startswith("data/constants/") and base.startswith(("custom_obj_", "opaque_obj_")):
                    found.append(f"a pickled object ({key})")
                elif key.startswith(("data/weights/", "data/constants/")) and key.endswith(".pt"):
                    found.append(f"legacy pickled tensors ({key})")
                elif key.endswith(("_weights_config.json", "_constants_config.json")):
                    config = json.loads(archive.read(name)).get("config", {})
                    pickled = [fqn for fqn, meta in config.items() if meta.get("use_pickle")]
                    if pickled:
                        found.append(f"pickled tensors ({', '.join(sorted(pickled)[:3])})")
    except zipfile.BadZipFile:
        raise RecipeError(
            f"{describe_path(path)} is not a torch.export archive (.pt2): it is not a zip file",
            hint="save the program with torch.export.save(program, 'model.pt2'), or give an ONNX file",
        ) from None
    except (json.JSONDecodeError, AttributeError) as exc:
        return [f"an unreadable archive config ({exc})"]
    return sorted(set(found))


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence logging, warnings and anything written to stderr (fd 2) inside the block.

    With ``KDTOOL_DEBUG=1`` nothing is silenced, so the noise can still be seen when needed.
    """
    if os.environ.get("KDTOOL_DEBUG") == "1":
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        logging.disable(previous)


@contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    """Force every ``torch.load`` inside the block to ``weights_only=True``."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_program(
    path: Path,
    *,
    trust: bool | None = None,
    what: str = "torch.export program",
    error: type[KdtoolError] = RecipeError,
) -> Any:
    """The ``ExportedProgram`` in the ``.pt2`` file at ``path``, refusing code-running parts
    unless trusted (see the module docstring). Errors are ``error`` (a recipe error by
    default; an artifact's loader passes its own kind) and name the resolved path."""
    import torch

    shown = describe_path(path)
    if not path.exists():
        raise error(f"{what} not found: {shown}")
    allow = trusted(trust)
    if not allow:
        try:
            problems = unsafe_parts(path)
        except RecipeError as exc:
            raise error(exc.message, hint=exc.hint) from None
        if problems:
            raise error(
                f"{what} {shown} is refused: loading it would unpickle or run code from the file "
                f"({'; '.join(problems)})",
                hint=TRUST_HINT,
            )
    try:
        with quiet_third_party(), nullcontext() if allow else _weights_only_everywhere():
            return torch.export.load(str(path))
    except KdtoolError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not allow and ("weights_only" in str(exc) or "Unpickl" in type(exc).__name__):
            raise error(
                f"{what} {shown} is refused: part of it can only be read by unpickling arbitrary "
                f"objects, which can run code ({first})",
                hint=TRUST_HINT,
            ) from None
        raise error(f"cannot load {what} {shown}: {first}") from None
