"""Tasks by name: what is learned (data, model, loss, outputs). The loop, folds and files are shared.

Each task is a package holding its Task class and every module only it uses; pipeline/tasks/base.py is the
contract they all fulfil.
"""

from pipeline.config import Config
from pipeline.tasks.base import ClassProbabilities, Demo, Task
from pipeline.tasks.classification import ClassificationTask
from pipeline.tasks.detection import DetectionTask
from pipeline.tasks.sequence import SequenceTask

TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "detection": DetectionTask,
                                "sequence": SequenceTask}

__all__ = ["TASKS", "ClassProbabilities", "Demo", "Task", "build_task"]


def build_task(cfg: Config, classes: list) -> Task:
    return TASKS[cfg.task](cfg, classes)
