"""Raw splits and the datasets that serve them, shared by the classification loaders (`classification`,
`vtab`, `fgvc`): a split of (PIL image, label) samples with its labels at hand, its transformed view,
image files named by a list (VTAB-1k's lists, FGVC's json files) and opened only when a sample is read,
and the folder of a suite's task under data.root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from peft_bench.config import DataConfig
from peft_bench.data.layout import Layout, data_root, not_found
from peft_bench.data.suites import SuiteTask
from peft_bench.errors import UserError


@dataclass(frozen=True)
class Split:
    """(PIL image, label) samples, with the labels at hand for hold-outs and checks."""

    samples: Dataset
    labels: list[int]

    def subset(self, indices: list[int]) -> Split:
        return Split(Subset(self.samples, indices), [self.labels[i] for i in indices])

    def __add__(self, other: Split) -> Split:
        return Split(ConcatDataset([self.samples, other.samples]), self.labels + other.labels)


class Transformed(Dataset):
    """A raw split with its transform; `labels` lets samplers and checks skip image decoding."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = split.samples
        self.labels = split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.samples[index]
        return self.transform(image), int(label)


class ListedImages(Dataset):
    """The images a list file names, relative to `root`: only names and labels stay in memory, each
    image is decoded when read. A missing image names the list and its line (or its json key)."""

    def __init__(
        self, root: Path, names: list[str], labels: list[int], listing: Path, lines: list[int] | None = None
    ) -> None:
        self.root = root
        self.names = names
        self.labels = labels
        self.listing = listing
        self.lines = None if lines is None else np.asarray(lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path = self.root / self.names[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB"), self.labels[index]
        except FileNotFoundError:
            raise UserError(self.missing(index)) from None

    def missing(self, index: int) -> str:
        where = (
            f"line {self.lines[index]} of {self.listing}"
            if self.lines is not None
            else f"{self.listing} (key {self.names[index]!r})"
        )
        return (
            f"The image {self.root / self.names[index]}, named on {where}, does not exist: the list "
            f"names images relative to its task folder {self.root}. Put the images there as the list "
            "names them (extract the task again if some are missing); data.root stays the folder above "
            "the task folders."
        )

    def check_first(self) -> None:
        """Fail at load, not mid-epoch, where the images are not where the list says (one stat)."""
        if self.names and not (self.root / self.names[0]).is_file():
            raise UserError(self.missing(0))


def task_folder(cfg: DataConfig, task: SuiteTask, suite: str, layout: Layout) -> Path:
    """The first of `task.folders` under data.root that exists, checked to hold `layout.required`."""
    root = data_root(cfg, layout)
    candidates = [root / name for name in task.folders]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        tried = ", ".join(c.name for c in candidates)
        where = str(root) if root.is_absolute() else f"{root} ({root.resolve()})"
        problem = f"no folder of the {suite} task {task.label} under data.root={where} (tried {tried})"
        if any((root / name).exists() for name in layout.required):
            problem += f"; {root} itself holds the task's files, but data.root is the folder above it"
        raise not_found(cfg, problem, layout)
    missing = [name for name in layout.required if not (folder / name).exists()]
    if missing:
        raise UserError(
            f"The {suite} task folder {folder} was found but lacks {', '.join(missing)}. Expected "
            f"layout: {layout.tree}. Extract the task again, or copy the missing files from where it "
            "was prepared."
        )
    return folder
