"""Sequences: series (long tables) or texts, with 1D-CNN, GRU/LSTM or transformer models."""

from pipeline.tasks.sequence.task import SequenceTask

__all__ = ["SequenceTask"]
