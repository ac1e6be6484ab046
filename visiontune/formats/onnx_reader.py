"""Reading an ONNX export back, verified: its metadata, its weights checksum, a session.

Needs onnx and onnxruntime only, no model code, so a deployment that only runs the exported file
can use it. The writer (``visiontune.exporting.onnx``) hashes weights with ``onnx_digest`` too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BundleError
from .export_metadata import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME, ExportMetadata, weights_digest

__all__ = [
    "SPINNING_ENTRY",
    "check_class_count",
    "onnx_digest",
    "onnx_session",
    "output_classes",
    "read_onnx",
    "session_options",
]

# onnxruntime's session config key for its intra-op threads' spin-waiting ("1" by default).
SPINNING_ENTRY = "session.intra_op.allow_spinning"


def _tensors(proto: onnx.ModelProto):
    """Every stored tensor: initializers and the values of Constant nodes."""
    for init in proto.graph.initializer:
        yield init.name, init
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield f"{node.output[0]}:{attr.name}", attr.t


def onnx_digest(proto: onnx.ModelProto) -> str:
    entries = []
    for name, tensor in _tensors(proto):
        array = np.ascontiguousarray(numpy_helper.to_array(tensor))
        entries.append((name, str(array.dtype), array.shape, array.tobytes()))
    return weights_digest(entries)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_onnx(path: str | Path) -> tuple[bytes, onnx.ModelProto, ExportMetadata]:
    """``(file bytes, parsed model, metadata)``; refuses a file that is not a visiontune export,
    is truncated or damaged, has weights that changed since export, or is from a newer format."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no such ONNX file: {path}")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends: the message varies by version
        raise BundleError(
            f"{path} is not a readable ONNX model (truncated or damaged?): {_first_line(exc)}"
        ) from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if "format_version" not in props:
        raise BundleError(
            f"{path} has no visiontune metadata: it was not written by `visiontune "
            "export`, or it is truncated"
        )
    meta = ExportMetadata.from_strings(props, source=str(path))
    if onnx_digest(proto) != meta.weights_sha256:
        raise BundleError(
            f"{path}: its weights do not match the checksum recorded at export; the "
            "file was modified or damaged"
        )
    check_class_count(meta, output_classes(proto), source=str(path))
    return data, proto, meta


def output_classes(proto: onnx.ModelProto) -> int | None:
    """The fixed size of the output's class axis, or None when the graph leaves it open."""
    for output in proto.graph.output:
        if output.name == OUTPUT_NAME:
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None


def check_class_count(meta: ExportMetadata, outputs: int | None, *, source: str) -> None:
    """Refuse metadata whose class list does not fit the model's output (``outputs``; None:
    unknown, nothing to check)."""
    if outputs is not None and outputs != len(meta.classes):
        raise BundleError(
            f"{source}: its metadata lists {len(meta.classes)} classes but the model outputs "
            f"{outputs} probabilities; the metadata was edited or damaged"
        )


def session_options(*, threads: int | None = None):
    """The ``onnxruntime.SessionOptions`` of every session visiontune runs: ``threads`` intra-op
    threads (None: one per core, onnxruntime's default), and no spin-waiting.

    By default onnxruntime's idle threads spin between operators and after each run, waiting for
    more work (onnxruntime docs, "Thread management"). ``predict`` decodes and crops in
    DataLoader worker processes on the same cores while the graph runs, and a server decodes
    uploads between runs: the spinning takes the CPU that work needs. Measured on yoga TEST with
    2 cores, end-to-end ``predict`` rates with and without spinning are in BENCHMARKS.md "int8".
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry(SPINNING_ENTRY, "0")
    return options


def onnx_session(path: str | Path, *, threads: int | None = None):
    """``(onnxruntime.InferenceSession, ExportMetadata)`` for a verified export, on the CPU."""
    import onnxruntime as ort

    data, proto, meta = read_onnx(path)
    options = session_options(threads=threads)
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise BundleError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from exc
    names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    outputs = [OUTPUT_NAME, UNKNOWN_NAME] if meta.unknown is not None else [OUTPUT_NAME]
    if names != ([INPUT_NAME], outputs):
        raise BundleError(
            f"{path} has inputs/outputs {names}; this visiontune export has "
            f"[{INPUT_NAME!r}] -> {outputs!r}"
        )
    return session, meta
