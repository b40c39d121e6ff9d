"""FGVC's five sets (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars) with VPT's
train / val / test splits, in the layout VPT reads.

VPT (`KMnP/vpt`, `src/data/datasets/json_dataset.py`) reads `<DATA.DATAPATH>/{train,val,test}.json`,
each a json object mapping an image path to its class id, and joins the path to an image folder that
differs per set (`get_imagedir`): `images/` for CUB and NABirds, `Images/` for Stanford Dogs, the
dataset folder itself for Oxford Flowers and Stanford Cars; V-PETL
(`synbol/Parameter-Efficient-Transfer-Learning-Benchmark`, `ImageClassification/dataloader/
json_dataset.py`) is the same code under `fgvc/<name>/`. `data.root` is the folder that holds the five
dataset folders (`fgvc/`), each looked up under its canonical name and aliases (`peft_bench.data.suites`).

Labels: VPT maps the class ids to 0..C-1 by their sorted order (`_class_ids = sorted(set(anno.values()))`),
once per json file. We sort the ids of the three files together, which is the same map wherever every
file holds every class, and the only consistent one where a file lacks some: in the copy of VPT's splits
that GIFT publishes (`savadikarc/gift`, `data/nabirds/val.json`), NABirds' val names 553 of the 555
classes, so VPT's per-file map shifts val's labels after the first missing id. Ids are kept as the json
holds them (CUB's are strings "001" ... "200", the others integers), so they sort as VPT sorts them.

Splits per `data.selection_split`: `val` trains on train.json and selects on val.json (VPT's own runs,
`train.py::get_loaders`, and its `tune_fgvc.py`); `none` trains on train.json + val.json and reports the
last checkpoint; `test` trains on train.json + val.json and selects on test.json. The test split is
test.json throughout. Training augments with a random resized crop and a flip, evaluation resizes the
short side to img_size / 0.875 and centre-crops (`classification_transforms`); VPT's own training crop is
`Resize(256)` + `RandomCrop(224)` + flip (`src/data/transforms.py`), its evaluation the same as ours.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData
from peft_bench.data.layout import Layout
from peft_bench.data.sources import ListedImages, Split, Transformed, task_folder
from peft_bench.data.splits import selection_of, without_holdout
from peft_bench.data.suites import FGVC, SuiteTask
from peft_bench.data.transforms import classification_transforms
from peft_bench.errors import UserError

JSONS = ("train.json", "val.json", "test.json")
# The image folder of each set, relative to its dataset folder ("": the folder itself): VPT's get_imagedir.
IMAGE_FOLDERS = {
    "fgvc_cub": "images",
    "fgvc_nabirds": "images",
    "fgvc_flowers": "",
    "fgvc_dogs": "Images",
    "fgvc_cars": "",
}
# A json entry of each set: from GIFT's copy of the splits (`savadikarc/gift`, `data/*/test.json`), and for
# Cars VPT's own form, `car_ims/` of the all-in-one archive with 6-digit ids (KMnP/vpt#44, #37).
EXAMPLES = {
    "fgvc_cub": '"001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg": "001"',
    "fgvc_nabirds": '"0817/0000139e21dc4d0cbfe14cae3c85c829.jpg": 817',
    "fgvc_flowers": '"jpg/image_06734.jpg": 1',
    "fgvc_dogs": '"n02085620-Chihuahua/n02085620_2650.jpg": 1',
    "fgvc_cars": '"car_ims/000001.jpg": <class id>',
}


def fgvc_layout(task: SuiteTask) -> Layout:
    images = IMAGE_FOLDERS[task.name]
    aliases = f" (or {', '.join(f'{a}/' for a in task.folders[1:])})" if len(task.folders) > 1 else ""
    image_root = f"{images}/" if images else "the folder itself"
    return Layout(
        required=(*JSONS, *([images] if images else [])),
        tree=f"<data.root>/{task.folder}/{aliases} holding VPT's train.json, val.json and test.json, each "
        f"mapping an image path to its class id ({{{EXAMPLES[task.name]}, ...}}), with the paths relative "
        f"to {image_root}; data.root is the fgvc folder holding one folder per set (the recipe's default: "
        "$PEFT_BENCH_DATA/fgvc, PEFT_BENCH_DATA defaulting to data)",
        downloadable=False,
    )


def read_json(path: Path) -> dict[str, int | str]:
    """One split file: image path -> class id, checked to be what VPT writes."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not valid JSON ({error}). VPT's split files map each image path to its class id; "
            "download them again (the links are in KMnP/vpt's README)."
        ) from error
    if not isinstance(entries, dict) or not entries:
        raise UserError(
            f"{path} holds {type(entries).__name__} {str(entries)[:60]!r}, not a json object mapping each "
            "image path to its class id, as VPT's split files do; download them again."
        )
    for name, class_id in entries.items():
        if isinstance(class_id, bool) or not isinstance(class_id, int | str):
            raise UserError(
                f"{path} gives the image {name!r} the class id {class_id!r}, but VPT's class ids are "
                'integers or strings (CUB\'s "001" ... "200"); fix the entry or download the splits again.'
            )
    return entries


def class_ids(files: dict[str, dict[str, int | str]], task: SuiteTask, folder: Path) -> list[int | str]:
    """The sorted class ids of the three files together: id i of the list is label i."""
    ids = {class_id for entries in files.values() for class_id in entries.values()}
    try:
        ordered = sorted(ids)
    except TypeError:
        raise UserError(
            f"The split files of {folder} mix integer and string class ids, which have no common order; "
            "VPT's files use one kind per set. Download the splits again."
        ) from None
    if len(ordered) > task.num_classes:
        raise UserError(
            f"The split files {', '.join(files)} of {folder} name {len(ordered)} classes, but FGVC's "
            f"{task.label} has {task.num_classes}: check that {folder.name}/ holds that set "
            f"(data.name={task.name}), or download VPT's splits again."
        )
    return ordered


def build_fgvc(cfg: DataConfig, img_size: int, seed: int, task: str) -> TaskData:
    """The splits of the FGVC set `task` (`data.name`), from VPT's json files under data.root."""
    spec = FGVC.task(task)
    folder = task_folder(cfg, spec, "FGVC", fgvc_layout(spec))
    files = {name: read_json(folder / name) for name in JSONS}
    ids = class_ids(files, spec, folder)
    label_of = {class_id: label for label, class_id in enumerate(ids)}
    images = folder / IMAGE_FOLDERS[task]  # / "" is the folder itself
    raw = {name: _split(images, folder / name, entries, label_of) for name, entries in files.items()}
    norm = cfg.normalization
    train_transform = classification_transforms(img_size, train=True, normalization=norm)
    eval_transform = classification_transforms(img_size, train=False, normalization=norm)
    test = Transformed(raw["test.json"], eval_transform)
    what = f"of FGVC {spec.label}"
    if selection_of(cfg) is Selection.val:
        train = raw["train.json"]
        val = Transformed(raw["val.json"], eval_transform)
        described = f"val: val.json {what} (VPT's split; trained on train.json)"
    else:
        train = raw["train.json"] + raw["val.json"]
        val, described = without_holdout(selection_of(cfg), test, f"train.json + val.json {what}")
    names = [str(c) for c in ids] + [str(c) for c in range(len(ids), spec.num_classes)]
    return TaskData(Transformed(train, train_transform), val, test, spec.num_classes, names, described)


def _split(
    images: Path, listing: Path, entries: dict[str, int | str], label_of: dict[int | str, int]
) -> Split:
    labels = [label_of[class_id] for class_id in entries.values()]
    files = ListedImages(images, list(entries), labels, listing)
    files.check_first()
    return Split(files, labels)


FGVC_DATASETS: dict[str, Callable[[DataConfig, int, int], TaskData]] = {
    task.name: partial(build_fgvc, task=task.name) for task in FGVC.tasks
}
