"""``load``, ``evaluate``, ``predict``: a saved run on new images."""

from __future__ import annotations

from pathlib import Path

from .. import _runtime
from ..prediction.predictor import TrainedModel


def load(run: str | Path, *, device: str = "cpu") -> TrainedModel:
    """Load a saved run folder (``model.safetensors`` + ``config.json``) for prediction."""
    _runtime.tune_allocator()
    return TrainedModel.from_run(run, device=device)


def evaluate(run: str | Path, folder: str | Path, *, batch_size: int = 32, workers: int | None = None,
             progress: bool = False) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on ``folder/<class>/...``."""
    return load(run).evaluate(folder, batch_size=batch_size, workers=workers, progress=progress)


def predict(run: str | Path, paths, *, top_k: int = 1, batch_size: int = 32, workers: int | None = None,
            progress: bool = False) -> list[dict]:
    """Top-k classes with probabilities for each image file (folders are expanded)."""
    return load(run).predict(paths, top_k=top_k, batch_size=batch_size, workers=workers, progress=progress)
