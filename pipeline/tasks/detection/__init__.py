"""Object detection: a box table in, FCOS on a timm backbone, WBF over views, folds and models, box strings out."""

from pipeline.tasks.detection.task import DetectionTask

__all__ = ["DetectionTask"]
