"""The datasets of one run, as every task's data builder returns them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset


@dataclass
class TaskData:
    """What a run trains on, selects the model on (`val`), and reports on (`test`)."""

    train: Dataset
    val: Dataset | None  # None: nothing selects the model (the paper's protocol: the last checkpoint)
    test: Dataset | None  # None: a grid point of a tuned protocol, which never sees the test split
    num_classes: int
    class_names: list[str]
    selection: str  # in words: which split selects the model (if any), and where the splits come from
    collate_fn: Callable | None = None


def collate_lists(batch: Sequence[tuple[Any, Any]]) -> tuple[list, list]:
    """(list of images, list of targets) for the dense tasks: images differ in size, and the model
    resizes, pads and batches them itself."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
