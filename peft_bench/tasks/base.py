"""Tasks, datasets and heads: what `data.task`, `data.name` and `head` choose, and their registries.

A task is its evaluator and the metric that selects the model; a dataset builds a task's splits
from the config; a head builds the task model on a tuned backbone. Each registers with one call
(`register_task`, `register_dataset`, `register_head`), from this package or from a plugin
(`peft_bench.registry`). The trainer knows no task and no method; a head knows no method (it
receives a backbone on which the method has already been applied, `peft_bench.builder`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hydra.core.config_store import ConfigStore

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, HeadConfig
from peft_bench.data.base import TaskData
from peft_bench.engine.contract import Evaluator, TaskModel
from peft_bench.registry import Registry
from peft_bench.results.outcomes import Outcomes

DataBuilder = Callable[[Config], TaskData]
ModelBuilder = Callable[[Backbone, int, Config], TaskModel]  # (tuned backbone, classes, config)


# (a run's stored outcomes, the test images to score: indices, repeats allowed; None: all) -> metrics
OutcomeScorer = Callable[[Outcomes, np.ndarray | None], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """A task: how its predictions are scored, and which score selects the model."""

    name: str
    main_metric: str  # the validation metric that selects the model (higher is better)
    build_evaluator: Callable[[TaskData, torch.device], Evaluator]
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


TASKS: Registry[Task] = Registry("task", "data.task")
DATASETS: Registry[DatasetEntry] = Registry("dataset", "data.name", choose="dataset=<name>")
HEADS: Registry[Head] = Registry("head", "head")


def register_task(
    name: str,
    *,
    main_metric: str,
    evaluator: Callable[[TaskData, torch.device], Evaluator],
    score: OutcomeScorer | None = None,
    per_sample: str | None = None,
) -> Task:
    """Make `data.task=<name>` a task, evaluated by `evaluator(data, device)`, selected on `main_metric`.
    An evaluator with an `outcomes()` method stores per-sample outcomes; `score` recomputes its
    metrics from them on any resampling of the test images, and `per_sample` names the outcome that
    has one row per test sample (so that a resample knows how many there are)."""
    if (score is None) != (per_sample is None):
        raise ValueError(f"task {name!r}: give both score and per_sample (or neither)")
    return TASKS.add(name, Task(name, main_metric, evaluator, score, per_sample))


def register_dataset(name: str, *, task: str) -> Callable[[DataBuilder], DataBuilder]:
    """Function decorator: `data.name=<name>` builds its splits with the function, for `task`."""

    def add(build: DataBuilder) -> DataBuilder:
        DATASETS.add(name, DatasetEntry(name, task, build))
        return build

    return add


def register_head(
    name: str, *, task: str, config: type[HeadConfig], stages: tuple[int, ...] | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Function decorator: `head=<name>` builds the task model of `task` with the function, fed by
    the pyramid levels `stages` (0-3, strides 4-32; None: pooled features). `config` is its schema,
    stored with Hydra as the group entry `head/<name>` and as `schema/head/<name>`."""

    def add(build: ModelBuilder) -> ModelBuilder:
        HEADS.add(name, Head(name, task, build, config, stages))
        store = ConfigStore.instance()
        store.store(group="schema/head", name=name, node=config)
        store.store(group="head", name=name, node=config(name=name))
        return build

    return add
