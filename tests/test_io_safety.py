"""Output targets and odd dataset files (issue 14): unwritable or finished ``--out`` refused before
any work, OS errors as one line, the feature cache optional, no empty run folder left behind,
macro averages over the classes present, system and unsupported files under DATA."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import pytest
from conftest import TINY, files_under, make_class_folder, make_split_folder, solid_image

import visiontune
from visiontune.cli import main
from visiontune.data.checks import check_folder
from visiontune.data.folder import scan_folder
from visiontune.errors import DataError, VisiontuneError
from visiontune.evaluation.metrics import classification_metrics
from visiontune.features.cache import CacheWarning

TINY_ARGS = ["--backbone", "test_efficientnet", "--weights", "none", "--workers", "0"]
HEAD_ARGS = [*TINY_ARGS, "--strategy", "head", "--no-progress", "--no-cache"]
HEAD = {**TINY, "strategy": "head", "workers": 0, "progress": False, "cache": False}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, match: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("visiontune: error: "), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _read_only(monkeypatch, *folders: Path) -> None:
    """``os.access`` says no to writing in ``folders`` (as root, chmod does not stop writes)."""
    real = os.access
    blocked = {str(Path(f).resolve()) for f in folders}

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and str(Path(path).resolve()) in blocked:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _no_training(monkeypatch) -> None:
    """Any attempt to load a backbone fails the test: the refusal must come before the work."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr("visiontune.training.plan.create_backbone", refuse)
    monkeypatch.setattr("visiontune.training.plan.scan_data", refuse)


@pytest.fixture
def data(tmp_path) -> Path:
    return make_class_folder(tmp_path / "data", {"cat": 4, "dog": 4})


# ------------------------------------------------------------------ 2: --out checked up front


def test_an_existing_file_as_out_is_refused_before_training(workspace, data, capsys, monkeypatch):
    target = workspace / "cwd" / "taken.txt"
    target.write_text("mine")
    _no_training(monkeypatch)
    code, _, err = _run(["train", data, *HEAD_ARGS, "--out", target], capsys)
    _one_line_error(code, err, "exists and is not a folder")
    assert target.read_text() == "mine"


def test_out_inside_a_file_is_refused(workspace, data, capsys, monkeypatch):
    target = workspace / "cwd" / "taken.txt"
    target.write_text("mine")
    _no_training(monkeypatch)
    code, _, err = _run(["train", data, *HEAD_ARGS, "--out", target / "run"], capsys)
    _one_line_error(code, err, "is a file, not a folder")


def test_a_read_only_out_or_working_directory_is_refused(workspace, data, capsys, monkeypatch):
    cwd = workspace / "cwd"
    _read_only(monkeypatch, cwd)
    _no_training(monkeypatch)
    before = files_under(workspace)
    code, _, err = _run(["train", data, *HEAD_ARGS, "--out", cwd / "new" / "run"], capsys)
    _one_line_error(code, err, "not writable")
    code, _, err = _run(["train", data, *HEAD_ARGS], capsys)  # runs/<time>-... in the cwd
    _one_line_error(code, err, "not writable")
    assert files_under(workspace) == before


@pytest.mark.parametrize("command", ["export", "evaluate", "augment-preview", "extract"])
def test_read_only_targets_of_other_commands(
    workspace, trained_run, trained_data, capsys, monkeypatch, command
):
    locked = workspace / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    argv = {
        "export": ["export", trained_run.run_dir, "--out", locked / "m.onnx"],
        "evaluate": [
            "evaluate",
            trained_run.run_dir,
            trained_data / "test",
            "--report",
            locked / "report",
        ],
        "augment-preview": ["augment-preview", trained_data, "--out", locked / "grid.png"],
        "extract": ["extract", trained_data, "--out", locked / "emb.npz", *TINY_ARGS[:4]],
    }[command]
    before = files_under(workspace)
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "not writable")
    assert files_under(workspace) == before


def test_a_full_disk_while_writing_is_one_line_naming_the_path(
    workspace, data, capsys, monkeypatch
):
    def full(folder, *args, **kwargs):
        path = Path(folder) / "model.safetensors"
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("visiontune.training.run.save_bundle", full)
    out = workspace / "cwd" / "deep" / "run"
    code, _, err = _run(["train", data, *HEAD_ARGS, "--epochs", "1", "--out", out], capsys)
    line = _one_line_error(code, err, "No space left on device")
    assert line.endswith(str(out / "model.safetensors"))
    assert not (workspace / "cwd" / "deep").exists()  # 17: no empty run folder left behind


def test_a_read_only_feature_cache_warns_once_and_training_goes_on(tmp_path, data, monkeypatch):
    from visiontune.features.cache import FeatureCache

    def read_only(self):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.folder))

    monkeypatch.setattr(FeatureCache, "_locked", read_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = visiontune.fit(
            data,
            **{**HEAD, "cache": True},
            cache_dir=str(tmp_path / "ro-cache"),
            out=str(tmp_path / "run"),
        )
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1, [str(w.message) for w in cache_warnings]
    assert "Read-only file system" in str(cache_warnings[0].message)
    assert (result.run_dir / "model.safetensors").is_file()


# ------------------------------------------------------------- 4: a finished run is not replaced


def test_a_finished_run_is_refused_and_overwrite_removes_its_files(workspace, data, capsys):
    run = workspace / "run"
    visiontune.fit(data, **HEAD, epochs=2, out=str(run))
    (run / "model.onnx").write_bytes(b"old export")
    (run / "report").mkdir()
    (run / "report" / "index.html").write_text("<html>")
    (run / "report" / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    before = {p: (run / p).stat().st_mtime_ns for p in files_under(run) if (run / p).is_file()}
    code, _, err = _run(["train", data, *HEAD_ARGS, "--out", run], capsys)
    _one_line_error(code, err, "finished run")
    assert {p: (run / p).stat().st_mtime_ns for p in before} == before

    code, _, err = _run(
        ["train", data, *HEAD_ARGS, "--epochs", "1", "--out", run, "--overwrite"], capsys
    )
    assert code == 0, err
    assert not (run / "model.onnx").exists() and not (run / "report").exists()
    assert (run / "notes.txt").read_text() == "mine"  # not ours: kept
    assert json.loads((run / "config.json").read_text())["training"]["epochs"] == 1


def test_a_finished_ensemble_is_refused_and_overwrite_drops_extra_members(workspace, data):
    root = workspace / "ens"
    visiontune.fit_ensemble(data, members=2, **HEAD, epochs=1, out=str(root))
    with pytest.raises(VisiontuneError, match="finished run"):
        visiontune.fit_ensemble(data, members=1, **HEAD, epochs=1, out=str(root))
    visiontune.fit_ensemble(data, members=1, **HEAD, epochs=1, out=str(root), overwrite=True)
    assert sorted(p.name for p in (root / "members").iterdir()) == ["0"]
    assert len(visiontune.load(root).members) == 1


# ------------------------------------------------------------ 17: no empty run folder remains


@pytest.mark.parametrize(
    "error", [DataError("class dog has no decodable image"), KeyboardInterrupt()]
)
def test_a_failed_head_run_leaves_no_folder(workspace, data, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("visiontune.training.run.train_head_on_features", fail)
    out = workspace / "a" / "b" / "run"
    with pytest.raises(type(error)):
        visiontune.fit(data, **HEAD, out=str(out))
    assert not (workspace / "a").exists()


def test_an_interrupted_end_to_end_run_keeps_its_checkpoint(workspace, data, monkeypatch):
    def interrupted(plan, *args, **kwargs):
        (plan.run_dir / "checkpoint.safetensors").write_bytes(b"state")
        raise KeyboardInterrupt

    monkeypatch.setattr("visiontune.training.run.finetune", interrupted)
    out = workspace / "run"
    with pytest.raises(KeyboardInterrupt):
        visiontune.fit(data, **{**HEAD, "strategy": "full"}, out=str(out))
    assert (out / "checkpoint.safetensors").is_file()


# ------------------------------------------------------------------- 5: macro over present classes


def test_macro_averages_count_only_the_classes_present():
    m = classification_metrics([0, 0, 0], [0, 0, 0], ["cat", "dog", "bird"])
    assert m["accuracy"] == 1.0
    assert m["macro_avg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert m["absent_classes"] == ["dog", "bird"]
    # a class predicted but absent from the data counts (scikit-learn's default labels)
    m = classification_metrics([0, 0], [0, 1], ["cat", "dog", "bird"])
    assert m["macro_avg"]["recall"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert m["absent_classes"] == ["dog", "bird"]


def test_evaluate_on_a_folder_with_one_class_lists_the_others(trained_run, trained_data, tmp_path):
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    for image in (trained_data / "test" / "cat").iterdir():
        (one / "cat" / image.name).write_bytes(image.read_bytes())
    metrics = visiontune.evaluate(trained_run.run_dir, one)
    assert metrics["absent_classes"] == ["bird", "dog"]
    predicted = {
        i for i, row in enumerate(zip(*metrics["confusion_matrix"], strict=True)) if sum(row)
    }
    present = sorted(predicted | {trained_run.model.labels.names.index("cat")})
    names = trained_run.model.labels.names
    f1 = [metrics["per_class"][names[i]]["f1"] for i in present]
    assert metrics["macro_avg"]["f1"] == pytest.approx(sum(f1) / len(f1))


# ---------------------------------------------- 13, 14, 19: system, unsupported and stray files


def _macos_zip(root: Path) -> Path:
    data = make_class_folder(root, {"cat": 3, "dog": 3})
    for name in ("cat", "dog"):
        (data / "__MACOSX" / name).mkdir(parents=True)
        (data / "__MACOSX" / name / f"._{name}_0.png").write_bytes(b"\0\5\26\7AppleDouble")
        (data / name / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (data / name / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (data / "__MACOSX" / "._cat").write_bytes(b"\0\5\26\7")
    return data


def test_macosx_folders_and_system_files_are_ignored(tmp_path):
    data = _macos_zip(tmp_path / "data")
    splits = scan_folder(data, val_fraction=0.0)
    assert splits.labels.names == ("cat", "dog")
    assert splits.left_out == {}
    report = check_folder(data, workers=0)
    assert all("__MACOSX" not in path for f in report.findings for path in f.files)
    assert {f.type for f in report.findings} == {"class-counts"}


def test_macosx_in_a_split_layout_is_not_a_class(tmp_path):
    data = make_split_folder(tmp_path / "data", {"train": {"a": 3, "b": 3}, "test": {"a": 2}})
    (data / "train" / "__MACOSX" / "a").mkdir(parents=True)
    (data / "train" / "__MACOSX" / "a" / "._a_0.png").write_bytes(b"\0\5\26\7")
    assert scan_folder(data).labels.names == ("a", "b")


@pytest.mark.skipif(
    ".heic" in visiontune.data.folder.IMAGE_EXTENSIONS,
    reason="pillow-heif installed: .heic is read",
)
def test_unsupported_files_are_reported_by_check_and_train(tmp_path, data):
    heic = data / "cat" / "IMG_0001.heic"
    solid_image((200, 50, 40)).save(heic, format="JPEG")  # a JPEG named .heic, as some apps do
    notes = data / "dog" / "notes.txt"
    notes.write_text("taken in March")
    report = check_folder(data, workers=0)
    found = {f.files[0]: f for f in report.of_type("unsupported-file")}
    assert set(found) == {str(heic), str(notes)}
    assert found[str(heic)].severity == "warning"
    assert "pillow-heif" in found[str(heic)].message
    result = visiontune.fit(data, **HEAD, epochs=1, out=str(tmp_path / "run"))
    left_out = result.metrics["data_checks"]["left_out"]
    assert left_out[str(heic)]["type"] == "unsupported-file"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["data_checks"]["left_out"]) == {str(heic), str(notes)}


def test_a_stray_image_in_the_root_is_reported(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", {"cat": 4, "dog": 4})
    stray = data / "cat_99.png"
    solid_image((10, 10, 10)).save(stray)
    report = check_folder(data, workers=0)
    assert [f.files for f in report.of_type("stray-image")] == [[str(stray)]]
    assert report.of_type("stray-image")[0].severity == "warning"
    code, _, err = _run(
        [
            "train",
            data,
            *TINY_ARGS,
            "--strategy",
            "head",
            "--no-cache",
            "--epochs",
            "1",
            "--out",
            tmp_path / "run",
        ],
        capsys,
    )
    assert code == 0, err
    assert "not used (1 stray-image)" in " ".join(err.split())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["data_checks"]["left_out"]) == [str(stray)]


def test_stray_images_in_a_split_layout(tmp_path):
    data = make_split_folder(
        tmp_path / "data", {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}}
    )
    solid_image((1, 2, 3)).save(data / "loose.png")
    solid_image((1, 2, 3)).save(data / "train" / "loose.jpg")
    types = {Path(p).name: i["type"] for p, i in scan_folder(data).left_out.items()}
    assert types == {"loose.png": "stray-image", "loose.jpg": "stray-image"}


def test_extract_takes_a_single_class_folder_but_train_refuses_it(tmp_path):
    data = make_class_folder(tmp_path / "data", {"only": 3})
    summary = visiontune.extract(data, tmp_path / "emb.npz", **TINY, cache=False, workers=0)
    assert summary["rows"] == 3
    with pytest.raises(DataError, match="single class"):
        visiontune.fit(data, **HEAD, out=str(tmp_path / "run"))
