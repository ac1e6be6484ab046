"""ONNX export, parity-checked against the eager model.

Exporter: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (it needs the
``onnxscript`` package). Since PyTorch 2.9 it is the default and the maintained one; the legacy
TorchScript-based exporter (``dynamo=False``) still works in torch 2.14 but warns that it "will be
removed". Both matched eager to ~1e-6 here; the dynamo one takes longer to export (seconds to
tens of seconds on 2 cores, mostly one-off start-up), which a one-off command can afford.

Reading one back (``read_onnx``, ``onnx_session``) is ``visiontune.formats.onnx_reader``: it needs
onnx and onnxruntime only, no model code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx

from .._io import atomic_write
from ..formats.export_metadata import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME, ExportMetadata
from ..formats.onnx_reader import onnx_digest, onnx_session

__all__ = ["export_onnx"]


def _trace_to_onnx(module, size: int, outputs: list[str]) -> onnx.ModelProto:
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
            output_names=outputs,
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        )
    return program.model_proto


def export_onnx(module, meta: ExportMetadata, out: Path, *, check, check_unknown=None) -> None:
    """Write ``module`` (a ``ProbabilityModel``) to ``out`` with ``meta`` embedded.

    ``check(run)`` receives a function running the written file (uint8 batch -> probabilities)
    and raises if it disagrees with the eager model; the file is written to a temporary name and
    renamed onto ``out`` only after the check passed. A module that also scores unknown images
    gets a second output, ``UNKNOWN_NAME``, checked by ``check_unknown`` the same way.
    """
    outputs = [OUTPUT_NAME, UNKNOWN_NAME] if meta.unknown is not None else [OUTPUT_NAME]
    proto = _trace_to_onnx(module.eval(), meta.preprocess.size, outputs)
    meta = meta.sealed(onnx_digest(proto))
    for key, value in meta.to_strings().items():
        proto.metadata_props.add(key=key, value=value)

    def write_and_check(tmp: str) -> None:
        onnx.save_model(proto, tmp)
        session, _ = onnx_session(tmp)  # the reader users get, checksum included
        check(lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])
        if meta.unknown is not None:
            check_unknown(lambda images: session.run([UNKNOWN_NAME], {INPUT_NAME: images})[0])

    atomic_write(out, write_and_check)
