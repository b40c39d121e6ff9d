"""One model builder: the backbone, its preparation for the head, the method, the task model.

`run`, `params`, `bench` and the reporter's parameter columns all build through here, so which
tensors train is decided in one place: what a run record counts is what `params` prints and
what the tables show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from omegaconf import OmegaConf

from peft_bench.backbones import Backbone, backbone_entry, build_backbone
from peft_bench.config import Config
from peft_bench.data.base import TaskData
from peft_bench.engine.contract import TaskModel
from peft_bench.errors import UserError
from peft_bench.methods import METHODS, build_method
from peft_bench.registry import DatasetEntry, Head
from peft_bench.tasks import DATASETS, HEADS, TASKS, Task

E = TypeVar("E", DatasetEntry, Head)


def task_of(cfg: Config) -> Task:
    """The registered task of `data.task`."""
    return TASKS.lookup(cfg.data.task)


def dataset_of(cfg: Config) -> DatasetEntry:
    """The registered dataset of `data.name`, if it belongs to the configured task."""
    return _of_task(DATASETS.lookup(cfg.data.name), cfg, DATASETS.values())


def head_of(cfg: Config) -> Head:
    """The registered head of `head.name`, if it belongs to the task and the config has its fields."""
    head = _of_task(HEADS.lookup(cfg.head.name), cfg, HEADS.values())
    schema = OmegaConf.get_type(cfg.head) if OmegaConf.is_config(cfg.head) else type(cfg.head)
    if schema is not dict and not issubclass(schema, head.config):  # dict: a saved, untyped config
        raise UserError(
            f"head.name={head.name!r} with the settings of another head ({schema.__name__}): choose the "
            f"head as a config group, head={head.name}, which brings its own fields ({head.config.__name__})."
        )
    return head


def _of_task(entry: E, cfg: Config, entries: Iterable[E]) -> E:
    """`entry`, if it belongs to the configured task; else a user error naming the task's own."""
    task = task_of(cfg).name
    if entry.task != task:
        kind = "dataset" if isinstance(entry, DatasetEntry) else "head"
        own = ", ".join(sorted(e.name for e in entries if e.task == task)) or "none"
        raise UserError(
            f"The {kind} {entry.name!r} belongs to the task {entry.task!r}, but data.task is {task!r} "
            f"(the {kind}s of {task!r}: {own}). Choose the dataset with dataset=<name>, which sets "
            "data.task and its head together."
        )
    return entry


def check_choices(cfg: Config) -> Task:
    """The configured task, after its dataset, head, method and backbone are checked against what
    is registered: a wrong name fails before anything is loaded or built."""
    dataset_of(cfg)
    head_of(cfg)
    METHODS.lookup(cfg.method.name)
    backbone_entry(cfg.backbone.name)
    return task_of(cfg)


def build_data(cfg: Config) -> TaskData:
    """The configured dataset's splits (a missing dataset fails here, before any model is built)."""
    return dataset_of(cfg).build(cfg)


def build_tuned_backbone(
    cfg: Config, *, pretrained: bool = True, on_base: Callable[[Backbone], None] | None = None
) -> Backbone:
    """The backbone with its weights and the norms its head reads; `on_base` sees it then, untouched by
    tuning (the delta's fingerprint); then the method, the frozen stages, and the output norms that
    feed nothing frozen. `pretrained=False` loads no weights (counts on the meta device)."""
    head = head_of(cfg)
    backbone = build_backbone(cfg.backbone, dynamic_size=head.dense, pretrained=pretrained)
    backbone.prepare_output_norms(per_stage=head.dense, fresh=cfg.backbone.fresh_output_norms)
    if on_base is not None:
        on_base(backbone)
    build_method(cfg.method).apply(backbone)
    backbone.freeze_stages(cfg.backbone.frozen_stages)
    if head.dense:
        # A map that no level the head reads is made from (RetinaNet's stage 0: the reference
        # backbone has no norm0 there) keeps a norm that gets no gradient, which would stall DDP.
        read = {backbone.level_maps[level] for level in head.stages}
        for index, norm in enumerate(backbone.output_norms):
            if index not in read:
                norm.requires_grad_(False)
    return backbone


def build_task_model(
    cfg: Config,
    num_classes: int,
    *,
    pretrained: bool = True,
    on_base: Callable[[Backbone], None] | None = None,
) -> TaskModel:
    """The configured task model over `num_classes` classes on a tuned backbone (`build_tuned_backbone`)."""
    backbone = build_tuned_backbone(cfg, pretrained=pretrained, on_base=on_base)
    return head_of(cfg).build(backbone, num_classes, cfg)
