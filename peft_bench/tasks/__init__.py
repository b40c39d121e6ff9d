"""Tasks, datasets and heads: what `data.task`, `data.name` and `head` choose.

A task is its evaluator and the metric that selects the model; a dataset builds a task's splits
from the config; a head builds the task model on a tuned backbone. Each registers with one call
(`register_task`, `register_dataset`, `register_head`, `peft_bench.registry`), from this package or
from a plugin. The trainer knows no task and no method; a head knows no method (it receives a
backbone on which the method has already been applied, `peft_bench.builder`).

The package's own are registered here with their functions by name, so that importing this package
imports no torch, and building one imports only what it needs: a head its model
(`peft_bench.models`), a dataset its task's loaders and evaluator (`peft_bench.tasks.<task>`), a
resampled score its metric (`peft_bench.metrics`). The suites' tasks are dataset configs too
(`suite_configs`).
"""

from peft_bench.config import (
    LinearHeadConfig,
    MaskRCNNHeadConfig,
    RetinaNetHeadConfig,
    UperNetHeadConfig,
)
from peft_bench.data.suites import SUITES
from peft_bench.registry import (
    DATASETS,
    HEADS,
    TASKS,
    Task,
    lazy_exports,
    register_dataset,
    register_head,
    register_task,
)
from peft_bench.tasks import suite_configs  # noqa: F401  (stores the suites' dataset configs)

# The classification datasets are those of `peft_bench.data.classification.CLASSIFICATION_DATASETS`.
CLASSIFICATION = (
    *("flowers102", "pets", "voc2007", "imagefolder", "digits", "shapes", "shapes_single", "shapes_upstream"),
    *(task.name for suite in SUITES.values() for task in suite.tasks),
)


def _register_tasks() -> None:
    """Each task with the metric that selects the model, the scorer of its outcomes
    (`peft_bench.metrics`), the outcome with one row per test sample, and its datasets; its evaluator
    and each dataset's builder are `peft_bench.tasks.<task>`'s (named as the dataset, or one for all)."""
    for task, main_metric, score, per_sample, datasets, shared in (
        ("classification", "top1", "accuracy:accuracy_scores", "top1", CLASSIFICATION, "classification_data"),
        ("detection", "ap50", "voc_map:voc_scores", "positives", ("voc", "shapes_det"), None),
        ("instance", "ap_mask", "coco:instance_scores", "box.positives", ("coco", "shapes_inst"), None),
        ("semantic", "miou", "miou:miou_scores", "intersection", ("ade20k", "shapes_seg"), None),
    ):
        module = f"peft_bench.tasks.{task}"
        register_task(
            task,
            main_metric=main_metric,
            evaluator=f"{module}:evaluator",
            score=f"peft_bench.metrics.{score}",
            per_sample=per_sample,
        )
        for dataset in datasets:
            register_dataset(dataset, task=task)(f"{module}:{shared or dataset}")


_register_tasks()

register_head("linear", task="classification", config=LinearHeadConfig)(
    "peft_bench.models.classifier:linear_head"
)
# RetinaNet reads levels 1-3 (`peft_bench.models.retinanet.FPN_STAGES`: P3-P5); the others all four.
register_head("retinanet", task="detection", config=RetinaNetHeadConfig, stages=(1, 2, 3))(
    "peft_bench.models.retinanet:retinanet_head"
)
register_head("mask_rcnn", task="instance", config=MaskRCNNHeadConfig, stages=(0, 1, 2, 3))(
    "peft_bench.models.mask_rcnn:mask_rcnn_head"
)
register_head("cascade_mask_rcnn", task="instance", config=MaskRCNNHeadConfig, stages=(0, 1, 2, 3))(
    "peft_bench.models.mask_rcnn:cascade_mask_rcnn_head"
)
register_head("upernet", task="semantic", config=UperNetHeadConfig, stages=(0, 1, 2, 3))(
    "peft_bench.models.segmenter:upernet_head"
)

__getattr__ = lazy_exports(__name__, {"peft_bench.engine.contract": ("Evaluator",)})

__all__ = [
    "DATASETS",
    "HEADS",
    "TASKS",
    "Evaluator",
    "Task",
    "register_dataset",
    "register_head",
    "register_task",
]
