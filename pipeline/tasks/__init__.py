"""Tasks by name: what is learned (data, model, loss, outputs). The loop, folds and files are shared.

Each task is a package holding its Task class and every module only it uses; pipeline/engine/task.py is the
contract they all fulfil, and its registry (TASKS) is filled here, so a stage that imports pipeline.tasks can
build any task by name.
"""

from pipeline.engine.task import TASKS, Demo, Task, build_task
from pipeline.tasks.base import ClassProbabilities
from pipeline.tasks.classification import ClassificationTask
from pipeline.tasks.detection import DetectionTask
from pipeline.tasks.segmentation import SegmentationTask
from pipeline.tasks.sequence import SequenceTask

TASKS.update(classification=ClassificationTask, detection=DetectionTask, sequence=SequenceTask,
             segmentation=SegmentationTask)

__all__ = ["TASKS", "ClassProbabilities", "Demo", "Task", "build_task"]
