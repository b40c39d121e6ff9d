"""Task registry: `data.task` selects one (each dataset config sets it)."""

from peft_bench.errors import UserError
from peft_bench.tasks.base import Task, TaskData, TaskModel
from peft_bench.tasks.classification import ClassificationTask

TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}


def build_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"Unknown task {name!r} (data.task). Known tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]()


__all__ = ["TASKS", "Task", "TaskData", "TaskModel", "build_task"]
