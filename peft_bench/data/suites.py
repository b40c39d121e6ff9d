"""The many-task benchmarks: VTAB-1k's 19 tasks in three groups, FGVC's five sets, and the embedded
VTAB that stands for VTAB-1k offline. One table per suite is the single source of each task's dataset
name, group and class count, for the loaders, the presets and the reporter alike.

VTAB-1k's folder names are those of NOAH's extraction script (`ZhangYuanhan-AI/NOAH`,
`data/vtab-source/get_vtab1k.py`: `cifar`, `oxford_iiit_pet`, `smallnorb_azi`, ...), which FacT
(`JieShibo/PETL-ViT`, `FacT/vtab.py::_DATASET_NAME`) and PETL_Vision (`OSU-MLB/PETL_Vision`,
`utils/global_var.py::VTAB_DATASETS`) read as written. The aliases are names other peers give the same
folder: `cifar100` (NOAH's own `configs/*/VTAB/*.sh`, `--data-path=./vtab-1k/${DATASET}`, and V-PETL's
`ImageClassification/scripts/run_vit_*.sh`), `oxford_pet` (NOAH's scripts and `lib/datasets.py`); the
other aliases are common spellings seen in no peer, harmless since the canonical name is tried first.
Class counts: NOAH `lib/datasets.py`, FacT `vtab.py::_CLASSES_NUM`, PETL_Vision `VTAB_DATASETS` agree.

FGVC's class counts are VPT's `DATA.NUMBER_CLASSES` (`KMnP/vpt`, `configs/finetune/{cub,nabirds,
flowers,dogs,cars}.yaml`). VPT sets no folder name (`DATA.DATAPATH` is the dataset's folder itself), so
the canonical folders are V-PETL's (`synbol/Parameter-Efficient-Transfer-Learning-Benchmark`,
`ImageClassification/dataloader/{loader,json_dataset}.py`: `fgvc/<name>` with `CUB_200_2011`,
`nabirds`, `OxfordFlower`, `StanfordDogs`, `StanfordCars`); the aliases are VPT's `DATA.NAME` (`CUB`,
`OxfordFlowers`) and GIFT's lower-case folders (`savadikarc/gift`, `data/<name>/`).
"""

from __future__ import annotations

from dataclasses import dataclass

NATURAL, SPECIALIZED, STRUCTURED = "Natural", "Specialized", "Structured"


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: its dataset name (`dataset=<name>`), display label, group and classes."""

    name: str
    label: str
    group: str  # NATURAL, SPECIALIZED, STRUCTURED; "" for a suite without groups
    num_classes: int
    folders: tuple[str, ...] = ()  # on disk: the canonical folder name first, then known aliases

    @property
    def folder(self) -> str:
        return self.folders[0]


@dataclass(frozen=True)
class Suite:
    name: str
    label: str
    tasks: tuple[SuiteTask, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """The suite's groups in their order of first appearance (none for FGVC)."""
        return tuple(dict.fromkeys(task.group for task in self.tasks if task.group))

    def task(self, name: str) -> SuiteTask:
        return next(task for task in self.tasks if task.name == name)


def _vtab(folder: str, label: str, group: str, classes: int, *aliases: str) -> SuiteTask:
    return SuiteTask(f"vtab_{folder}", label, group, classes, (folder, *aliases))


VTAB_1K = Suite(
    "vtab",
    "VTAB-1k",
    (
        _vtab("cifar", "CIFAR-100", NATURAL, 100, "cifar100", "cifar-100"),
        _vtab("caltech101", "Caltech101", NATURAL, 102),
        _vtab("dtd", "DTD", NATURAL, 47),
        _vtab("oxford_flowers102", "Flowers102", NATURAL, 102, "flowers102", "oxford_flowers"),
        _vtab("oxford_iiit_pet", "Pets", NATURAL, 37, "oxford_pet", "oxford_pets", "pets"),
        _vtab("svhn", "SVHN", NATURAL, 10),
        _vtab("sun397", "Sun397", NATURAL, 397, "sun"),
        _vtab("patch_camelyon", "Camelyon", SPECIALIZED, 2, "camelyon", "pcam"),
        _vtab("eurosat", "EuroSAT", SPECIALIZED, 10),
        _vtab("resisc45", "Resisc45", SPECIALIZED, 45),
        _vtab("diabetic_retinopathy", "Retinopathy", SPECIALIZED, 5, "retinopathy"),
        _vtab("clevr_count", "Clevr-Count", STRUCTURED, 8),
        _vtab("clevr_dist", "Clevr-Dist", STRUCTURED, 6, "clevr_distance"),
        _vtab("dmlab", "DMLab", STRUCTURED, 6),
        _vtab("kitti", "KITTI-Dist", STRUCTURED, 4, "kitti_dist"),
        _vtab("dsprites_loc", "dSpr-Loc", STRUCTURED, 16, "dsprites_location"),
        _vtab("dsprites_ori", "dSpr-Ori", STRUCTURED, 16, "dsprites_orientation"),
        _vtab("smallnorb_azi", "sNORB-Azim", STRUCTURED, 18, "smallnorb_azimuth"),
        _vtab("smallnorb_ele", "sNORB-Elev", STRUCTURED, 9, "smallnorb_elevation"),
    ),
)


def _fgvc(name: str, label: str, classes: int, *folders: str) -> SuiteTask:
    return SuiteTask(f"fgvc_{name}", label, "", classes, folders)


FGVC = Suite(
    "fgvc",
    "FGVC",
    (
        _fgvc("cub", "CUB-200-2011", 200, "CUB_200_2011", "CUB", "cub"),
        _fgvc("nabirds", "NABirds", 555, "nabirds"),
        _fgvc("flowers", "Oxford Flowers", 102, "OxfordFlower", "OxfordFlowers", "oxfordflowers"),
        _fgvc("dogs", "Stanford Dogs", 120, "StanfordDogs", "stanforddogs"),
        _fgvc("cars", "Stanford Cars", 196, "StanfordCars", "stanfordcars"),
    ),
)

# The embedded VTAB (`peft_bench.data.vtab_mini`): procedural scenes standing for the three groups.
VTAB_MINI = Suite(
    "vtab_mini",
    "VTAB-mini (embedded)",
    (
        SuiteTask("vtab_mini_objects", "Objects", NATURAL, 10),
        SuiteTask("vtab_mini_textures", "Textures", SPECIALIZED, 6),
        SuiteTask("vtab_mini_count", "Count", STRUCTURED, 6),
        SuiteTask("vtab_mini_distance", "Distance", STRUCTURED, 6),
        SuiteTask("vtab_mini_orientation", "Orientation", STRUCTURED, 16),
        SuiteTask("vtab_mini_position", "Position", STRUCTURED, 16),
        SuiteTask("vtab_mini_size", "Size", STRUCTURED, 8),
    ),
)

SUITES = {suite.name: suite for suite in (VTAB_1K, FGVC, VTAB_MINI)}


def suite_of(dataset: str) -> Suite | None:
    """The suite that `dataset` (a `data.name`) belongs to, if any."""
    return next((s for s in SUITES.values() if any(t.name == dataset for t in s.tasks)), None)
