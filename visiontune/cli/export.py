"""`visiontune export`: a run to a self-contained ONNX or TorchScript file, parity-checked."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..choices import EXPORT_FORMATS, QUANTIZE_MODES

DESCRIPTION = """\
Export the model of RUN to one file that runs without visiontune's training code: ONNX (for
onnxruntime, and `visiontune predict MODEL.onnx`) or TorchScript (LibTorch; deprecated upstream).

The file takes uint8 RGB images of shape (batch, 3, size, size), already resized (short side to
size/crop_pct) and centre-cropped; normalisation happens inside. It outputs softmax
probabilities over the classes. Class names, preprocessing (size, crop_pct, mean, std,
interpolation), visiontune version and export format version are embedded (ONNX metadata_props;
TorchScript extra file visiontune.json), with a checksum of the weights.

Before the file is written, it is run on images of the run's data folder (generated images, with
a warning, when that folder is gone) and compared with the run's own model; if any probability
differs by more than --tolerance, the export fails and nothing is written."""

EPILOG = """\
examples:
  visiontune export runs/poses                                 # -> runs/poses/model.onnx
  visiontune export runs/poses --format torchscript --out poses.pt
  visiontune export runs/poses --quantize int8                 # -> runs/poses/model.int8.onnx
  visiontune predict runs/poses/model.onnx new_photos/ --top-k 3   # run it with onnxruntime
"""


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a run to ONNX or TorchScript, checked against it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN", help="run folder written by `visiontune train`")
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="file format (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        metavar="PATH",
        default=None,
        help="output file, or a folder to put model.onnx / model.torchscript.pt in "
        "(default: inside RUN)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest allowed difference of any probability from the run's model (default: 1e-4)",
    )
    p.add_argument(
        "--parity-images",
        type=int,
        default=None,
        metavar="N",
        help="images of the run's data to check on (default: 16)",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help="int8: quantize the checked ONNX graph's convolutions (onnxruntime, static,\n"
        "calibrated on the run's training images, per-channel weights) into\n"
        "RUN/model.int8.onnx - written only if it keeps validation accuracy within\n"
        "--max-drop and runs faster than the fp32 file on this machine (default: none)",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="POINTS",
        help="with --quantize int8: validation accuracy points (and %% of changed top-1\n"
        "classes) it may cost (default: 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from ..api import export
    from ..exporting.parity import ParityWarning

    options = {
        k: v
        for k, v in (
            ("tolerance", args.tolerance),
            ("max_images", args.parity_images),
            ("max_drop", args.max_drop),
        )
        if v is not None
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export(
            args.run_dir, format=args.format, out=args.out, quantize=args.quantize, **options
        )
    for w in caught:
        if issubclass(w.category, ParityWarning):
            print(f"visiontune: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if args.json:
        print(json.dumps({**report.__dict__, "path": str(report.path)}, indent=2))
    else:
        print(report.summary())
    return 0


def register(sub) -> None:
    _add_export(sub)
