"""A typed, owner-aware registry: the one place names of tasks, models, losses, ... live."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from kdtool.errors import KdtoolError, PluginError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    owner: str
    description: str = ""


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The closest candidate to ``name``, if any is close enough to be a likely typo."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


class Registry(Generic[T]):
    """Named objects of one kind (``kind`` is used in messages: "task", "loss", ...).

    A name registered twice (two plugins, one name) is a *clash*: the registry keeps going,
    and only looking the name up fails, with an error naming both plugins. So one plugin's
    clash breaks the commands that use that name, not every command.
    """

    def __init__(self, kind: str, error: type[KdtoolError] = PluginError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, Entry[T]] = {}
        self._clashes: dict[str, PluginError] = {}
        # plugins that could have provided a name but were not loaded (e.g. another plugin API)
        self._not_loaded: list[PluginError] = []

    def note_not_loaded(self, error: PluginError) -> None:
        """A plugin that was not loaded: an unknown name is then a plugin error saying why."""
        self._not_loaded.append(error)

    def register(self, name: str, obj: T, *, owner: str = "kdtool", description: str = "") -> None:
        """Add ``name``; a second registration of it raises the clash error (and is recorded)."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {owner!r} registered a {self.kind} with an invalid name {name!r}")
        existing = self._entries.get(name)
        if existing is not None:
            error = PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {existing.owner!r} and by plugin {owner!r}",
                hint=f"uninstall one of them or block it with KDTOOL_DISABLE_PLUGINS={owner}",
            )
            self._clashes.setdefault(name, error)
            raise error
        self._entries[name] = Entry(name, obj, owner, description)

    def mark_clash(self, name: str, error: PluginError) -> None:
        """Make looking ``name`` up fail with ``error`` (a clash found outside this registry)."""
        self._clashes.setdefault(name, error)

    def clash(self, name: str) -> PluginError | None:
        """The error a lookup of ``name`` raises because two plugins claim it, if they do."""
        return self._clashes.get(name)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        clash = self._clashes.get(name)
        if clash is not None:
            raise PluginError(clash.message, hint=clash.hint)
        try:
            return self._entries[name]
        except KeyError:
            raise self._unknown(name) from None

    def _unknown(self, name: str) -> KdtoolError:
        names = sorted(self._entries)
        close = suggest(name, names)
        hint = f"did you mean {close!r}?" if close else None
        listing = ", ".join(names) if names else "(none registered)"
        message = f"unknown {self.kind} {name!r}; known: {listing}"
        if self._not_loaded and close is None:
            # the name may come from a plugin that is installed but was not loaded
            notes = "\n".join(e.message for e in self._not_loaded)
            return PluginError(f"{message}\n{notes}", hint=self._not_loaded[0].hint)
        return self._error(message, hint=hint)

    def owner(self, name: str) -> str:
        """The plugin that registered ``name`` first (a clash does not hide it)."""
        if name in self._entries:
            return self._entries[name].owner
        return self.entry(name).owner

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def by_owner(self, owner: str) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.owner == owner)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered; for a clashing name, raise its error (a use)."""
        if isinstance(name, str) and name in self._clashes:
            clash = self._clashes[name]
            raise PluginError(clash.message, hint=clash.hint)
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
