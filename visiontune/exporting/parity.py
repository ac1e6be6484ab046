"""Export-time check: the exported model must give the eager model's probabilities.

Both see the same decoded images: the run's own ``TrainedModel`` through its eval transform
(float, normalised), the export through its documented input (uint8 crop, normalised inside). So
the check covers the graph, the embedded normalisation and the dynamic batch axis at once.

Tolerance: 1e-4 on probabilities. Float32 kernels that differ only in summation order (oneDNN
in eager PyTorch, MLAS in onnxruntime, fused BatchNorm) measured at most ~1e-6 here on
EfficientNet-Lite0 and a ResNet; a real export fault (normalisation missing or doubled,
BatchNorm in training mode, dropout left on, a wrong op) moves probabilities by 1e-2 or more. 1e-4
sits two orders of magnitude from both, and can only flip a top-1 between two classes whose
probabilities are within 1e-4 of each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.folder import list_images
from ..data.images import ImageDecodeError, decode_image
from ..data.manifest import is_manifest, manifest_samples
from ..data.transforms import decode_size, eval_geometry
from ..errors import DataError, ExportError, VisiontuneWarning
from ..prediction.predictor import TrainedModel
from ..specs import PreprocessSpec

__all__ = [
    "MAX_IMAGES",
    "TOLERANCE",
    "ExportReport",
    "ParityInputs",
    "ParityWarning",
    "check_parity",
    "check_unknown_parity",
    "parity_inputs",
    "pick_evenly",
    "reference_outputs",
]

TOLERANCE = 1e-4
MAX_IMAGES = 16


class ParityWarning(VisiontuneWarning):
    """The check ran on generated images because the run's data could not be read."""


@dataclass(frozen=True)
class ParityInputs:
    images: torch.Tensor  # uint8 (N, 3, size, size): what the exported model is fed
    decoded: tuple  # the decoded images themselves: what the run's TrainedModel is fed
    source: str  # where they came from, for the report


@dataclass(frozen=True)
class ExportReport:
    """What ``visiontune.export`` wrote and how closely it matches the eager model."""

    path: Path
    format: str
    max_abs_diff: float  # of probabilities, over every image and class
    tolerance: float
    images: int
    inputs: str
    top1_agreement: float  # fraction of images with the same top-1 class
    size_bytes: int
    max_unknown_diff: float | None = None  # of the unknown score, when the export carries it
    quantization: dict | None = None  # an int8 file: its gate (``exporting.quantize``)

    def summary(self) -> str:
        text = (
            f"wrote {self.path} ({self.format}, {self.size_bytes / 1e6:.1f} MB); parity with the "
            f"eager model on {self.inputs}: max |dp| = {self.max_abs_diff:.2e} (tolerance "
            f"{self.tolerance:.0e}), same top-1 on {self.top1_agreement:.0%}"
        )
        q = self.quantization
        if q:
            text += (
                f"; int8 (the fp32 graph's parity above): validation accuracy "
                f"{100 * q['fp32_accuracy']:.2f} % -> {100 * q['int8_accuracy']:.2f} % on "
                f"{q['images']} images, same top-1 on {q['agreement']:.1%}, "
                f"{q['speedup']:.2f}x the fp32 file's speed here ({', '.join(q['instructions'])})"
            )
            if q["flagged"][0] is not None:
                text += (
                    f"; flagged unknown on validation: fp32 {q['flagged'][0]:.1%}, "
                    f"int8 {q['flagged'][1]:.1%}"
                )
        return text


def pick_evenly(items: list, count: int) -> list:
    """Up to ``count`` items spread over the sorted list, so every class folder is likely hit."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _as_inputs(images: list, spec: PreprocessSpec, source: str) -> ParityInputs:
    geometry = eval_geometry(spec)
    return ParityInputs(
        torch.stack([geometry(im).as_subclass(torch.Tensor) for im in images]),
        tuple(images),
        source,
    )


def _data_images(data: Path) -> list[Path]:
    """The images of a data folder, or those a manifest lists (none if it is unreadable)."""
    if data.is_dir():
        return list_images(data)
    try:
        parts = manifest_samples(data)[0]
    except DataError:
        return []
    return sorted({s.path for part in parts.values() for s in part})


def _real_inputs(data: Path, spec: PreprocessSpec, max_images: int) -> ParityInputs | None:
    decoded = []
    for path in pick_evenly(_data_images(data), max_images * 2):  # spares, for undecodable files
        try:
            decoded.append(decode_image(path, min_short_side=decode_size(spec)).image)
        except ImageDecodeError:
            continue
        if len(decoded) == max_images:
            break
    return _as_inputs(decoded, spec, f"{len(decoded)} images from {data}") if decoded else None


def _generated_inputs(spec: PreprocessSpec, count: int) -> ParityInputs:
    """Seeded noise over colour gradients, larger than the crop, through the same transforms."""
    rng = np.random.default_rng(0)
    h, w = spec.resize_size + 7, spec.resize_size + 31
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0, 1, h)[:, None, None]
    images = []
    for _ in range(count):
        pixels = 255 * ramp * rng.uniform(0, 1, 3) + rng.normal(0, 40, (h, w, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return _as_inputs(images, spec, f"{count} generated images")


def parity_inputs(
    data: str | Path | None, spec: PreprocessSpec, *, max_images: int = MAX_IMAGES
) -> ParityInputs:
    """Real images from the run's data folder; generated ones, with a ``ParityWarning``, when it
    is gone or holds nothing decodable."""
    if data is not None and (Path(data).is_dir() or is_manifest(data) and Path(data).is_file()):
        found = _real_inputs(Path(data), spec, max_images)
        if found is not None:
            return found
        reason = f"no decodable images in the run's data folder {data}"
    else:
        reason = (
            f"the run's data folder {data} is gone" if data else "the run records no data folder"
        )
    warnings.warn(
        f"{reason}; checking the export on generated images instead", ParityWarning, stacklevel=3
    )
    return _generated_inputs(spec, max_images)


def reference_outputs(
    predictor: TrainedModel, inputs: ParityInputs
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the export must reproduce: the run's predictor's probabilities (and unknown
    scores, where it has them) on the same decoded images."""
    out = predictor.decoded_outputs(inputs.decoded)
    return out.probs, out.unknown


def check_unknown_parity(
    eager: np.ndarray, run_exported: Callable[[np.ndarray], np.ndarray], inputs: ParityInputs
) -> float:
    """The exported unknown score against the eager one: at most ``TOLERANCE`` apart relative to
    its size (a far-away image scores in the hundreds). Returns the max relative difference."""
    got = np.asarray(run_exported(inputs.images.numpy()), dtype=np.float64)
    if got.shape != eager.shape:
        raise ExportError(f"the export's unknown score has shape {got.shape}, not {eager.shape}")
    diff = float((np.abs(got - eager) / np.maximum(1.0, np.abs(eager))).max())
    if not diff <= 10 * TOLERANCE:  # float32 sums over 1280x1280 products: 1e-3 relative
        raise ExportError(
            f"the export's unknown score differs from the eager model's by {diff:.2e} "
            f"(relative) on {inputs.source}; nothing was written"
        )
    return diff


def check_parity(
    eager: np.ndarray,
    run_exported: Callable[[np.ndarray], np.ndarray],
    inputs: ParityInputs,
    *,
    tolerance: float,
    what: str,
) -> tuple[float, float]:
    """Run the export on the whole batch and on the first image alone (a batch size other than
    the one it was traced with, so a batch axis frozen at export shows up here); raise
    ``ExportError`` beyond ``tolerance``. Returns ``(max |dp|, top-1 agreement)``."""
    images = inputs.images.numpy()
    batch = np.asarray(run_exported(images))
    single = np.asarray(run_exported(images[:1]))
    if batch.shape != eager.shape or single.shape != eager[:1].shape:
        raise ExportError(
            f"{what} returned shapes {batch.shape} and {single.shape}; expected "
            f"{eager.shape} and {eager[:1].shape}"
        )
    diff = float(max(np.abs(batch - eager).max(), np.abs(single - eager[:1]).max()))
    agreement = float((batch.argmax(1) == eager.argmax(1)).mean())
    if not diff <= tolerance:  # NaN fails too
        raise ExportError(
            f"{what} differs from the eager model by {diff:.2e} in probability on "
            f"{inputs.source} (tolerance {tolerance:.0e}); nothing was written"
        )
    return diff, agreement
