"""One lazy registry for every extension point: schemes, metrics, backends, executors.

A registry maps a name to a "module:attribute" string, so that listing or validating names
imports none of the code behind them (no torch, no llm-compressor). Its entries are the
project's own (one line each in the extension point's `__init__.py`) followed by those that
installed packages declare as entry points in the group `quantbench.<kind>`, e.g. in a
plugin's pyproject.toml:

    [project.entry-points."quantbench.schemes"]
    my-scheme = "my_package.schemes:MY_SCHEME"

A plugin cannot replace a built-in entry: its name is refused, so a study that names a
built-in scheme always measures that scheme. Worker processes read the same entry points, so
a plugin reaches every stage of a study, on any node where the package is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from quantbench.errors import UserError

ENTRY_POINT_GROUP = "quantbench.{kind}"


@cache
def _plugin_entries(group: str) -> tuple[tuple[str, str], ...]:
    """(name, "module:attribute") of every entry point in `group`, in a stable order."""
    return tuple(sorted((point.name, point.value) for point in entry_points(group=group)))


class Registry(Mapping[str, str]):
    """Name -> "module:attribute" for one kind of extension: built-ins, then plugins."""

    def __init__(self, kind: str, builtin: Mapping[str, str]) -> None:
        self.kind = kind
        self.builtin = dict(builtin)

    @property
    def group(self) -> str:
        return ENTRY_POINT_GROUP.format(kind=self.kind)

    def plugins(self) -> dict[str, str]:
        """The entries installed packages add; a name that shadows a built-in is an error."""
        found = dict(_plugin_entries(self.group))
        clash = sorted(set(found) & set(self.builtin))
        if clash:
            raise UserError(
                f"an installed package registers {self.kind} {', '.join(clash)} under the "
                f"entry-point group {self.group}, a name quantbench's own {self.kind} use; "
                "rename the plugin's entry"
            )
        return found

    def _entries(self) -> dict[str, str]:
        return {**self.builtin, **self.plugins()}

    def __getitem__(self, name: str) -> str:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries()

    def load(self, name: str) -> Any:
        """The object registered as `name` (KeyError if none is). A plugin's entry that does
        not import is the plugin's fault, said in one line; a built-in one is a bug."""
        target = self[name]
        try:
            return load_object(target)
        except (ImportError, AttributeError) as exc:
            if name in self.builtin:
                raise
            raise UserError(
                f"the {self.kind} plugin '{name}' ({target}, entry-point group {self.group}) "
                f"cannot be loaded: {exc}"
            ) from None


def load_object(target: str) -> Any:
    """The object a "module:attribute" entry names, importing its module."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
