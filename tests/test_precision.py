"""``--precision``: how ``auto`` decides, what a run records, and that a loaded model keeps it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

import visiontune
from visiontune.backbones import create_backbone
from visiontune.engine import precision as precision_module
from visiontune.engine.loop import Runtime
from visiontune.engine.precision import Precision, resolve_precision
from visiontune.errors import VisiontuneError
from visiontune.features.cache import FeatureCache, model_description
from visiontune.features.extract import extract_features

CPU = torch.device("cpu")


def test_fp32_and_bf16_mean_what_they_say():
    assert resolve_precision("fp32", CPU) == Precision()
    chosen = resolve_precision("bf16", CPU)
    assert (chosen.inference, chosen.training, chosen.requested) == ("bf16", "bf16", "bf16")
    with pytest.raises(ValueError, match="one of auto, fp32, bf16"):
        resolve_precision("int4", CPU)


def test_auto_on_a_cpu_without_native_bf16_stays_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: False)
    chosen = resolve_precision("auto", CPU, cache_dir=tmp_path)
    assert (chosen.inference, chosen.training) == ("fp32", "fp32")
    assert "no native bf16" in chosen.reason


@pytest.mark.parametrize(("speedup", "inference"), [(1.05, "fp32"), (2.0, "bf16")])
def test_auto_uses_bf16_inference_only_where_measured_faster(
    monkeypatch, tmp_path, speedup, inference
):
    measured = []
    monkeypatch.setattr(precision_module, "_MEASURED", {})  # forget this process's measurement
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision_module, "_measure_speedup", lambda: measured.append(1) or speedup)
    first = resolve_precision("auto", CPU, cache_dir=tmp_path)
    again = resolve_precision("auto", CPU, cache_dir=tmp_path)
    assert first == again and len(measured) == 1  # measured once per machine, then read
    assert (first.inference, first.training) == (inference, "fp32")
    assert f"{speedup:.2f}x" in first.reason


def test_the_speed_check_really_times_both_dtypes():
    # the timed bf16 pass runs bf16 kernels (its output is bf16), the fp32 pass does not
    net, x = precision_module._probe_net(), torch.rand(1, 3, 64, 64)
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with torch.inference_mode(), precision_module.autocast(CPU, name):
            assert net(x).dtype == dtype
    speedup = precision_module._measure_speedup(rounds=1)
    assert np.isfinite(speedup) and speedup > 0


def test_cached_features_keep_the_precision_in_their_key(tmp_path, trained_data):
    from visiontune.data.folder import scan_folder

    backbone = create_backbone(TINY["backbone"], weights=TINY["weights"])
    fp32 = FeatureCache.for_backbone(tmp_path, backbone)
    bf16 = FeatureCache.for_backbone(tmp_path, backbone, precision="bf16")
    assert fp32.key != bf16.key
    assert "precision" not in model_description(backbone)  # fp32 keys predate precisions
    runtime = Runtime(precision=resolve_precision("bf16", CPU))
    test = scan_folder(trained_data).test
    stored = extract_features(backbone, test, runtime=runtime, cache=bf16)
    again = extract_features(backbone, test, runtime=runtime, cache=bf16)
    assert again.from_cache == len(test)
    torch.testing.assert_close(again.features, stored.features)
    with pytest.raises(ValueError, match="made for"):  # bf16 rows never serve an fp32 run
        extract_features(backbone, test, runtime=Runtime(), cache=bf16)


@pytest.fixture(scope="module")
def bf16_run(trained_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "run"
    return visiontune.fit(
        trained_data,
        **TINY,
        strategy="head",
        precision="bf16",
        workers=0,
        out=str(out),
        progress=False,
    )


def _probabilities(model, folder) -> np.ndarray:
    rows = model.predict([folder], top_k=3, workers=0)
    return np.array([[t["probability"] for t in sorted(r["top"], key=str)] for r in rows])


def test_the_bundle_records_the_precision_and_loading_honours_it(bf16_run, trained_data):
    config = json.loads((bf16_run.run_dir / "config.json").read_text())
    assert config["precision"]["inference"] == config["precision"]["training"] == "bf16"
    metrics = json.loads((bf16_run.run_dir / "metrics.json").read_text())
    assert metrics["timing"]["precision"] == config["precision"]
    loaded = visiontune.load(bf16_run.run_dir)
    assert loaded.precision == Precision.from_dict(config["precision"])
    test = trained_data / "test"
    as_saved = _probabilities(loaded, test)
    np.testing.assert_array_equal(
        as_saved, _probabilities(visiontune.load(bf16_run.run_dir, precision="bf16"), test)
    )
    in_fp32 = _probabilities(visiontune.load(bf16_run.run_dir, precision="fp32"), test)
    assert not np.array_equal(as_saved, in_fp32)  # bf16 rounding shows: it really ran in bf16
    np.testing.assert_allclose(as_saved, in_fp32, atol=0.05)


def test_an_edited_precision_is_refused(bf16_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bf16_run.run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["precision"]["inference"] = "fp32"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(VisiontuneError, match="differ"):
        visiontune.load(copy)


def test_a_bundle_from_before_precisions_predicts_in_fp32():
    assert Precision.from_dict(None).inference == "fp32"
    assert Precision.from_dict({}).training == "fp32"


def test_an_onnx_file_refuses_a_precision(tmp_path):
    with pytest.raises(VisiontuneError, match="applies to run folders"):
        visiontune.load(tmp_path / "model.onnx", precision="bf16")
