"""``export --quantize int8``: a gated int8 ONNX file - written when it keeps accuracy and is
faster here, refused (nothing written) when it loses accuracy or is not faster."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import TINY, make_split_folder

import visiontune
from visiontune.errors import BundleError, ExportError, VisiontuneError
from visiontune.exporting.quantize import Int8Gate, quantize_onnx, run_crops
from visiontune.formats.onnx_reader import read_onnx
from visiontune.prediction.predictor import TrainedModel


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_split_folder(
        tmp_path_factory.mktemp("int8") / "data",
        {
            "train": {"cat": 12, "dog": 12},
            "val": {"cat": 10, "dog": 10},
            "test": {"cat": 4, "dog": 4},
        },
    )
    return visiontune.fit(
        data, strategy="head", out=str(data.parent / "run"), progress=False, **TINY
    ).run_dir


def test_an_int8_file_is_written_sealed_and_predicts(run):
    report = visiontune.export(run, quantize="int8", max_drop=100, min_speedup=0)
    assert report.path == run / "model.int8.onnx" and report.path.is_file()
    gate = report.quantization
    assert gate["images"] == 20 and 0 <= gate["agreement"] <= 1 and gate["speedup"] > 0
    assert all(0 <= share <= 1 for share in gate["flagged"])  # the run scores unknown images
    assert "flagged unknown on validation" in report.summary()
    _, proto, meta = read_onnx(report.path)
    assert meta.quantization["type"] == "int8-static-qdq"
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the body really is int8
    model = visiontune.load(report.path)
    rows = model.predict([run.parent / "data" / "test" / "dog"])
    assert len(rows) == 4 and all("top" in r for r in rows)
    assert not (run / "model.int8.onnx.fp32.partial").exists()  # the fp32 step leaves nothing


def test_the_gate_refuses_a_file_that_is_not_faster_and_writes_nothing(run, tmp_path):
    out = tmp_path / "slow.onnx"
    with pytest.raises(ExportError, match="not faster on this machine"):
        visiontune.export(run, quantize="int8", out=out, max_drop=100, min_speedup=1000)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_gate_refuses_a_file_that_loses_accuracy(run, tmp_path):
    """Calibrated on black images, every activation range is ~0: the int8 graph answers one
    class for everything, a real loss the gate must catch."""
    trained = TrainedModel.from_run(run)
    calibration, validation = run_crops(trained.config, trained.preprocess)
    fp32 = tmp_path / "fp32.onnx"
    visiontune.export(run, out=fp32)
    out = tmp_path / "bad.int8.onnx"
    seen: list[Int8Gate] = []
    with pytest.raises(ExportError, match="loses .* points of validation accuracy"):
        quantize_onnx(
            fp32,
            out,
            calibration=np.zeros_like(calibration),
            validation=validation,
            min_speedup=0,
            on_gate=seen.append,
        )
    assert seen[0].drop > 0.5 and not out.exists()


def test_the_gate_reports_which_rule_failed():
    base = dict(fp32_accuracy=0.9, int8_accuracy=0.9, agreement=1.0, images=100, speedup=2.0)
    assert Int8Gate(**base, max_drop=0.5).refusal() is None
    lossy = Int8Gate(**{**base, "int8_accuracy": 0.89}, max_drop=0.5).refusal()
    assert "loses 1.00 points" in lossy and "1 more wrong, one image being 1.00 points" in lossy
    assert "top class of 10.00 %" in Int8Gate(**{**base, "agreement": 0.9}, max_drop=0.5).refusal()
    slow = Int8Gate(**{**base, "speedup": 0.8}, max_drop=0.5, instructions=("avx2",)).refusal()
    assert "0.80x" in slow and "avx2" in slow


def test_an_edited_quantization_record_is_refused(run, tmp_path):
    report = visiontune.export(
        run, quantize="int8", out=tmp_path / "q.onnx", min_speedup=0, max_drop=100
    )
    proto = onnx.load(str(report.path))
    for prop in proto.metadata_props:
        if prop.key == "quantization":
            record = json.loads(prop.value)
            prop.value = json.dumps({**record, "speedup": 99.0})
    onnx.save_model(proto, str(tmp_path / "edited.onnx"))
    with pytest.raises(BundleError, match="checksum"):
        read_onnx(tmp_path / "edited.onnx")


def test_int8_is_for_onnx_only(run):
    with pytest.raises(VisiontuneError, match="ONNX"):
        visiontune.export(run, format="torchscript", quantize="int8")
    with pytest.raises(VisiontuneError, match="quantize must be"):
        visiontune.export(run, quantize="int4")
