"""ONNX export, parity-checked against the eager model, and the verified way to read one back.

Exporter: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (it needs the
``onnxscript`` package). Since PyTorch 2.9 it is the default and the maintained one; the legacy
TorchScript-based exporter (``dynamo=False``) still works in torch 2.14 but warns that it "will be
removed". Both matched eager to ~1e-6 here; the dynamo one takes longer to export (seconds to
tens of seconds on 2 cores, mostly one-off start-up), which a one-off command can afford.

Reading (``read_onnx``, ``onnx_session``) needs onnx and onnxruntime only: no model code.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .._io import atomic_write
from ..errors import BundleError
from .metadata import INPUT_NAME, OUTPUT_NAME, ExportMetadata, weights_digest

__all__ = ["export_onnx", "onnx_session", "read_onnx"]


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
    return data, proto, meta


def onnx_session(path: str | Path, *, threads: int | None = None):
    """``(onnxruntime.InferenceSession, ExportMetadata)`` for a verified export, on the CPU."""
    import onnxruntime as ort

    data, proto, meta = read_onnx(path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise BundleError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from exc
    names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise BundleError(
            f"{path} has inputs/outputs {names}; a visiontune export has "
            f"[{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]"
        )
    return session, meta


def _trace_to_onnx(module, size: int) -> onnx.ModelProto:
    import torch

    # Batch 2: torch.export specialises sizes 0 and 1, so an example batch of 1 would freeze it.
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # exporter chatter; correctness is what the parity check checks
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        )
    return program.model_proto


def export_onnx(module, meta: ExportMetadata, out: Path, *, check) -> None:
    """Write ``module`` (a ``ProbabilityModel``) to ``out`` with ``meta`` embedded.

    ``check(run)`` receives a function running the written file (uint8 batch -> probabilities)
    and raises if it disagrees with the eager model; the file is written to a temporary name and
    renamed onto ``out`` only after the check passed.
    """
    proto = _trace_to_onnx(module.eval(), meta.preprocess.size)
    meta = replace(meta, weights_sha256=onnx_digest(proto))
    for key, value in meta.to_strings().items():
        proto.metadata_props.add(key=key, value=value)

    def write_and_check(tmp: str) -> None:
        onnx.save_model(proto, tmp)
        session, _ = onnx_session(tmp)  # the reader users get, checksum included
        check(lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])

    atomic_write(out, write_and_check)
