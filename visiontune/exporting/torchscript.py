"""TorchScript export (``torch.jit.trace``), parity-checked, with metadata as an extra file.

Traced rather than scripted: tracing records the ops actually run, which works for every timm
architecture, while ``torch.jit.script`` rejects much of timm's Python. PyTorch 2.14 marks
TorchScript deprecated (``torch.jit.load`` warns "switch to torch.export"); it is offered for
runtimes that still load it (LibTorch, older mobile stacks). ONNX is the recommended format.

The archive holds ``visiontune.json`` (``ExportMetadata``) beside the code and weights;
``load_torchscript`` reads it back and refuses weights that changed since export.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .._io import atomic_write
from ..errors import BundleError
from ..formats.export_metadata import ExportMetadata, state_digest

__all__ = ["METADATA_FILE", "export_torchscript", "load_torchscript"]

METADATA_FILE = "visiontune.json"
HEAD_WEIGHT = "classifier.head.fc.weight"  # ProbabilityModel -> Classifier -> Head: one row a class


@contextmanager
def _quiet():
    """Silence TorchScript's deprecation notice and tracer notes; the parity check is the judge."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def torchscript_digest(module: torch.nn.Module) -> str:
    return state_digest(module.state_dict())


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ExportMetadata]:
    """``(module in eval mode, metadata)``; refuses a truncated or damaged archive, one without
    visiontune metadata, one from a newer format, or one whose weights changed since export."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no such TorchScript file: {path}")
    extra = {METADATA_FILE: ""}
    try:
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(
            f"{path} is not a readable TorchScript archive (truncated or damaged?): {first}"
        ) from exc
    raw = extra[METADATA_FILE]
    if not raw:
        raise BundleError(
            f"{path} has no {METADATA_FILE}: it was not written by `visiontune export`"
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: {METADATA_FILE} is not valid JSON") from exc
    meta = ExportMetadata.from_dict(data, source=str(path))
    if torchscript_digest(module) != meta.weights_sha256:
        raise BundleError(
            f"{path}: its weights do not match the checksum recorded at export; the "
            "file was modified or damaged"
        )
    head = module.state_dict().get(HEAD_WEIGHT)
    if head is not None and head.ndim == 2 and head.shape[0] != len(meta.classes):
        raise BundleError(
            f"{path}: its metadata lists {len(meta.classes)} classes but the model outputs "
            f"{head.shape[0]} probabilities; the metadata was edited or damaged"
        )
    return module.eval(), meta


def export_torchscript(module: torch.nn.Module, meta: ExportMetadata, out: Path, *, check) -> None:
    """Trace ``module`` (a ``ProbabilityModel``) and write it to ``out`` with ``meta`` inside.

    ``check(run)`` gets a function running the written archive and raises on disagreement; the
    archive is renamed onto ``out`` only after it passed.
    """
    example = torch.zeros(2, 3, meta.preprocess.size, meta.preprocess.size, dtype=torch.uint8)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
    meta = meta.sealed(torchscript_digest(traced))
    extra = {METADATA_FILE: json.dumps(meta.to_dict(), indent=2)}

    def write_and_check(tmp: str) -> None:
        with _quiet():
            torch.jit.save(traced, tmp, _extra_files=extra)
        loaded, _ = load_torchscript(tmp)

        def run(images):
            with torch.inference_mode():
                return loaded(torch.from_numpy(images)).numpy()

        check(run)

    atomic_write(out, write_and_check)
