"""Registries: the names a config chooses among (methods, tasks, datasets, heads), open to outside code.

Each kind has one registry and one registration call (`register_method`, `register_task`,
`register_dataset`, `register_head`). The package's own entries register when their modules are
imported; an installed package adds its own through the entry-point group `peft_bench.plugins`
(each entry point names a module, imported by `load_plugins` before any config is composed), so
that `python -m peft_bench`, `peft_bench.params`, `peft_bench.bench` and the reporter all know them.
`docs/extending.md` shows one end to end.
"""

from __future__ import annotations

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

PLUGIN_GROUP = "peft_bench.plugins"


class Registry(dict[str, T]):
    """Names -> entries of one kind; `lookup` fails with the known names, as a user error."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__()
        self.kind = kind  # in words, e.g. "tuning method"
        self.key = key  # the config key that chooses one, e.g. "method"

    def add(self, name: str, entry: T) -> T:
        if name in self and self[name] != entry:
            raise ValueError(f"The {self.kind} {name!r} is registered twice.")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        if name not in self:
            raise UserError(
                f"Unknown {self.kind} {name!r} ({self.key}). Known: {', '.join(sorted(self))}. Choose one "
                f"with {self.key}=<name>, or register your own (docs/extending.md)."
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
        except Exception as error:
            raise UserError(
                f"The peft_bench plugin {entry.name!r} ({entry.value}, entry-point group {PLUGIN_GROUP}) "
                f"failed to load: {type(error).__name__}: {error}. Fix or uninstall the package that "
                "provides it."
            ) from error


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
