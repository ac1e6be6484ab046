"""int8 ONNX: onnxruntime's static quantization of a checked fp32 export, kept only if it pays.

How: ``quant_pre_process`` (shape inference, graph optimisation), then ``quantize_static`` in the
QDQ format with per-channel int8 weights and uint8 activations whose ranges are calibrated
(MinMax) on the run's own training images - the images the model was fitted to, never its
validation or test split. What is quantized is the backbone's body up to its global pooling:
convolutions and the activations and residual additions between them (``QUANTIZED_OPS``), so a
tensor stays int8 from one convolution to the next. Measured on yoga (Lite0, 2 cores with VNNI
and AMX): convolutions alone ran at 0.65-0.94x the fp32 file's speed - a dequantize and a
quantize around every ReLU6 and addition - and the whole body at 1.8-1.9x. The pooled features,
the head, the softmax and the unknown score stay float32.

The gate (``Int8Gate``), measured on the run's validation split: the int8 file's accuracy may
fall at most ``max_drop`` points below the fp32 file's; at least ``MIN_AGREEMENT`` of the images
keep their top class (flips of borderline images that leave accuracy unchanged are reported,
not refused: with 162 validation images one flip is 0.6 %); and on this machine it must run at
least ``min_speedup`` times as fast as the fp32 file (int8 can be slower on CPUs). A file that
fails any of them is not written, and the error says which and by how much.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from .._io import atomic_write
from .._runtime import cpu_info
from ..errors import ExportError
from ..formats.export_metadata import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME, ExportMetadata
from ..formats.onnx_reader import onnx_digest, read_onnx, session_options
from .parity import pick_evenly

__all__ = ["MAX_DROP", "Int8Gate", "cpu_int8_instructions", "quantize_onnx", "run_crops"]

MAX_DROP = 0.5  # points of validation accuracy int8 may cost
MIN_AGREEMENT = 0.95  # below it the graph is broken, whatever the accuracy says
QUANTIZED_OPS = ["Conv", "Clip", "Relu", "Add"]
_POOLS = ("GlobalAveragePool", "ReduceMean")  # where the backbone's body ends
_SPEED_REPEATS = 5  # alternating timings of each file; the median counts
_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_int8_instructions() -> list[str]:
    """The int8-relevant instruction sets this CPU reports (onnxruntime's MLAS kernels use the
    best of them): AMX and VNNI do int8 dot products in one instruction; AVX2 alone does not."""
    flags = set((cpu_info("flags") or "").split())
    return [f for f in _INT8_FLAGS if f in flags]


@dataclass(frozen=True)
class Int8Gate:
    """What decides whether an int8 file is written: measured on the validation split."""

    fp32_accuracy: float
    int8_accuracy: float
    agreement: float  # share of validation images with the same top-1 class
    images: int
    speedup: float  # fp32 seconds / int8 seconds, same batch, this machine
    max_drop: float
    min_speedup: float = 1.0
    instructions: tuple[str, ...] = ()
    # validation images flagged unknown by (fp32, int8): reported, since the rejection
    # threshold was set on fp32 features (None: the graph has no unknown score)
    flagged: tuple[float | None, float | None] = (None, None)

    @property
    def drop(self) -> float:
        """Accuracy points lost (negative: gained)."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    def refusal(self) -> str | None:
        """Why the int8 file must not be written, or None."""
        if not self.drop <= self.max_drop:
            # In images too: on a small validation split one image is more than the budget.
            wrong = round(self.drop * self.images / 100)
            return (
                f"int8 loses {self.drop:.2f} points of validation accuracy "
                f"({100 * self.fp32_accuracy:.2f} % -> {100 * self.int8_accuracy:.2f} % on "
                f"{self.images} images: {wrong} more wrong, one image being "
                f"{100 / self.images:.2f} points; --max-drop {self.max_drop}). The fp32 .onnx "
                "file is unaffected; a larger --max-drop accepts the loss"
            )
        if not self.agreement >= MIN_AGREEMENT:
            return (
                f"int8 changes the top class of {100 * (1 - self.agreement):.2f} % of the "
                f"validation images (at most {100 * (1 - MIN_AGREEMENT):.0f} %)"
            )
        if not self.speedup >= self.min_speedup:
            found = ", ".join(self.instructions) or "none of VNNI/AMX/AVX2"
            return (
                f"int8 is not faster on this machine: {self.speedup:.2f}x the fp32 file's speed "
                f"(needed {self.min_speedup:.2f}x; int8 instructions here: {found})"
            )
        return None

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "drop_points": round(self.drop, 3),
            "instructions": list(self.instructions),
            "flagged": list(self.flagged),
        }


class _Calibration:
    """``CalibrationDataReader``: uint8 crops of training images, a batch at a time."""

    def __init__(self, images: np.ndarray, batch: int = 16):
        self._batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def _quantized_proto(fp32: Path, calibration: np.ndarray, work: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import quant_pre_process

    prepared = work / "prepared.onnx"
    try:  # symbolic shape inference fails on torch.export's graphs; onnx's own inference runs
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - an optimisation only: quantize the graph as it is
        prepared = fp32
    quantized = work / "int8.onnx"
    logging.disable(logging.WARNING)  # its advice to pre-process (done above) on the root logger
    try:
        _quantize_static(prepared, quantized, calibration)
    finally:
        logging.disable(logging.NOTSET)
    return onnx.load(str(quantized))


def _quantize_static(prepared: Path, quantized: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(quantized),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_exclude=_after_pooling(onnx.load(str(prepared))),
    )


def _after_pooling(proto: onnx.ModelProto) -> list[str]:
    """The nodes from the first global pooling on (nodes are in topological order): the head and
    the unknown score, kept float32."""
    nodes = list(proto.graph.node)
    first = next((i for i, n in enumerate(nodes) if n.op_type in _POOLS), len(nodes))
    return [n.name for n in nodes[first:] if n.name]


def _session(proto: onnx.ModelProto):
    """A session set up as ``predict``'s (``session_options``): the gate times what users get."""
    import onnxruntime as ort

    data = proto.SerializeToString()
    options = session_options()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _predict(session, images: np.ndarray, batch: int = 32, output: str = OUTPUT_NAME) -> np.ndarray:
    parts = [
        session.run([output], {INPUT_NAME: images[i : i + batch]})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts)


def _flagged(session, images: np.ndarray) -> float | None:
    """The share of ``images`` the graph's unknown score flags (above 1), None without one."""
    if UNKNOWN_NAME not in {o.name for o in session.get_outputs()}:
        return None
    return float((_predict(session, images, output=UNKNOWN_NAME) > 1.0).mean())


def _speedup(fp32, int8, images: np.ndarray) -> float:
    """fp32 time / int8 time on one batch, alternating, after a warm-up run of each."""
    batch = images[:32]
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(_SPEED_REPEATS + 1):
        for name, session in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            session.run([OUTPUT_NAME], {INPUT_NAME: batch})
            times[name].append(time.perf_counter() - start)
    return float(np.median(times["fp32"][1:]) / np.median(times["int8"][1:]))


def measure_gate(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    validation: tuple[np.ndarray, np.ndarray],
    *,
    max_drop: float,
    min_speedup: float,
) -> Int8Gate:
    images, labels = validation
    fp32_session, int8_session = _session(fp32), _session(int8)
    before, after = (
        _predict(fp32_session, images).argmax(1),
        _predict(int8_session, images).argmax(1),
    )
    return Int8Gate(
        fp32_accuracy=float((before == labels).mean()),
        int8_accuracy=float((after == labels).mean()),
        agreement=float((before == after).mean()),
        images=len(labels),
        speedup=_speedup(fp32_session, int8_session, images),
        flagged=(_flagged(fp32_session, images), _flagged(int8_session, images)),
        max_drop=max_drop,
        min_speedup=min_speedup,
        instructions=tuple(cpu_int8_instructions()),
    )


def _seal(proto: onnx.ModelProto, meta: ExportMetadata, gate: Int8Gate) -> onnx.ModelProto:
    """The quantized graph with metadata for its own weights (the reader checks the digest)."""
    del proto.metadata_props[:]
    quantization = {"type": "int8-static-qdq", "ops": QUANTIZED_OPS, **gate.to_dict()}
    sealed = replace(meta, quantization=quantization).sealed(onnx_digest(proto))
    for key, value in sealed.to_strings().items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def run_crops(
    config: dict, spec, *, calibration: int = 128, validation: int = 1000
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """uint8 eval crops of the run's training images (``calibration`` of them, spread over the
    classes) and of its validation split (up to ``validation``, with class indices), the split
    rebuilt from the run's data folder, validation fraction and seed as training made it."""
    from types import SimpleNamespace

    from ..config import manifest_columns
    from ..data.dataset import scan_data

    training = config.get("training") or {}
    data = training.get("data")
    if not data or not Path(data).exists():
        raise ExportError(
            f"an int8 export calibrates on the run's training images and is checked on its "
            f"validation split, but its data folder {data} is gone"
        )
    splits = scan_data(
        data,
        manifest_columns(SimpleNamespace(**training)),
        val_fraction=training.get("val_fraction", 0.15),
        seed=training.get("seed", 0),
    )
    train, _ = _crops(pick_evenly(splits.train, calibration), spec)
    val = _crops(pick_evenly(splits.val, validation), spec)
    if not len(train) or not len(val[0]):
        raise ExportError(f"no decodable training or validation images in {data}")
    return train, val


def _crops(samples: list, spec) -> tuple[np.ndarray, np.ndarray]:
    from ..data.images import ImageDecodeError, decode_image
    from ..data.transforms import decode_size, eval_geometry

    geometry, crops, labels = eval_geometry(spec), [], []
    for sample in samples:
        try:
            image = decode_image(sample.path, min_short_side=decode_size(spec)).image
        except ImageDecodeError:
            continue
        crops.append(geometry(image).numpy())
        labels.append(sample.label)
    size = spec.size
    empty = np.zeros((0, 3, size, size), dtype=np.uint8)
    return (np.stack(crops) if crops else empty), np.asarray(labels, dtype=np.int64)


def quantize_onnx(
    fp32_path: Path,
    out: Path,
    *,
    calibration: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    max_drop: float = MAX_DROP,
    min_speedup: float = 1.0,
    on_gate: Callable[[Int8Gate], None] | None = None,
) -> Int8Gate:
    """Quantize the checked fp32 export ``fp32_path`` into ``out``, or raise ``ExportError``
    (writing nothing) when the gate refuses it. ``calibration``: uint8 crops of training
    images; ``validation``: uint8 crops and their class indices."""
    if not max_drop >= 0:
        raise ExportError(f"max_drop must be 0 or more points, got {max_drop}")
    _, fp32, meta = read_onnx(fp32_path)
    with tempfile.TemporaryDirectory(prefix="visiontune-int8-") as work:
        int8 = _quantized_proto(fp32_path, calibration, Path(work))
    gate = measure_gate(fp32, int8, validation, max_drop=max_drop, min_speedup=min_speedup)
    if on_gate is not None:
        on_gate(gate)
    reason = gate.refusal()
    if reason is not None:
        raise ExportError(f"{reason}; the int8 file was not written")
    sealed = _seal(int8, meta, gate)

    def write_and_check(tmp: str) -> None:
        onnx.save_model(sealed, tmp)
        read_onnx(tmp)  # the reader users get accepts it (digest, metadata) before the rename

    atomic_write(out, write_and_check)
    return gate
