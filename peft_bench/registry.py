"""Registries: the names a config chooses among (methods, backbones, tasks, datasets, heads), open to
outside code.

Each kind has one registry and one registration call (`register_method`, `register_backbone`,
`register_task`, `register_dataset`, `register_head`), next to what it registers; `peft_bench.plugins`
imports the package's own and every installed plugin's before a config is composed.
"""

from __future__ import annotations

from typing import TypeVar

from peft_bench.errors import UserError

T = TypeVar("T")


class Registry(dict[str, T]):
    """Names -> entries of one kind; `lookup` fails with the known names, as a user error."""

    def __init__(self, kind: str, key: str, choose: str | None = None) -> None:
        super().__init__()
        self.kind = kind  # in words, e.g. "tuning method"
        self.key = key  # the config key that holds the name, e.g. "method"
        self.choose = choose or f"{key}=<name>"  # how a user chooses one

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; the same entry twice (a module imported again) is harmless."""
        if name in self and self[name] != entry:
            raise ValueError(f"The {self.kind} {name!r} is registered twice.")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        if name not in self:
            raise UserError(
                f"Unknown {self.kind} {name!r} ({self.key}). Known: {', '.join(sorted(self))}. Choose one "
                f"with {self.choose}, or register your own (docs/extending.md)."
            )
        return self[name]
