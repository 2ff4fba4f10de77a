"""Kaggle competition pipeline: prepare folds -> train K folds -> predict with TTA -> ensemble -> submit."""

import os

# Albumentations pings PyPI for a newer release on import; offline machines and Kaggle notebooks stall on it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
