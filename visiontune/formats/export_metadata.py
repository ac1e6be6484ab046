"""What an exported model carries about itself: classes, preprocessing, versions, a weights hash.

The same fields go into both formats: ONNX ``metadata_props`` (string key -> string value, JSON for
the structured ones) and a ``visiontune.json`` extra file in a TorchScript archive. This module
needs neither torch nor the model code, so a deployment that only runs ONNX can read it.

Format version 1, the contract of an exported file:

- input ``images``: ``uint8`` RGB, ``(batch, 3, size, size)``, the image resized (short side to
  ``size / crop_pct``, ``interpolation``, antialiased) and centre-cropped to ``size``; the batch
  axis is dynamic. Scaling to [0, 1] and normalising with ``mean``/``std`` happen inside.
- output ``probabilities``: ``float32 (batch, classes)``, softmax over ``classes`` in order; for
  a multi-label model (``thresholds`` present), each class's own sigmoid, and a class is
  predicted where its probability reaches its threshold.

Two checksums: ``weights_sha256`` over the weight tensors, and ``content_sha256`` over that digest
together with ``classes`` and ``preprocess``, the metadata that gives the outputs their meaning.
Reordering the class list (which would silently relabel every prediction) or editing the crop is
refused at load time like a changed weight. Files exported before ``content_sha256`` existed still
load; for them only the class count is checked against the output shape (``onnx_reader``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..errors import BundleError
from ..specs import LabelMap, PreprocessSpec
from .validation import check_classes, check_format_version, check_preprocess, meaning_digest

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "MULTI_LABEL_OUTPUT",
    "OUTPUT_DESCRIPTION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "UNKNOWN_NAME",
    "ExportMetadata",
    "state_digest",
    "weights_digest",
]

EXPORT_FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
UNKNOWN_NAME = "unknown_score"  # the second output of an export that rejects unknown images
INPUT_DESCRIPTION = (
    "uint8 RGB (batch, 3, size, size): resized to size/crop_pct on the short side "
    "and centre-cropped to size; normalised inside the model"
)
OUTPUT_DESCRIPTION = "float32 (batch, classes): softmax probabilities in the order of 'classes'"
MULTI_LABEL_OUTPUT = (
    "float32 (batch, classes): each class's sigmoid probability in the order of 'classes'; a "
    "class is present where it reaches its entry of 'thresholds'"
)

# the rest are plain strings
_JSON_FIELDS = (
    "format_version",
    "classes",
    "preprocess",
    "temperature",
    "unknown",
    "quantization",
    "thresholds",
)
_REQUIRED = ("format_version", "classes", "preprocess", "weights_sha256")


@dataclass(frozen=True)
class ExportMetadata:
    """The self-description embedded in an exported model file."""

    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    backbone: str
    visiontune_version: str
    weights_sha256: str = ""  # filled in once the exported weights exist; see ``weights_digest``
    content_sha256: str = ""  # weights_sha256 + classes + preprocess; see ``sealed``
    format_version: int = EXPORT_FORMAT_VERSION
    input: str = field(default=INPUT_DESCRIPTION)
    output: str = field(default=OUTPUT_DESCRIPTION)
    temperature: float = 1.0  # divides the logits inside the graph (calibration)
    # {"output": UNKNOWN_NAME, "threshold": 1.0, "rate": ...} when the graph scores unknown images
    unknown: dict | None = None
    # {"type": "int8-static-qdq", ...the gate's measurements} for a quantized export
    quantization: dict | None = None
    # A multi-label model's per-class probability thresholds (its outputs are sigmoids)
    thresholds: tuple[float, ...] | None = None

    @property
    def labels(self) -> LabelMap:
        return LabelMap(self.classes)

    def expected_content_sha256(self) -> str:
        """The digest binding ``classes`` and ``preprocess`` to ``weights_sha256``."""
        meaning = {
            "classes": list(self.classes),
            "preprocess": self.preprocess.to_dict(),
            "weights_sha256": self.weights_sha256,
        }
        if self.temperature != 1.0 or self.unknown is not None:  # older exports had neither
            meaning["trust"] = {"temperature": self.temperature, "unknown": self.unknown}
        if self.quantization is not None:
            meaning["quantization"] = self.quantization
        if self.thresholds is not None:
            meaning["thresholds"] = list(self.thresholds)
        return meaning_digest(meaning)

    def sealed(self, weights_sha256: str) -> ExportMetadata:
        """This metadata for weights of digest ``weights_sha256``, with its ``content_sha256``."""
        meta = replace(self, weights_sha256=weights_sha256)
        return replace(meta, content_sha256=meta.expected_content_sha256())

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "visiontune_version": self.visiontune_version,
            "backbone": self.backbone,
            "classes": list(self.classes),
            "preprocess": self.preprocess.to_dict(),
            "input": self.input,
            "output": self.output,
            "weights_sha256": self.weights_sha256,
            "content_sha256": self.content_sha256,
            "temperature": self.temperature,
            **({"unknown": self.unknown} if self.unknown is not None else {}),
            **({"quantization": self.quantization} if self.quantization is not None else {}),
            **({"thresholds": list(self.thresholds)} if self.thresholds is not None else {}),
        }

    def to_strings(self) -> dict[str, str]:
        """String values for ONNX ``metadata_props``: JSON where the value is structured."""
        return {
            k: json.dumps(v) if k in _JSON_FIELDS else str(v) for k, v in self.to_dict().items()
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str) -> ExportMetadata:
        """Validate ``data`` read from ``source``: a missing or out-of-bounds field, a newer
        format, or classes/preprocessing that do not match ``content_sha256`` is an error."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: its metadata is not a JSON object")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise BundleError(
                f"{source} is not a visiontune export: no {', '.join(missing)} in its metadata"
            )
        version = check_format_version(data["format_version"], source)
        if version > EXPORT_FORMAT_VERSION:
            raise BundleError(
                f"{source} was exported in format {version}; this visiontune reads up to "
                f"{EXPORT_FORMAT_VERSION}. Upgrade visiontune to load it."
            )
        meta = cls(
            classes=check_classes(data["classes"], source).names,
            preprocess=check_preprocess(data["preprocess"], source),
            backbone=str(data.get("backbone", "")),
            visiontune_version=str(data.get("visiontune_version", "")),
            weights_sha256=str(data["weights_sha256"]),
            content_sha256=str(data.get("content_sha256", "")),
            format_version=version,
            temperature=_temperature(data.get("temperature", 1.0), source),
            unknown=_unknown(data.get("unknown"), source),
            quantization=_quantization(data.get("quantization"), source),
            thresholds=_thresholds(data.get("thresholds"), source, len(data["classes"])),
        )
        if "content_sha256" in data and meta.content_sha256 != meta.expected_content_sha256():
            raise BundleError(
                f"{source}: its classes or preprocessing do not match the checksum recorded at "
                "export (the metadata was edited or damaged); predictions would be mislabelled, "
                "so it is refused"
            )
        return meta

    @classmethod
    def from_strings(cls, props: dict[str, str], *, source: str) -> ExportMetadata:
        """Parse ONNX ``metadata_props`` written by ``to_strings``."""
        data: dict = dict(props)
        for key in _JSON_FIELDS:
            if key in data:
                try:
                    data[key] = json.loads(data[key])
                except json.JSONDecodeError as exc:
                    raise BundleError(
                        f"{source}: metadata field {key!r} is not valid JSON"
                    ) from exc
        return cls.from_dict(data, source=source)


def _temperature(value, source: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 < value < float("inf"):
        raise BundleError(f"{source}: metadata temperature must be a positive number")
    return float(value)


def _unknown(value, source: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("output") != UNKNOWN_NAME:
        raise BundleError(f"{source}: metadata 'unknown' must name the {UNKNOWN_NAME} output")
    return value


def _thresholds(value, source: str, classes: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == classes
    ok = ok and all(isinstance(t, int | float) and 0 < t <= 1 for t in value)
    if not ok:
        raise BundleError(f"{source}: metadata thresholds must be {classes} numbers in (0, 1]")
    return tuple(float(t) for t in value)


def _quantization(value, source: str) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise BundleError(f"{source}: metadata 'quantization' must be a JSON object")
    return value


def weights_digest(tensors: Iterable[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    """SHA-256 over ``(name, dtype, shape, raw bytes)`` of every weight, in name order.

    Checked at load time, so a file whose weights changed after export (a flipped byte that still
    parses) is refused instead of silently predicting something else. Hashing values rather
    than the file keeps it independent of how protobuf or zip lay the bytes out.
    """
    digest = hashlib.sha256()
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        digest.update(f"{name}|{dtype}|{','.join(map(str, shape))}|{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def state_digest(state) -> str:
    """``weights_digest`` of a state dict (name -> torch tensor): every tensor's name, dtype,
    shape and bytes. The one digest of tensors: bundles, their rejection statistics and
    TorchScript exports."""
    import torch  # the ONNX reader, which imports this module, needs no torch

    def raw(t):
        return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()

    return weights_digest((name, str(t.dtype), tuple(t.shape), raw(t)) for name, t in state.items())
