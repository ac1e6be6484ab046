"""``TrainedModel``: a loaded bundle that predicts on image files and evaluates on folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..backbones import Classifier
from ..data.folder import IMAGE_EXTENSIONS, Sample, list_images, scan_class_folder
from ..data.loader import ImageDataset, SkipLog, default_workers, make_loader
from ..data.transforms import decode_size, eval_transform
from ..engine.loop import LoopConfig, run_inference
from ..errors import DataError
from ..evaluation.metrics import classification_metrics
from ..export.bundle import load_bundle
from ..specs import LabelMap

__all__ = ["TrainedModel", "expand_image_paths"]


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded recursively to their image files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += list_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"no such file or folder: {path}")
    if not found:
        raise DataError("no image files found in: " + ", ".join(str(p) for p in paths)
                        + f" (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


class TrainedModel:
    """A classifier with its labels and preprocessing. Build with ``visiontune.load(run)``.

    >>> model = visiontune.load("runs/my-run")                       # doctest: +SKIP
    >>> model.predict(["photo.jpg"], top_k=3)[0]["top"][0]            # doctest: +SKIP
    {'class': 'tree', 'probability': 0.97}
    """

    def __init__(self, model: Classifier, labels: LabelMap, *, config: dict | None = None,
                 device: str | torch.device = "cpu", run_dir: Path | None = None):
        self.model = model.eval().to(device)
        self.labels = labels
        self.config = config or {}
        self.device = torch.device(device)
        self.run_dir = run_dir

    @classmethod
    def from_run(cls, run: str | Path, *, device: str | torch.device = "cpu") -> TrainedModel:
        model, labels, config = load_bundle(run)
        return cls(model, labels, config=config, device=device, run_dir=Path(run))

    @property
    def preprocess(self):
        return self.model.backbone.preprocess

    def __repr__(self) -> str:
        return (f"TrainedModel(backbone={self.model.backbone.name!r}, classes={list(self.labels.names)}, "
                f"run_dir={str(self.run_dir) if self.run_dir else None!r})")

    def _probabilities(self, samples: list[Sample], *, batch_size: int, workers: int | None,
                       progress: bool, skips: SkipLog) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities for the decodable samples, and their indices into ``samples``."""
        dataset = ImageDataset(samples, eval_transform(self.preprocess),
                               decode_size=decode_size(self.preprocess))
        workers = default_workers() if workers is None else workers
        workers = min(workers, max(0, len(samples) // batch_size))  # tiny jobs: no process start-up
        loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers)
        cfg = LoopConfig(epochs=1, device=self.device, progress=progress)
        logits, _, indices = run_inference(self.model, loader, cfg=cfg, desc="predict",
                                           on_batch=lambda b: skips.record(b, samples))
        probs = torch.softmax(logits, dim=1).numpy() if len(indices) else np.zeros((0, len(self.labels)))
        return probs, indices.numpy()

    def predict(self, paths: Sequence[str | Path], *, top_k: int = 1, batch_size: int = 32,
                workers: int | None = None, progress: bool = False) -> list[dict]:
        """One dict per input image: ``path``, ``top`` (k best classes with probabilities), or
        ``error`` for a file that could not be decoded."""
        files = expand_image_paths(paths)
        samples = [Sample(p, -1) for p in files]
        skips = SkipLog()
        probs, indices = self._probabilities(samples, batch_size=batch_size, workers=workers,
                                             progress=progress, skips=skips)
        k = max(1, min(top_k, len(self.labels)))
        by_index = dict(zip(indices.tolist(), probs, strict=False))
        results = []
        for i, path in enumerate(files):
            if i not in by_index:
                results.append({"path": str(path), "error": skips.skipped.get(str(path), "unreadable")})
                continue
            order = np.argsort(-by_index[i])[:k]
            results.append({"path": str(path), "top": [
                {"class": self.labels.names[j], "probability": float(by_index[i][j])} for j in order]})
        return results

    def evaluate(self, folder: str | Path, *, batch_size: int = 32, workers: int | None = None,
                 progress: bool = False) -> dict:
        """Metrics on ``folder/<class>/<images>``; class folders must be among the model's classes."""
        _, samples = scan_class_folder(Path(folder), self.labels)
        return self.evaluate_samples(samples, batch_size=batch_size, workers=workers, progress=progress)

    def evaluate_samples(self, samples: list[Sample], *, batch_size: int = 32,
                         workers: int | None = None, progress: bool = False) -> dict:
        skips = SkipLog()
        probs, indices = self._probabilities(samples, batch_size=batch_size, workers=workers,
                                             progress=progress, skips=skips)
        y_true = [samples[i].label for i in indices]
        metrics = classification_metrics(y_true, probs.argmax(1), self.labels.names, probs)
        metrics["skipped"] = skips.to_dict()["skipped"]
        return metrics
