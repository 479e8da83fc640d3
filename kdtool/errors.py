"""User-facing errors. Each kind has its own exit code so scripts can tell them apart.

A ``KdtoolError`` is a mistake the user can fix (bad recipe, missing data, unknown target);
the CLI prints its message on stderr without a traceback (``--debug`` shows one).
"""

from __future__ import annotations


class KdtoolError(Exception):
    """Base class: a clear message saying what was wrong, where, and what to do."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class RecipeError(KdtoolError):
    """The recipe (or a ``--set`` override) is invalid."""

    exit_code = 2
    kind = "recipe error"


class DataError(KdtoolError):
    """A dataset file is missing, unreadable or malformed."""

    exit_code = 3
    kind = "data error"


class PluginError(KdtoolError):
    """A plugin is broken, missing, or two plugins claim the same name."""

    exit_code = 4
    kind = "plugin error"


class ExportError(KdtoolError):
    """An export failed, could not be verified, or exceeded its metric budget."""

    exit_code = 5
    kind = "export error"


class RunError(KdtoolError):
    """A run directory is missing, incomplete or corrupt."""

    exit_code = 6
    kind = "run error"


class TrainingError(KdtoolError):
    """Training cannot go on (e.g. a NaN or inf loss)."""

    exit_code = 7
    kind = "training error"
