"""Task registry: `data.task` selects one (each dataset config sets it).

Tasks are imported when chosen: a classification run never imports the detection stack.
"""

from __future__ import annotations

from importlib import import_module

from peft_bench.errors import UserError
from peft_bench.tasks.base import Task, TaskData, TaskModel

TASKS: dict[str, str] = {
    "classification": "peft_bench.tasks.classification:ClassificationTask",
    "detection": "peft_bench.tasks.detection:DetectionTask",
    "instance": "peft_bench.tasks.instance:InstanceSegmentationTask",
    "semantic": "peft_bench.tasks.semantic:SemanticSegmentationTask",
}


def build_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"Unknown task {name!r} (data.task). Known tasks: {', '.join(TASKS)}.")
    module, cls = TASKS[name].split(":")
    return getattr(import_module(module), cls)()


__all__ = ["TASKS", "Task", "TaskData", "TaskModel", "build_task"]
