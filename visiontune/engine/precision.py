"""Reduced precision: which work runs under ``torch.autocast``, in which dtype, and why.

``--precision fp32|bf16|auto`` (``choices.PRECISIONS``) resolves, once per run, to a
``Precision``: one dtype for inference (feature and activation extraction, validation, the
trust pass, prediction) and one for training steps. ``bf16`` is both; ``fp32`` is neither.

``auto`` is decided by measurement, not by assumption:
- **CUDA**: bf16 where the GPU supports it, else fp16, for both (mixed-precision training is the
  standard there and what visiontune has always done on a GPU).
- **CPU**: bf16 for inference only where the processor has native bf16 kernels (oneDNN's check)
  *and* a one-time timing on this machine finds them faster (``bf16_speedup``, cached per
  machine and torch version); training stays fp32. What grounds the split is
  ``benchmarks/precision.py`` (BENCHMARKS.md "Precision"): TEST accuracy in fp32 and bf16 over
  several seeds on three datasets.

The resolved ``Precision`` is part of the run's bundle (``config.json`` ``precision``): a model
predicts in the precision it was validated and calibrated in, and a feature cache keeps the
precision in its key, so bf16 features are never read for an fp32 run or the reverse.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write_text
from .._paths import default_cache_dir
from .._runtime import cpu_info
from ..choices import PRECISIONS

__all__ = ["DTYPES", "Precision", "autocast", "bf16_speedup", "native_bf16", "resolve_precision"]

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much to be worth its rounding
_CHECK_FILE = "precision-check.json"


@dataclass(frozen=True)
class Precision:
    """The dtype names (``DTYPES``) inference and training run in, and how they were chosen."""

    inference: str = "fp32"
    training: str = "fp32"
    requested: str = "fp32"
    reason: str = "fp32 asked for"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> Precision:
        """A bundle's record; one written before precisions existed ran in fp32."""
        if not values:
            return cls(reason="the run predates --precision: fp32")
        return cls(**{k: values[k] for k in ("inference", "training", "requested", "reason")})


def autocast(device: torch.device, dtype_name: str):
    """The autocast context for ``dtype_name`` on ``device`` (``nullcontext`` for fp32)."""
    dtype = DTYPES[dtype_name]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bf16 kernels (AVX512-BF16/AMX on a CPU, per oneDNN)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _probe_net() -> nn.Module:
    # A MobileNet-style stack (pointwise and depthwise convolutions, BatchNorm, ReLU6) close to
    # what the embedded backbones run, small enough to time in about a second.
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU6()]
    for width in (64, 128, 256):
        layers += [
            nn.Conv2d(layers[-3].out_channels, width, 1),
            nn.BatchNorm2d(width),
            nn.ReLU6(),
            nn.Conv2d(width, width, 3, 2, 1, groups=width),
            nn.BatchNorm2d(width),
            nn.ReLU6(),
        ]
    return nn.Sequential(*layers).eval()


def _time(net: nn.Module, x: torch.Tensor, dtype_name: str) -> float:
    with torch.inference_mode(), autocast(x.device, dtype_name):
        started = time.perf_counter()
        net(x)
        return time.perf_counter() - started


def _measure_speedup(rounds: int = 3) -> float:
    """fp32 time over bf16 time of ``_probe_net`` at 224 px, batch 8, alternating, median."""
    net = _probe_net().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    _time(net, x, "fp32"), _time(net, x, "bf16")  # warm-up: oneDNN builds its kernels
    ratios = sorted(_time(net, x, "fp32") / _time(net, x, "bf16") for _ in range(rounds))
    return ratios[len(ratios) // 2]


def _machine_key() -> str:
    """What the measured speed-up holds for: the processor, torch's version, its threads."""
    cpu = cpu_info("model name") or platform.processor() or platform.machine()
    return f"{cpu}|torch {torch.__version__}|{torch.get_num_threads()} threads"


_MEASURED: dict[str, float] = {}  # this process's measurements, by machine key


def bf16_speedup(cache_dir: str | Path | None = None, *, keep: bool = True) -> float:
    """How much faster bf16 inference is than fp32 on this CPU: measured once (under a
    second), then read from ``<cache>/precision-check.json`` (``keep``: written there)."""
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / _CHECK_FILE
    key = _machine_key()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), int | float):
        return float(known[key])
    if key not in _MEASURED:
        with torch.random.fork_rng(devices=[]):  # a run's seeded initialisation must not notice
            _MEASURED[key] = _measure_speedup()
    speedup = _MEASURED[key]
    if keep:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({**known, key: round(speedup, 3)}, indent=1))
        except OSError:  # a read-only cache: this process remembers it, the next measures
            pass
    return speedup


def _auto_cpu(cache_dir, keep: bool) -> Precision:
    if not native_bf16(torch.device("cpu")):
        return Precision("fp32", "fp32", "auto", "this CPU has no native bf16 kernels")
    speedup = bf16_speedup(cache_dir, keep=keep)
    if speedup < MIN_SPEEDUP:
        why = f"bf16 measured {speedup:.2f}x fp32 here, under the {MIN_SPEEDUP}x it must gain"
        return Precision("fp32", "fp32", "auto", why)
    return Precision(
        "bf16",
        "fp32",
        "auto",
        f"bf16 inference measured {speedup:.2f}x fp32 on this CPU; training stays fp32",
    )


def resolve_precision(
    requested: str,
    device: torch.device,
    *,
    cache_dir: str | Path | None = None,
    keep: bool = True,
) -> Precision:
    """The ``Precision`` that ``--precision requested`` means on ``device``; ``auto``'s speed
    check is kept in ``cache_dir`` (default: the cache folder) when ``keep``.

    >>> resolve_precision("fp32", torch.device("cpu"))
    Precision(inference='fp32', training='fp32', requested='fp32', reason='fp32 asked for')
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return Precision()
    if device.type == "cuda":
        name = "bf16" if native_bf16(device) else "fp16"
        return Precision(name, name, requested, f"{name} mixed precision on the GPU")
    if requested == "bf16":
        why = "bf16 asked for" + ("" if native_bf16(device) else " (emulated: slow on this CPU)")
        return Precision("bf16", "bf16", "bf16", why)
    return _auto_cpu(cache_dir, keep)
