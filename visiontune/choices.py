"""The names a user can choose from, in one torch-free place that the CLI and configs share.

Importing this module costs nothing, so ``visiontune --help`` lists the choices without loading
torch; the modules that implement each choice check at import time that they cover it exactly.
"""

from __future__ import annotations

__all__ = [
    "BALANCE_MODES",
    "DEVICES",
    "EXPORT_FORMATS",
    "QUANTIZE_MODES",
    "HEAD_SOLVERS",
    "PRECISIONS",
    "PREDICTION_FORMATS",
    "STRATEGIES",
    "STRATEGY_CHOICES",
    "TTA_MODES",
]

# Fine-tuning strategies (``visiontune.strategies``), and ``auto``: the advisor picks one.
STRATEGIES = ("head", "partial", "full", "gradual")
STRATEGY_CHOICES = (*STRATEGIES, "auto")
# ``--strategy head``: a full-batch L-BFGS linear probe, or AdamW mini-batches.
HEAD_SOLVERS = ("lbfgs", "adamw")
# ``--balance``: none, a class-weighted loss, or class-balanced draws.
BALANCE_MODES = ("none", "weights", "sampler")
# ``--device``: ``cuda:N`` is accepted too.
DEVICES = ("auto", "cpu", "cuda")
# Test-time augmentation views (``visiontune.prediction.tta``).
TTA_MODES = ("none", "flip", "5crop", "10crop")
# ``visiontune export --format``.
EXPORT_FORMATS = ("onnx", "torchscript")
QUANTIZE_MODES = ("none", "int8")  # export --quantize: int8 is ONNX only, gated
# ``--precision`` (``visiontune.engine.precision``): auto measures whether bf16 pays here.
PRECISIONS = ("auto", "fp32", "bf16")
# ``visiontune predict --format``.
PREDICTION_FORMATS = ("table", "csv", "json")
