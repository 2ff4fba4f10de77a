"""Image classification: timm backbones, albumentations, mixup/cutmix, label or probability submissions."""

from pipeline.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
