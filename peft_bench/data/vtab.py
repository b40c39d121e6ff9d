"""VTAB-1k's 19 tasks as NOAH's extraction script writes them, the layout nearly every peer reads.

`ZhangYuanhan-AI/NOAH`, `data/vtab-source/get_vtab1k.py`, writes per task `<task>/{train800,val200,
train800val200,test}.txt`, each line `images/<split>/000123.jpg <label>` (a path relative to the task
folder), and the JPEGs under `<task>/images/<split>/`. The readers, ~20-line list loaders, join the
path to the task folder and read the label as an int: NOAH `lib/datasets.py::general_dataset`
(`line.split(' ')`), FacT `JieShibo/PETL-ViT` `FacT/vtab.py::ImageFilelist` and PETL_Vision
`OSU-MLB/PETL_Vision` `data/dataset/vtab_processed.py` with `data/dataset/utils.py::ImageFilelist`
(`line.strip().split()`). `data.root` is the folder that holds the task folders (`vtab-1k/`); each
task's folder is looked up under its canonical name and its aliases (`peft_bench.data.suites`).

Splits per `data.selection_split`, as the peers use the lists: `val` trains on train800.txt and selects
on val200.txt (FacT's and V-PETL's `evaluate=False`, PETL_Vision's tuning); `none` trains on
train800val200.txt, the list itself (the extractor writes it from VTAB's own split definition, so it
is read, not rebuilt), and reports the last checkpoint; `test` trains on train800val200.txt and
selects on test.txt (NOAH's, FacT's and V-PETL's `max_accuracy` / `best_acc`). The test split is
test.txt throughout.

No augmentation: every split is resized straight to img_size x img_size, bicubic, no crop (the
peers' `--direct_resize`: `transforms.Resize((224, 224), interpolation=3)`), then normalised per
`data.normalization`. Only the lists are read at load; an image is decoded when its sample is read.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from torchvision import transforms as T

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData
from peft_bench.data.layout import Layout
from peft_bench.data.sources import ListedImages, Split, Transformed, task_folder
from peft_bench.data.splits import selection_of, without_holdout
from peft_bench.data.suites import VTAB_1K, SuiteTask
from peft_bench.data.transforms import resize_transforms
from peft_bench.errors import UserError

TRAIN, VAL, TRAINVAL, TEST = "train800.txt", "val200.txt", "train800val200.txt", "test.txt"
LISTS = (TRAIN, VAL, TRAINVAL, TEST)


def vtab_layout(task: SuiteTask) -> Layout:
    aliases = f" (or {', '.join(f'{a}/' for a in task.folders[1:])})" if len(task.folders) > 1 else ""
    return Layout(
        required=LISTS,
        tree=f"<data.root>/{task.folder}/{aliases} holding train800.txt, val200.txt, train800val200.txt "
        "and test.txt, whose lines read 'images/<split>/000123.jpg <label>', and the images they name "
        f"(<data.root>/{task.folder}/images/train800/000000.jpg ...), as NOAH's "
        "data/vtab-source/get_vtab1k.py writes them; data.root is the vtab-1k folder holding one folder "
        "per task (the recipe's default: $PEFT_BENCH_DATA/vtab-1k, PEFT_BENCH_DATA defaulting to data)",
        downloadable=False,
    )


def read_list(listing: Path, task: SuiteTask) -> Split:
    """The samples of one list file, every line checked: `<path relative to the task folder> <label>`."""
    names: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    with listing.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)
            label = _integer(fields[1]) if len(fields) == 2 else None
            if label is None:
                raise UserError(
                    f"Line {number} of {listing} reads {line.strip()!r}, but a VTAB-1k list line is "
                    "'<image path> <integer label>' (e.g. 'images/train800/000000.jpg 3'). Re-extract "
                    "the task with NOAH's data/vtab-source/get_vtab1k.py or fix the line."
                )
            if not 0 <= label < task.num_classes:
                raise UserError(
                    f"Line {number} of {listing} has the label {label}, outside 0..{task.num_classes - 1}: "
                    f"VTAB-1k's {task.label} has {task.num_classes} classes. Check that the folder "
                    f"{listing.parent.name}/ holds that task (data.name={task.name}), or re-extract it."
                )
            names.append(fields[0])
            labels.append(label)
            lines.append(number)
    if not names:
        raise UserError(f"{listing} lists no image: re-extract the task with NOAH's get_vtab1k.py.")
    images = ListedImages(listing.parent, names, labels, listing, lines)
    images.check_first()
    return Split(images, labels)


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def build_vtab(cfg: DataConfig, img_size: int, seed: int, task: str) -> TaskData:
    """The splits of the VTAB-1k task `task` (`data.name`), from the lists of its folder under data.root."""
    spec = VTAB_1K.task(task)
    folder = task_folder(cfg, spec, "VTAB-1k", vtab_layout(spec))
    transform = resize_transforms(img_size, cfg.normalization, T.InterpolationMode.BICUBIC)
    split = partial(_transformed, folder, spec, transform)
    test = split(TEST)
    what = f"of VTAB-1k {spec.label}"
    if selection_of(cfg) is Selection.val:
        train, val = split(TRAIN), split(VAL)
        described = f"val: {VAL} {what} (trained on {TRAIN})"
    else:
        train = split(TRAINVAL)
        val, described = without_holdout(selection_of(cfg), test, f"{TRAINVAL} {what}")
    classes = [str(c) for c in range(spec.num_classes)]  # the lists hold class ids, not names
    return TaskData(train, val, test, spec.num_classes, classes, described)


def _transformed(folder: Path, task: SuiteTask, transform: T.Compose, name: str) -> Transformed:
    return Transformed(read_list(folder / name, task), transform)


VTAB_DATASETS: dict[str, Callable[[DataConfig, int, int], TaskData]] = {
    task.name: partial(build_vtab, task=task.name) for task in VTAB_1K.tasks
}
