"""``export``: a saved run to a self-contained ONNX or TorchScript file, checked against it."""

from __future__ import annotations

from pathlib import Path

from .. import _runtime
from ..exporting.exporter import check_format, default_export_name, export_model
from ..exporting.parity import MAX_IMAGES, TOLERANCE, ExportReport
from ..formats.bundle import load_bundle

__all__ = ["ExportReport", "export"]


def export(
    run: str | Path,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    tolerance: float = TOLERANCE,
    max_images: int = MAX_IMAGES,
) -> ExportReport:
    """Export the model of ``run`` to ``out`` (default ``RUN/model.onnx`` or
    ``RUN/model.torchscript.pt``; a folder gets that name inside it).

    The file takes uint8 RGB ``(N, 3, size, size)`` crops and returns class probabilities; class
    names, preprocessing and versions are embedded. Before it is written, it is run on up to
    ``max_images`` images of the run's data and compared with the run's own model: a maximum
    absolute difference of probabilities above ``tolerance`` raises ``ExportError`` and leaves
    no file behind.

    >>> report = visiontune.export("runs/poses", format="onnx")        # doctest: +SKIP
    >>> report.max_abs_diff < report.tolerance                          # doctest: +SKIP
    True
    """
    check_format(format)
    _runtime.tune_allocator()
    model, labels, config = load_bundle(run)
    target = Path(run) / default_export_name(format) if out is None else Path(out)
    if target.is_dir():
        target = target / default_export_name(format)
    data = (config.get("training") or {}).get("data")
    return export_model(
        model,
        labels,
        format=format,
        out=target,
        data=data,
        tolerance=tolerance,
        max_images=max_images,
    )
