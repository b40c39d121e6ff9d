"""Registries: the names a config chooses among (methods, backbones, tasks, datasets, heads), open to
outside code.

Each kind has one registry and one registration call (`register_method`, `register_backbone`,
`register_task`, `register_dataset`, `register_head`), which gives at once the entry's name, its
config schema (stored with Hydra) and what tables and checks read (a label, a task, a head's
stages). Wherever a call takes the class or function that builds the entry (a method's class, a
backbone's, dataset's or head's builder, a task's evaluator and scorer), it also takes its name,
`"module:attr"`: a lazy entry, whose module (torch, timm, torchvision's detection, ...) is imported
when the entry is first built (`Ref`). The package registers its own entries lazily, in
`peft_bench.methods`, `peft_bench.backbones` and `peft_bench.tasks` (each registry imports its
package at its first read), which import no model code themselves; so composing a config, or
failing on an unknown name (every registered name is listed, imported or not), imports no torch.
`peft_bench.plugins` imports them, and every installed plugin, before a config is composed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore

from peft_bench.config import BackboneConfig, Config, HeadConfig, MethodConfig
from peft_bench.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Ref:
    """A class or function named by `"module:attr"`, imported at its first use (`load`): a lazy entry's.
    Called, it calls what it names; `then`, if set, completes it once imported (a method's label)."""

    target: str
    then: Callable[[Any], Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        module, _, attr = self.target.partition(":")
        if not (module and attr):
            raise ValueError(f"{self.target!r}: name a lazy entry 'module:attr', e.g. 'my_plugin:Prompts'.")

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        loaded = getattr(import_module(module), attr)
        return self.then(loaded) if self.then else loaded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)


def lazy(entry: T | str) -> T | Ref:
    """A registration's builder: itself, or a `Ref` where it is named `"module:attr"`."""
    return Ref(entry) if isinstance(entry, str) else entry


class Registry(MutableMapping[str, T]):
    """Names -> entries of one kind; `lookup` fails with the known names, as a user error.

    An entry registered as a `Ref` is known by its name at once (`in`, iteration, the known names of
    an error) and imported at its first lookup. `location` is the module that registers the package's
    own entries, imported at the registry's first read (as mmengine's `Registry(locations=...)`), so
    that the registry is whole wherever it is imported from."""

    def __init__(self, kind: str, key: str, choose: str | None = None, location: str | None = None) -> None:
        self.kind = kind  # in words, e.g. "tuning method"
        self.key = key  # the config key that holds the name, e.g. "method"
        self.choose = choose or f"{key}=<name>"  # how a user chooses one
        self._location = location
        self._registered: dict[str, T | Ref] = {}  # as registered
        self._loaded: dict[str, T] = {}  # the lazy entries looked up so far

    @property
    def _entries(self) -> dict[str, T | Ref]:
        if self._location:  # once: the location registers into this registry while it is imported
            location, self._location = self._location, None
            import_module(location)
        return self._registered

    def add(self, name: str, entry: T | Ref) -> T | Ref:
        """Register `entry` as `name`; the same entry twice (a module imported again) is harmless."""
        if name in self._registered and self._registered[name] != entry:
            raise ValueError(f"The {self.kind} {name!r} is registered twice.")
        self._registered[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        if name not in self:
            raise UserError(
                f"Unknown {self.kind} {name!r} ({self.key}). Known: {', '.join(sorted(self))}. Choose one "
                f"with {self.choose}, or register your own (docs/extending.md)."
            )
        return self[name]

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if not isinstance(entry, Ref):
            return entry
        if name not in self._loaded:
            self._loaded[name] = entry.load()
        return self._loaded[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry
        self._loaded.pop(name, None)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A package's `__getattr__` (PEP 562) for the names it exports from heavy modules (module -> names):
    each is imported from its module at its first use, so that importing the package, to register its
    entries, imports none of them."""
    modules = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(modules[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


# Methods: `method=<name>`.

# `peft_bench.methods.base.Method` classes (no model code is imported here: comments name such types).
METHODS: Registry[type] = Registry("tuning method", "method", location="peft_bench.methods")


def register_method(
    name: str, *, config: type[MethodConfig] | None = None, label: str | None = None
) -> Callable[[type | str], type | str]:
    """Make `method=<name>` a method, everywhere: a class decorator, which also takes the class's name,
    `"module:Class"` (then imported when the method is first looked up).

    `config` is its schema (default: the class's `config_class`, which a class given by name cannot
    tell: `MethodConfig`), stored with Hydra as `schema/method/<name>` (a YAML file in a `method/`
    config group can name it in its defaults) and as the group entry `method/<name>` itself, so the
    method runs with no YAML file at all. `label` is its name in the reporter's tables (default: `name`).
    """

    def describe(method: type, schema: type[MethodConfig]) -> type:
        method.config_class, method.label = schema, label or name
        return method

    def checked(method: type, schema: type[MethodConfig]) -> type:  # a class given by name, imported
        own = method.__dict__.get("config_class", schema)
        if own is not schema:
            raise TypeError(
                f"The method {name!r} ({method.__module__}.{method.__qualname__}) declares the schema "
                f"{own.__name__}: register it with config={own.__name__}."
            )
        return method

    def add(method: type | str) -> type | str:
        if isinstance(method, str):
            schema = config or MethodConfig
            METHODS.add(name, Ref(method, then=lambda loaded: describe(checked(loaded, schema), schema)))
        else:
            schema = config or method.config_class
            METHODS.add(name, describe(method, schema))
        store = ConfigStore.instance()
        store.store(group="schema/method", name=name, node=schema)
        store.store(group="method", name=name, node=schema(name=name))
        return method

    return add


# Backbones: `backbone=<name>`.

Builder = Callable[[BackboneConfig, bool, bool], Any]  # (config, dynamic_size, pretrained) -> Backbone


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone size: how to build it and what its name promises."""

    name: str
    label: str  # its name in tables, e.g. "Swin-T", "ViT-B/16"
    img_size: int  # the native input side
    build: Builder = field(compare=False)
    weights: str = "none"  # the default of `backbone.weights` for it
    # `backbone.weights` names that load pretrained weights through timm's hub, and their timm names.
    hub: Mapping[str, str] = field(default_factory=dict)
    # The shipped checkpoints of this size (`backbone.weights=<key>`), e.g. `mini`.
    shipped: Mapping[str, str] = field(default_factory=dict)


BACKBONES: Registry[BackboneEntry] = Registry(
    "backbone", "backbone.name", choose="backbone=<name>", location="peft_bench.backbones"
)


def register_backbone(
    name: str,
    *,
    build: Builder | str,
    label: str,
    img_size: int,
    weights: str = "none",
    hub: Mapping[str, str] | None = None,
    shipped: Mapping[str, str] | None = None,
) -> BackboneEntry:
    """Make `backbone=<name>` a backbone, everywhere (the fields are `BackboneEntry`'s; `build` may be
    named `"module:function"`, imported when the size is first built): stored with Hydra as the group
    entry `backbone/<name>`, its default weights set, so it needs no YAML file."""
    entry = BackboneEntry(name, label, img_size, lazy(build), weights, hub or {}, shipped or {})
    BACKBONES.add(name, entry)
    ConfigStore.instance().store(group="backbone", name=name, node=BackboneConfig(name=name, weights=weights))
    return entry


# Tasks, datasets and heads: `data.task`, `data.name` (`dataset=<name>`) and `head=<name>`.

DataBuilder = Callable[[Config], Any]  # -> TaskData
ModelBuilder = Callable[[Any, int, Config], Any]  # (tuned Backbone, classes, config) -> TaskModel
EvaluatorBuilder = Callable[[Any, Any], Any]  # (TaskData, torch.device) -> Evaluator
# (a run's stored Outcomes, the test images to score: indices, repeats allowed; None: all) -> metrics
OutcomeScorer = Callable[[Any, Any], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """A task: how its predictions are scored, and which score selects the model."""

    name: str
    main_metric: str  # the validation metric that selects the model (higher is better)
    build_evaluator: EvaluatorBuilder
    # The metrics from a run's per-sample outcomes (`peft_bench.results.outcomes`); None: its
    # evaluator keeps none.
    score: OutcomeScorer | None = None
    per_sample: str | None = None  # the outcome with one row per test sample: how many were scored


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset: the task it serves and the function that builds its splits from the config."""

    name: str
    task: str
    build: DataBuilder


@dataclass(frozen=True)
class Head:
    """A head: its task, the function that builds the task model, its schema, the stages it reads."""

    name: str
    task: str
    build: ModelBuilder
    config: type[HeadConfig]  # its schema: the fields of `head.<key>`
    # The pyramid levels that feed the head (0-3, strides 4-32: a hierarchical backbone's stages), a
    # dense head (output norms, any input size); None: the final norm's pooled features (classification).
    stages: tuple[int, ...] | None = None

    @property
    def dense(self) -> bool:
        return self.stages is not None


TASKS: Registry[Task] = Registry("task", "data.task", location="peft_bench.tasks")
DATASETS: Registry[DatasetEntry] = Registry(
    "dataset", "data.name", choose="dataset=<name>", location="peft_bench.tasks"
)
HEADS: Registry[Head] = Registry("head", "head", location="peft_bench.tasks")


def register_task(
    name: str,
    *,
    main_metric: str,
    evaluator: EvaluatorBuilder | str,
    score: OutcomeScorer | str | None = None,
    per_sample: str | None = None,
) -> Task:
    """Make `data.task=<name>` a task, evaluated by `evaluator(data, device)`, selected on `main_metric`.
    An evaluator with an `outcomes()` method stores per-sample outcomes; `score` recomputes its
    metrics from them on any resampling of the test images, and `per_sample` names the outcome that
    has one row per test sample (so that a resample knows how many there are). `evaluator` and
    `score` may be named `"module:function"`, imported at their first use."""
    if (score is None) != (per_sample is None):
        raise ValueError(f"task {name!r}: give both score and per_sample (or neither)")
    return TASKS.add(name, Task(name, main_metric, lazy(evaluator), score and lazy(score), per_sample))


def register_dataset(name: str, *, task: str) -> Callable[[DataBuilder | str], DataBuilder | str]:
    """Function decorator: `data.name=<name>` builds its splits with the function, for `task`. It also
    takes the function's name, `"module:function"` (then imported when the dataset is first built)."""

    def add(build: DataBuilder | str) -> DataBuilder | str:
        DATASETS.add(name, DatasetEntry(name, task, lazy(build)))
        return build

    return add


def register_head(
    name: str, *, task: str, config: type[HeadConfig], stages: tuple[int, ...] | None = None
) -> Callable[[ModelBuilder | str], ModelBuilder | str]:
    """Function decorator: `head=<name>` builds the task model of `task` with the function, fed by
    the pyramid levels `stages` (0-3, strides 4-32; None: pooled features). It also takes the
    function's name, `"module:function"` (then imported when the head is first built). `config` is
    its schema, stored with Hydra as the group entry `head/<name>` and as `schema/head/<name>`."""

    def add(build: ModelBuilder | str) -> ModelBuilder | str:
        HEADS.add(name, Head(name, task, lazy(build), config, stages))
        store = ConfigStore.instance()
        store.store(group="schema/head", name=name, node=config)
        store.store(group="head", name=name, node=config(name=name))
        return build

    return add
