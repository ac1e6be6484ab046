"""Export to ONNX and TorchScript: parity with the eager model on two architectures, embedded
metadata, predicting from the ONNX file like from the run folder, damaged files refused."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from conftest import make_split_folder

import visiontune
from visiontune.cli import main
from visiontune.data.folder import list_images
from visiontune.data.images import decode_image
from visiontune.data.transforms import decode_size, eval_geometry, eval_transform
from visiontune.errors import BundleError, ExportError, VisiontuneError
from visiontune.exporting.parity import TOLERANCE, ParityWarning
from visiontune.exporting.torchscript import METADATA_FILE, load_torchscript
from visiontune.formats.bundle import load_bundle
from visiontune.formats.export_metadata import EXPORT_FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME
from visiontune.formats.onnx_reader import SPINNING_ENTRY, onnx_session, read_onnx
from visiontune.prediction.onnx_predictor import OnnxModel
from visiontune.specs import PreprocessSpec

# Lite0 with its embedded ImageNet weights, and a different timm architecture with random weights:
# a tiny ViT (attention, LayerNorm, GELU), cheap enough to export in seconds.
BACKBONES = {
    "lite0": {"backbone": "efficientnet_lite0"},
    "vit": {"backbone": "test_vit", "weights": "none"},
}
FORMATS = ("onnx", "torchscript")


@pytest.fixture(scope="module")
def export_data(tmp_path_factory):
    return make_split_folder(
        tmp_path_factory.mktemp("export") / "data",
        {
            "train": {"bird": 4, "cat": 4, "dog": 4},
            "val": {"bird": 1, "cat": 1, "dog": 1},
            "test": {"bird": 2, "cat": 2, "dog": 2},
        },
        size=(48, 40),
    )


@pytest.fixture(scope="module")
def runs(export_data, tmp_path_factory):
    """One `--strategy head` run per backbone (head on cached features: seconds)."""
    root = tmp_path_factory.mktemp("export-runs")
    return {
        key: visiontune.fit(
            export_data,
            **options,
            strategy="head",
            workers=0,
            out=str(root / key),
            progress=False,
            cache=False,
        ).run_dir
        for key, options in BACKBONES.items()
    }


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """``{(backbone, format): ExportReport}``, each file exported once for the module."""
    root = tmp_path_factory.mktemp("exported")
    return {
        (key, fmt): visiontune.export(run, format=fmt, out=root / f"{key}.{fmt}")
        for key, run in runs.items()
        for fmt in FORMATS
    }


@functools.cache
def _crops(run, paths):
    """The eval crops (uint8) of ``paths`` and the run's eager probabilities for them."""
    model, _, _ = load_bundle(run)
    spec = model.backbone.preprocess
    images = [decode_image(p, min_short_side=decode_size(spec)).image for p in paths]
    uint8 = torch.stack([eval_geometry(spec)(im).as_subclass(torch.Tensor) for im in images])
    normalized = torch.stack([eval_transform(spec)(im).as_subclass(torch.Tensor) for im in images])
    with torch.inference_mode():
        eager = torch.softmax(model(normalized), dim=1).numpy()
    return uint8, eager


def _probability_rows(results, names):
    return np.array(
        [[{t["class"]: t["probability"] for t in r["top"]}[n] for n in names] for r in results]
    )


# ---- parity at export time ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key", sorted(BACKBONES))
def test_export_matches_the_eager_model_on_the_runs_images(exports, export_data, key, fmt):
    report = exports[(key, fmt)]
    assert report.path.is_file() and report.size_bytes == report.path.stat().st_size
    assert report.format == fmt and report.tolerance == TOLERANCE
    assert report.max_abs_diff <= TOLERANCE and report.top1_agreement == 1.0
    assert report.images == 16 and str(export_data) in report.inputs  # 21 images: 16 picked
    assert not list(report.path.parent.glob(".*.tmp"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key", sorted(BACKBONES))
def test_dynamic_batch_axis(exports, runs, export_data, key, fmt):
    """Batches of 1 and 5 (the export was traced with 2) give the eager model's probabilities."""
    paths = tuple(list_images(export_data / "test")[:5])
    uint8, eager = _crops(runs[key], paths)
    path = exports[(key, fmt)].path
    if fmt == "onnx":
        session, _ = onnx_session(path)
        run = lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]  # noqa: E731
    else:
        module, _ = load_torchscript(path)
        run = lambda x: module(x).detach().numpy()  # noqa: E731
    five, one = run(uint8), run(uint8[:1])
    assert five.shape == (5, 3) and one.shape == (1, 3)
    np.testing.assert_allclose(five, eager, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(one, eager[:1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(five.sum(1), 1.0, atol=1e-5)  # probabilities, not logits


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_round_trip(exports, runs, fmt):
    _, labels, config = load_bundle(runs["lite0"])
    path = exports[("lite0", fmt)].path
    meta = read_onnx(path)[2] if fmt == "onnx" else load_torchscript(path)[1]
    assert meta.classes == labels.names == ("bird", "cat", "dog")
    assert meta.preprocess == PreprocessSpec.from_dict(config["preprocess"])
    assert meta.preprocess.size == 224 and meta.preprocess.interpolation in ("bicubic", "bilinear")
    assert meta.backbone == "efficientnet_lite0"
    assert meta.visiontune_version == visiontune.__version__
    assert meta.format_version == EXPORT_FORMAT_VERSION
    assert "probabilities" in meta.output and "uint8" in meta.input


def test_onnx_metadata_is_plain_metadata_props(exports):
    """Readable by any ONNX tool, not only by visiontune."""
    props = {p.key: p.value for p in onnx.load(str(exports[("vit", "onnx")].path)).metadata_props}
    assert json.loads(props["classes"]) == ["bird", "cat", "dog"]
    assert set(json.loads(props["preprocess"])) == {
        "size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
    }
    assert props["format_version"] == str(EXPORT_FORMAT_VERSION) and props["backbone"] == "test_vit"


def test_torchscript_metadata_is_an_extra_file(exports):
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(exports[("vit", "torchscript")].path), _extra_files=extra)
    assert json.loads(extra[METADATA_FILE])["classes"] == ["bird", "cat", "dog"]


# ---- predicting from the ONNX file -------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(BACKBONES))
def test_predict_from_onnx_equals_predict_from_the_run(exports, runs, export_data, key):
    onnx_model = visiontune.load(exports[(key, "onnx")].path)
    assert isinstance(onnx_model, OnnxModel)
    run_model = visiontune.load(runs[key], precision="fp32")  # the export is an fp32 graph
    names = run_model.labels.names
    assert onnx_model.labels.names == names
    from_onnx = onnx_model.predict([export_data], top_k=3, workers=0)
    from_run = run_model.predict([export_data], top_k=3, workers=0)
    assert [r["path"] for r in from_onnx] == [r["path"] for r in from_run] and len(from_run) == 21
    assert [r["top"][0]["class"] for r in from_onnx] == [r["top"][0]["class"] for r in from_run]
    np.testing.assert_allclose(
        _probability_rows(from_onnx, names),
        _probability_rows(from_run, names),
        atol=TOLERANCE,
        rtol=0,
    )
    assert set(from_onnx[0]) == set(from_run[0]) == {"path", "top", "unknown", "unknown_score"}
    # The graph's second output is the run's unknown score (relative: far images score high).
    onnx_scores = np.array([r["unknown_score"] for r in from_onnx])
    run_scores = np.array([r["unknown_score"] for r in from_run])
    np.testing.assert_allclose(onnx_scores, run_scores, rtol=1e-3, atol=1e-3)
    assert [r["unknown"] for r in from_onnx] == [r["unknown"] for r in from_run]


def test_onnx_model_evaluates_and_reports_unreadable_files(exports, runs, export_data, tmp_path):
    model = OnnxModel.from_file(exports[("vit", "onnx")].path)
    metrics = model.evaluate(export_data / "test", workers=0)
    expected = visiontune.load(runs["vit"]).evaluate(export_data / "test", workers=0)
    assert metrics["accuracy"] == expected["accuracy"] and metrics["num_images"] == 6
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    good = list_images(export_data / "test")[0]
    results = model.predict([good, broken], workers=0)
    assert "top" in results[0] and "error" in results[1]
    with pytest.raises(VisiontuneError, match="tta"):
        model.predict([good], tta="flip")
    with pytest.raises(VisiontuneError, match="needs the run folder"):
        visiontune.evaluate(model.path, export_data / "test", report=tmp_path / "report", workers=0)


def test_cli_predict_accepts_an_onnx_file(exports, runs, export_data, capsys):
    assert (
        main(
            [
                "predict",
                str(exports[("lite0", "onnx")].path),
                str(export_data / "test"),
                "--format",
                "json",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    from_onnx = json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "predict",
                str(runs["lite0"]),
                str(export_data / "test"),
                "--format",
                "json",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    from_run = json.loads(capsys.readouterr().out)
    assert [r["top"][0]["class"] for r in from_onnx] == [r["top"][0]["class"] for r in from_run]


def test_onnx_prediction_imports_no_model_code(exports, export_data):
    """The ONNX path needs the data transforms and onnxruntime, not backbones or timm."""
    code = (
        "import sys\n"
        "from visiontune.prediction.onnx_predictor import OnnxModel\n"
        f"rows = OnnxModel.from_file({str(exports[('lite0', 'onnx')].path)!r}).predict("
        f"[{str(export_data / 'test')!r}], workers=0)\n"
        "assert len(rows) == 6 and all('top' in r for r in rows), rows\n"
        "loaded = [m for m in ('timm', 'visiontune.backbones', 'visiontune.engine') if m in "
        "sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_onnx_sessions_leave_idle_cores_to_the_decoding_workers(exports):
    """``visiontune.load`` and ``OnnxModel.from_file`` turn onnxruntime's spin-waiting off (its
    default is on: the entry is then absent) and honour a thread count."""
    path = exports[("lite0", "onnx")].path
    options = visiontune.load(path).session.get_session_options()
    assert options.get_session_config_entry(SPINNING_ENTRY) == "0"
    options = OnnxModel.from_file(path, threads=1).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry(SPINNING_ENTRY) == "0"


# ---- damaged, tampered and foreign files -------------------------------------------------------


def _load(fmt, path):
    return read_onnx(path) if fmt == "onnx" else load_torchscript(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_export_is_refused(exports, tmp_path, fmt):
    data = exports[("vit", fmt)].path.read_bytes()
    for cut in (len(data) // 2, len(data) - 200, 100):
        damaged = tmp_path / f"cut{cut}.{fmt}"
        damaged.write_bytes(data[:cut])
        with pytest.raises(BundleError, match="truncated|damaged") as info:
            _load(fmt, damaged)
        assert str(damaged) in str(info.value) and "\n" not in str(info.value)


def _largest_weight_bytes(fmt, path) -> bytes:
    if fmt == "onnx":
        proto = onnx.load(str(path))
        return max((init.raw_data for init in proto.graph.initializer), key=len)
    module, _ = load_torchscript(path)
    tensor = max(module.state_dict().values(), key=lambda t: t.numel())
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_tampered_weights_are_refused(exports, tmp_path, fmt):
    """Bytes changed inside a weight tensor still parse; the checksum catches them."""
    path = exports[("vit", fmt)].path
    data = bytearray(path.read_bytes())
    weights = _largest_weight_bytes(fmt, path)
    at = bytes(data).find(weights[:256])
    assert at > 0
    data[at + 1000 : at + 1008] = bytes(8)  # eight zero bytes in the middle of a weight tensor
    tampered = tmp_path / f"tampered.{fmt}"
    tampered.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="do not match the checksum recorded at export"):
        _load(fmt, tampered)
    if fmt == "onnx":
        with pytest.raises(BundleError, match="checksum"):
            visiontune.load(tampered)


def test_newer_export_format_is_refused(exports, tmp_path):
    proto = onnx.load(str(exports[("vit", "onnx")].path))
    for prop in proto.metadata_props:
        if prop.key == "format_version":
            prop.value = str(EXPORT_FORMAT_VERSION + 1)
    newer = tmp_path / "newer.onnx"
    onnx.save(proto, str(newer))
    with pytest.raises(
        BundleError, match=f"format {EXPORT_FORMAT_VERSION + 1}.*Upgrade visiontune"
    ):
        read_onnx(newer)


def test_torchscript_newer_format_and_missing_metadata_are_refused(exports, tmp_path):
    module, meta = load_torchscript(exports[("vit", "torchscript")].path)
    newer = tmp_path / "newer.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(
            module,
            str(newer),
            _extra_files={
                METADATA_FILE: json.dumps(
                    {**meta.to_dict(), "format_version": EXPORT_FORMAT_VERSION + 1}
                )
            },
        )
        torch.jit.save(module, str(tmp_path / "bare.pt"))
    with pytest.raises(BundleError, match="Upgrade visiontune"):
        load_torchscript(newer)
    with pytest.raises(BundleError, match="not written by `visiontune export`"):
        load_torchscript(tmp_path / "bare.pt")


def test_foreign_onnx_file_is_refused(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(BundleError, match="no visiontune metadata"):
        visiontune.load(foreign)
    with pytest.raises(BundleError, match="no such ONNX file"):
        visiontune.load(tmp_path / "missing.onnx")


# ---- failure at export time leaves nothing behind ----------------------------------------------


@pytest.fixture
def tiny_run(trained_run, tmp_path):
    return shutil.copytree(trained_run.run_dir, tmp_path / "run")


def _break_normalisation(monkeypatch):
    """An export fault: the graph leaves out mean/std normalisation (the eager model keeps it)."""
    from visiontune.exporting import wrapper

    def forward_without_normalisation(self, images):
        probs = torch.softmax(self.classifier(images.to(torch.float32) / 255.0), dim=1)
        return (probs, probs[:, 0]) if self.scores_unknown else probs  # the outputs it declares

    monkeypatch.setattr(wrapper.ProbabilityModel, "forward", forward_without_normalisation)


def test_export_that_disagrees_fails_and_writes_nothing(tiny_run, monkeypatch):
    _break_normalisation(monkeypatch)
    before = set(tiny_run.iterdir())
    with pytest.raises(
        ExportError,
        match="the torchscript export differs from the eager model by .* nothing was written",
    ):
        visiontune.export(tiny_run, format="torchscript")
    assert set(tiny_run.iterdir()) == before  # no output, no temporary file


def test_cli_onnx_export_that_disagrees_exits_2_and_writes_nothing(tiny_run, monkeypatch, capsys):
    _break_normalisation(monkeypatch)
    before = set(tiny_run.iterdir())
    assert main(["export", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visiontune: error: the onnx export differs") and err.count("\n") == 1
    assert set(tiny_run.iterdir()) == before


def test_generated_images_when_the_data_is_gone(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    config["training"]["data"] = str(tiny_run / "deleted-data")
    (tiny_run / "config.json").write_text(json.dumps(config))
    with pytest.warns(ParityWarning, match="is gone"):
        report = visiontune.export(tiny_run, format="torchscript")
    assert report.inputs == "16 generated images" and report.max_abs_diff <= TOLERANCE
    assert report.path == tiny_run / "model.torchscript.pt" and report.path.is_file()


def test_bad_export_arguments(tiny_run, tmp_path):
    with pytest.raises(VisiontuneError, match="format must be one of onnx, torchscript"):
        visiontune.export(tiny_run, format="tflite")
    with pytest.raises(BundleError, match="no such run folder"):
        visiontune.export(tmp_path / "nowhere")
    with pytest.raises(VisiontuneError, match="tolerance must be positive"):
        visiontune.export(tiny_run, format="torchscript", tolerance=0)


def test_cli_export(tiny_run, tmp_path, capsys):
    out = tmp_path / "exports"
    out.mkdir()
    assert (
        main(["export", str(tiny_run), "--format", "torchscript", "--out", str(out), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out / "model.torchscript.pt") and report["format"] == "torchscript"
    assert report["max_abs_diff"] <= TOLERANCE and report["images"] == 16
    assert load_torchscript(out / "model.torchscript.pt")[1].classes == ("bird", "cat", "dog")
    assert main(["export", str(tiny_run), "--format", "torchscript", "--parity-images", "3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "model.torchscript.pt" in printed and "max |dp|" in printed
    assert "on 3 images from" in printed and (tiny_run / "model.torchscript.pt").is_file()
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


# ---- the metadata that gives outputs their meaning is sealed with the weights ----------------


@pytest.fixture(scope="module")
def tiny_exports(trained_run, tmp_path_factory):
    """The shared tiny run exported once to each format: ``{format: path}``."""
    root = tmp_path_factory.mktemp("tiny-exports")
    return {
        fmt: visiontune.export(trained_run.run_dir, format=fmt, out=root / f"tiny.{fmt}").path
        for fmt in FORMATS
    }


def _rewrite_metadata(fmt, source, target, edit) -> None:
    """Copy the export ``source`` to ``target`` with ``edit(dict)`` applied to its metadata."""
    if fmt == "onnx":
        proto = onnx.load(str(source))
        props = {p.key: p.value for p in proto.metadata_props}
        data = {k: json.loads(v) if k in ("classes", "preprocess") else v for k, v in props.items()}
        edit(data)
        del proto.metadata_props[:]
        for key, value in data.items():
            text = json.dumps(value) if key in ("classes", "preprocess") else str(value)
            proto.metadata_props.add(key=key, value=text)
        onnx.save(proto, str(target))
        return
    module, meta = load_torchscript(source)
    data = meta.to_dict()
    edit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, str(target), _extra_files={METADATA_FILE: json.dumps(data)})


def _metadata(fmt, path):
    return read_onnx(path)[2] if fmt == "onnx" else load_torchscript(path)[1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_exports_carry_a_content_checksum(tiny_exports, fmt):
    meta = _metadata(fmt, tiny_exports[fmt])
    assert len(meta.content_sha256) == 64
    assert meta.content_sha256 == meta.expected_content_sha256()


TAMPERING = {
    "reordered classes": lambda d: d.update(classes=["cat", "bird", "dog"]),
    "renamed class": lambda d: d.update(classes=["bird", "cat", "wolf"]),
    "crop": lambda d: d["preprocess"].update(crop_pct=1.0),
    "interpolation": lambda d: d["preprocess"].update(interpolation="nearest"),
    "checksum blanked": lambda d: d.update(content_sha256=""),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("edit", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampered_metadata_is_refused(tiny_exports, tmp_path, fmt, edit):
    tampered = tmp_path / f"tampered.{fmt}"
    _rewrite_metadata(fmt, tiny_exports[fmt], tampered, edit)
    with pytest.raises(BundleError, match="do not match the checksum recorded at export") as info:
        _metadata(fmt, tampered)
    assert str(tampered) in str(info.value) and "\n" not in str(info.value)


def test_cli_predict_refuses_relabelled_onnx(tiny_exports, trained_data, tmp_path, capsys):
    tampered = tmp_path / "relabelled.onnx"
    _rewrite_metadata("onnx", tiny_exports["onnx"], tampered, TAMPERING["reordered classes"])
    image = str(list_images(trained_data / "test")[0])
    assert main(["predict", str(tampered), image]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "classes or preprocessing do not match the checksum" in captured.err


def _unsealed(data: dict) -> None:
    """As a file exported before ``content_sha256`` existed."""
    data.pop("content_sha256")


@pytest.mark.parametrize("fmt", FORMATS)
def test_exports_from_before_the_content_checksum_still_load(tiny_exports, tmp_path, fmt):
    old = tmp_path / f"old.{fmt}"
    _rewrite_metadata(fmt, tiny_exports[fmt], old, _unsealed)
    assert _metadata(fmt, old).classes == ("bird", "cat", "dog")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_class_list_that_does_not_fit_the_output_is_refused(
    tiny_exports, trained_data, tmp_path, fmt
):
    """Even without the content checksum: 2 names for 3 outputs used to crash predict with an
    IndexError."""

    def shorter(data):
        _unsealed(data)
        data["classes"] = ["bird", "cat"]

    short = tmp_path / f"short.{fmt}"
    _rewrite_metadata(fmt, tiny_exports[fmt], short, shorter)
    with pytest.raises(BundleError, match="lists 2 classes but the model outputs 3") as info:
        _metadata(fmt, short)
    assert str(short) in str(info.value)
    if fmt == "onnx":
        with pytest.raises(BundleError, match="lists 2 classes"):
            visiontune.predict(short, [trained_data / "test"], workers=0)
