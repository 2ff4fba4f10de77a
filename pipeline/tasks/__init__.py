"""Tasks by name: what is learned (data, model, loss, outputs). The loop, folds and files are shared."""

from pipeline.tasks.base import Task
from pipeline.tasks.classification import ClassificationTask
from pipeline.tasks.detection import DetectionTask
from pipeline.tasks.sequence import SequenceTask

TASKS: dict[str, type] = {"classification": ClassificationTask, "detection": DetectionTask, "sequence": SequenceTask}

__all__ = ["TASKS", "Task", "build_task"]


def build_task(cfg, classes: list) -> Task:
    return TASKS[cfg.task](cfg, classes)
