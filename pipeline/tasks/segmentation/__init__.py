"""Semantic segmentation: masks in (RLE or mask images), a segmentation_models_pytorch network on a timm encoder,
decision rules fitted on OOF, RLE out."""

from pipeline.tasks.segmentation.task import SegmentationTask

__all__ = ["SegmentationTask"]
