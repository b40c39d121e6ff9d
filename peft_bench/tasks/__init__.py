"""The tasks, their datasets and heads (importing a module registers them)."""

from peft_bench.tasks import classification, detection, instance, semantic  # noqa: F401
from peft_bench.tasks.base import (
    DATASETS,
    HEADS,
    TASKS,
    Evaluator,
    Task,
    register_dataset,
    register_head,
    register_task,
)

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
