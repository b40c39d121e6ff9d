"""Registries: the names a config chooses among (methods, tasks, datasets, heads), open to outside code.

Each kind has one registry and one registration call (`register_method`, `register_task`,
`register_dataset`, `register_head`). The package's own entries register when their modules are
imported; an installed package adds its own through the entry-point group `peft_bench.plugins`
(each entry point names a module, imported by `load_plugins` before any config is composed), so
that `python -m peft_bench`, `peft_bench.params`, `peft_bench.bench` and the reporter all know them.
`docs/extending.md` shows one end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import TypeVar

from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore

from peft_bench.config import Config
from peft_bench.errors import UserError

T = TypeVar("T")
log = logging.getLogger(__name__)

PLUGIN_GROUP = "peft_bench.plugins"


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


@cache
def load_plugins() -> None:
    """Register the package's methods, tasks, datasets and heads, then every installed plugin's."""
    import_module("peft_bench.methods")
    import_module("peft_bench.tasks")
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as error:  # one broken plugin must not take the others, or the package, down
            log.warning(
                "The peft_bench plugin %r (%s, entry-point group %s) failed to load, and what it registers "
                "is unavailable: %s: %s. Fix or uninstall the package that provides it.",
                entry.name,
                entry.value,
                PLUGIN_GROUP,
                type(error).__name__,
                error,
            )


def register_configs() -> None:
    """What Hydra composes from: the run schema (`schema`), then every registered method's schema
    and every plugin's configs. Call before composing."""
    ConfigStore.instance().store(name="schema", node=Config)
    load_plugins()


@contextmanager
def config_session() -> Iterator[None]:
    """Hydra's compose API over the package's configs, with the schemas and plugins registered."""
    register_configs()
    with initialize_config_module(config_module="peft_bench.conf", version_base="1.3"):
        yield
