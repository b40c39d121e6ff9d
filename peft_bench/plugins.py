"""What a config is composed from: the package's registered entries and every installed plugin's.

The package's methods, backbones, tasks, datasets and heads are registered when `peft_bench.methods`,
`peft_bench.backbones` and `peft_bench.tasks` are imported, each with its schema and its code by name
(`peft_bench.registry`): importing them imports no torch, and a chosen entry's module is imported
when it is built. An installed package adds its own through the entry-point group
`peft_bench.plugins` (each entry point names a module, imported by `load_plugins` before any config
is composed; it registers eagerly or lazily, as it chooses), so that `python -m peft_bench`,
`peft_bench.params`, `peft_bench.bench` and the reporter all know them. `docs/extending.md` shows
one end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import entry_points

from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore

from peft_bench import backbones, methods, tasks  # noqa: F401  (the package's own register on import, lazily)
from peft_bench.config import Config

log = logging.getLogger(__name__)

PLUGIN_GROUP = "peft_bench.plugins"


@cache
def load_plugins() -> None:
    """Register every installed plugin's entries (the package's own are registered by now)."""
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
    """What Hydra composes from: the run schema (`schema`), then every registered method's, backbone's
    and head's config and every plugin's. Call before composing."""
    ConfigStore.instance().store(name="schema", node=Config)
    load_plugins()


@contextmanager
def config_session() -> Iterator[None]:
    """Hydra's compose API over the package's configs, with the schemas and plugins registered."""
    register_configs()
    with initialize_config_module(config_module="peft_bench.conf", version_base="1.3"):
        yield
