"""DATA as a manifest: CSV and Parquet files and DataFrames, the split and group columns, every
bad-manifest message with its row, check's group leakage, multi-label cells, the manifest
options of every command, and runs that record their manifest."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, files_under, make_class_folder, make_split_folder

import visiontune
from visiontune.cli import build_parser, main
from visiontune.config import manifest_columns
from visiontune.data.dataset import scan_data
from visiontune.data.folder import scan_folder
from visiontune.data.manifest import ManifestColumns, scan_manifest
from visiontune.errors import DataError

TINY_ARGS = ["--backbone", TINY["backbone"], "--weights", TINY["weights"], "--no-progress"]


def _rows(root: Path, *, splits=("train", "test"), groups: int | None = None) -> list[dict]:
    """One row per image of ``root/<split>/<class>/``, paths relative to ``root``."""
    rows = []
    for split in splits:
        for i, path in enumerate(sorted((root / split).rglob("*.png"))):
            row = {"path": path.relative_to(root).as_posix(), "label": path.parent.name}
            row["split"] = split
            if groups:
                row["group"] = f"g{i % groups}"
            rows.append(row)
    return rows


def _write(path: Path, rows: list[dict], columns=None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row_of(rows: list[dict], path: str) -> int:
    """The file line of ``path``'s row (header = 1)."""
    return next(i for i, r in enumerate(rows) if r["path"] == path) + 2


@pytest.fixture
def images(tmp_path) -> Path:
    """``data/train/{cat,dog}/`` 8 images each, ``data/test/{cat,dog}/`` 3 each."""
    return make_split_folder(
        tmp_path / "data", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 3, "dog": 3}}
    )


def _paths(samples) -> list[str]:
    return sorted(str(s.path) for s in samples)


def _same_splits(a, b) -> None:
    assert a.labels.names == b.labels.names
    for part in ("train", "val", "test"):
        assert _paths(getattr(a, part)) == _paths(getattr(b, part)), part
        assert sorted((str(s.path), s.label) for s in getattr(a, part)) == sorted(
            (str(s.path), s.label) for s in getattr(b, part)
        )


def _cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------- reading files and columns


def test_csv_parquet_and_frame_give_the_same_splits(images, tmp_path, monkeypatch):
    rows = _rows(images)
    csv_path = _write(images / "m.csv", rows)
    pd.DataFrame(rows).to_parquet(images / "m.parquet")
    monkeypatch.chdir(tmp_path)  # relative paths start from the manifest's folder, not the cwd
    a, b = scan_manifest(csv_path, seed=4), scan_manifest(images / "m.parquet", seed=4)
    c = scan_manifest(pd.DataFrame(rows), root=images, seed=4)
    _same_splits(a, b)
    _same_splits(a, c)
    assert a.labels.names == ("cat", "dog")
    assert len(a.train) + len(a.val) == 16 and len(a.test) == 6 and a.val_source == "held-out"
    assert all(s.path.is_file() and s.path.is_relative_to(images) for s in a.train + a.test)
    assert a.layout == "manifest" and a.manifest["path"] == str(csv_path)
    assert a.manifest["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert a.summary() == scan_data(csv_path, seed=4).summary()


@pytest.mark.parametrize(
    "path_name, label_name", [("image", "class"), ("Image", "CLASS"), ("PATH", "Label")]
)
def test_default_column_names_in_any_letter_case(images, path_name, label_name):
    rows = [
        {path_name: r["path"], label_name: r["label"], "Split": r["split"]} for r in _rows(images)
    ]
    splits = scan_manifest(_write(images / "m.csv", rows))
    assert splits.manifest["columns"] == {
        "path": path_name,
        "label": label_name,
        "split": "Split",
        "group": None,
    }
    assert len(splits.test) == 6 and splits.labels.names == ("cat", "dog")


def test_absolute_paths_and_named_columns(images, tmp_path, monkeypatch, capsys):
    rows = [
        {"photo": str(images / r["path"]), "Diagnosis": r["label"], "SPLIT": r["split"]}
        for r in _rows(images)
    ]
    path = _write(tmp_path / "elsewhere.csv", rows)  # not beside the images
    with pytest.raises(DataError, match=r"no path column.*--path-column.*photo, Diagnosis, SPLIT"):
        scan_manifest(path)
    splits = scan_manifest(path, ManifestColumns(path="PHOTO", label="diagnosis"))
    assert all(s.path.is_absolute() and s.path.is_file() for s in splits.train + splits.test)
    assert len(splits.test) == 6 and splits.manifest["columns"]["label"] == "Diagnosis"
    monkeypatch.chdir(images)
    code, out, err = _cli(["check", path, "--no-near-duplicates", "--workers", "0"], capsys)
    assert code == 2 and "no path column" in err
    argv = ["check", path, "--path-column", "photo", "--label-column", "Diagnosis"]
    code, out, err = _cli([*argv, "--no-near-duplicates", "--workers", "0"], capsys)
    assert code == 0, err
    assert "manifest layout" in out and "test: cat 3, dog 3" in out


# ----------------------------------------------------------------------- the split column


def test_split_column_aliases_and_a_val_split(images):
    rows = _rows(images)
    for i, row in enumerate(rows):
        row["split"] = {"train": "Train" if i % 4 else "VALID", "test": "Test"}[row["split"]]
    splits = scan_manifest(_write(images / "m.csv", rows))
    assert splits.val_source == "split-column"
    expected = {
        name: sorted(str(images / r["path"]) for r in rows if r["split"] == name)
        for name in ("Train", "VALID", "Test")
    }
    assert _paths(splits.train) == expected["Train"] and len(splits.train) == 12
    assert _paths(splits.val) == expected["VALID"] and len(splits.val) == 4
    assert _paths(splits.test) == expected["Test"] and len(splits.test) == 6


def test_without_val_rows_validation_is_held_out_of_train(images):
    rows = _rows(images)
    splits = scan_manifest(_write(images / "m.csv", rows), val_fraction=0.25, seed=1)
    train_rows = sorted(str(images / r["path"]) for r in rows if r["split"] == "train")
    assert splits.val_source == "held-out"
    assert sorted(_paths(splits.train) + _paths(splits.val)) == train_rows
    assert not set(_paths(splits.train)) & set(_paths(splits.val))
    assert sorted(s.label for s in splits.val) == [0, 0, 1, 1]  # a quarter of each class
    again = scan_manifest(images / "m.csv", val_fraction=0.25, seed=1)
    assert _paths(again.val) == _paths(splits.val)


def _spy_on_splitters(monkeypatch) -> list[str]:
    from sklearn import model_selection

    used: list[str] = []
    for name in ("StratifiedGroupKFold", "GroupShuffleSplit"):
        cls = getattr(model_selection, name)

        def split(self, *args, _original=cls.split, _name=name, **kwargs):
            used.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "split", split)
    return used


@pytest.mark.parametrize(
    "groups, splitter", [(3, "GroupShuffleSplit"), (12, "StratifiedGroupKFold")]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_validation_never_shares_a_group(images, monkeypatch, groups, splitter, seed):
    used = _spy_on_splitters(monkeypatch)
    path = _write(images / "m.csv", _rows(images, splits=("train",), groups=groups))
    splits = scan_manifest(path, ManifestColumns(group="group"), val_fraction=0.25, seed=seed)
    assert used == [splitter]
    train, val = {s.group for s in splits.train}, {s.group for s in splits.val}
    assert val and train and not train & val
    assert train | val == {f"g{i}" for i in range(groups)}
    assert splits.val_source == "held-out by group"
    assert len(splits.train) + len(splits.val) == 16


# ------------------------------------------------------------------------- bad manifests


def _bad(images: Path, edit) -> Path:
    rows = _rows(images)
    edit(rows)
    return _write(images / "bad.csv", rows, columns=list(dict.fromkeys(k for r in rows for k in r)))


def _missing_file(rows):
    rows[2]["path"] = "train/cat/nope.png"


def _blank_label(rows):
    rows[4]["label"] = ""


def _blank_path(rows):
    rows[7]["path"] = "  "


def _odd_split(rows):
    rows[1]["split"] = "holdout"


def _twice(rows):
    rows.append(dict(rows[0]))


def _leak(rows):
    rows.append({**rows[0], "split": "test"})


def _typo(rows):
    rows[3]["label"] = "cta"


def _test_only(rows):
    rows[-1]["label"] = rows[-2]["label"] = "bird"


def _no_train(rows):
    for row in rows:
        row["split"] = "test"


def _one_label(rows):
    for row in rows:
        row["label"] = "cat"


@pytest.mark.parametrize(
    "edit, message",
    [
        (_missing_file, r"row 4: no such file, e\.g\. .*nope\.png \(relative paths start from"),
        (_blank_label, r"row 6: no label \(column 'label'\)"),
        (_blank_path, r"row 9: no path \(column 'path'\)"),
        (_odd_split, r"row 3: split 'holdout' is not one of train, val, test"),
        (_twice, r"rows 2 and 24 list .*train/cat/cat_0\.png twice"),
        (_leak, r"rows 2 and 24 list .* in train and test: .*leaks"),
        (_typo, r"label 'cta' appears once \(row 5\)"),
        (_test_only, r"label 'bird' \(rows 22, 23\) has no train rows"),
        (_no_train, r"split column 'split' has no train rows"),
        (_one_label, r"a single label \('cat'\)"),
    ],
)
def test_bad_manifests_name_their_rows(images, edit, message):
    with pytest.raises(DataError, match=message):
        scan_manifest(_bad(images, edit))


def test_missing_columns_empty_and_unreadable_manifests(images, tmp_path):
    rows = [{"image": r["path"], "kind": r["label"]} for r in _rows(images)]
    with pytest.raises(DataError, match=r"no label column.*columns: image, kind"):
        scan_manifest(_write(images / "m.csv", rows))
    rows = [{"picture": r["path"], "label": r["label"]} for r in _rows(images)]
    with pytest.raises(DataError, match=r"no path column.*columns: picture, label"):
        scan_manifest(_write(images / "m.csv", rows))
    with pytest.raises(DataError, match=r"no group column 'patient' \(columns: picture, label\)"):
        scan_manifest(images / "m.csv", ManifestColumns(path="picture", group="patient"))
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="has no rows"):
        scan_manifest(tmp_path / "empty.csv")
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(DataError, match="zero.csv: not a readable csv manifest"):
        scan_manifest(tmp_path / "zero.csv")
    (tmp_path / "latin.csv").write_bytes(b"path,label\n\xff\xfe\xe9t\xe9.png,caf\xe9\n")
    with pytest.raises(DataError, match="latin.csv: not a readable csv manifest"):
        scan_manifest(tmp_path / "latin.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet manifest"):
        scan_manifest(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="no such manifest file"):
        scan_manifest(tmp_path / "absent.csv")


def test_rows_are_numbered_by_position_in_parquet_files_and_frames(images):
    frame = pd.DataFrame(_rows(images)).iloc[::-1]  # a stored index that is not 0, 1, 2...
    frame.iloc[3, frame.columns.get_loc("split")] = "holdout"
    frame.to_parquet(images / "m.parquet")
    assert not pd.read_parquet(images / "m.parquet").index.equals(pd.RangeIndex(len(frame)))
    with pytest.raises(DataError, match=r"row 5: split 'holdout' is not one of"):
        scan_manifest(images / "m.parquet")
    with pytest.raises(DataError, match=r"row 5: split 'holdout' is not one of"):
        scan_manifest(frame, root=images)
    frame = pd.DataFrame(_rows(images))
    frame.loc[2, "path"] = None  # NaN in pandas' string column: a blank cell, not "nan"
    with pytest.raises(DataError, match=r"row 4: no path \(column 'path'\)"):
        scan_manifest(frame, root=images)


@pytest.mark.parametrize(
    "edit, message", [(_typo, "label 'cta' appears once (row 5)"), (_leak, "rows 2 and 24 list")]
)
def test_cli_refuses_a_bad_manifest_and_writes_nothing(
    images, tmp_path, monkeypatch, capsys, edit, message
):
    bad = _bad(images, edit)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where a default runs/ folder would appear
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    before = files_under(tmp_path)
    argv = ["train", bad, "--strategy", "head", *TINY_ARGS, "--workers", "0"]
    for extra in ([], ["--out", tmp_path / "run"]):
        code, out, err = _cli([*argv, *extra], capsys)
        assert code == 2, err
        assert err.strip().splitlines() == [err.strip()] and err.startswith("visiontune: error: ")
        assert message in err and "Traceback" not in err
        assert files_under(tmp_path) == before  # no run folder, no cache, nothing


# ------------------------------------------------------------------------------ check


def test_check_reports_groups_straddling_train_and_test(images, monkeypatch, capsys):
    rows = _rows(images, groups=3)  # g0..g2 in train and in test
    path = _write(images / "m.csv", rows)
    monkeypatch.chdir(images.parent)
    argv = ["check", path, "--group-column", "GROUP", "--no-near-duplicates", "--workers", "0"]
    code, out, _ = _cli(argv, capsys)
    assert code == 1
    first = "test/cat/cat_0.png"
    assert "group-leakage" in out and "3 group(s) in both train and test (g0, g1, g2)" in out
    assert f"e.g. {first} (row {_row_of(rows, first)})" in out
    code, out, _ = _cli([*argv, "--json"], capsys)
    (found,) = [f for f in json.loads(out)["findings"] if f["type"] == "group-leakage"]
    assert found["severity"] == "error" and len(found["files"]) == 6
    for row in rows:  # groups of their own per split: no finding
        row["group"] = row["split"] + row["group"]
    _write(path, rows)
    code, out, _ = _cli(argv, capsys)
    assert code == 0 and "group-leakage" not in out
    report = visiontune.check(path, columns=ManifestColumns(group="group"), near_duplicates=False)
    assert not report.of_type("group-leakage") and not report.has_errors
    no_groups = visiontune.check(path, near_duplicates=False)  # without --group-column: none
    assert not no_groups.of_type("group-leakage")


def test_check_names_the_row_of_an_unreadable_image(images, capsys):
    rows = _rows(images)
    broken = images / "train" / "cat" / "cat_1.png"
    broken.write_bytes(b"not an image at all")
    path = _write(images / "m.csv", rows)
    row = _row_of(rows, "train/cat/cat_1.png")
    assert main(["check", str(path), "--no-near-duplicates", "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "unreadable" in out and f"train/cat/cat_1.png (row {row})" in out


# ------------------------------------------------------------------------ multi-label


def _hot(splits) -> dict[str, tuple[int, ...]]:
    """Each sample's multi-hot row, keyed by ``<split>/<class>/<file>`` (names repeat across
    splits)."""
    samples = splits.train + splits.val + splits.test
    return {"/".join(s.path.parts[-3:]): s.multi_hot for s in samples}


def test_multi_label_cells_give_multi_hot_rows(images):
    rows = _rows(images)
    rows[0]["label"] = "cat;dog"
    rows[9]["label"] = "dog ; cat"  # spaces and order do not matter
    splits = scan_manifest(_write(images / "m.csv", rows))
    hot = _hot(splits)
    assert splits.multi_label and splits.summary()["multi_label"] is True
    assert hot.pop("train/cat/cat_0.png") == (1, 1) and hot.pop("train/dog/dog_1.png") == (1, 1)
    assert all(v == ((1, 0) if "/cat/" in name else (0, 1)) for name, v in hot.items())
    assert all(s.target == s.multi_hot for s in splits.train)
    assert not scan_manifest(_write(images / "single.csv", _rows(images))).multi_label


def test_label_delimiter_and_multi_label_options(images):
    rows = _rows(images)
    rows[0]["label"] = "cat|dog"
    path = _write(images / "m.csv", rows)
    with pytest.raises(DataError, match=r"label 'cat\|dog' appears once \(row 2\)"):
        scan_manifest(path)  # the default ";" does not split it
    piped = scan_manifest(path, ManifestColumns(delimiter="|"))
    assert piped.multi_label and _hot(piped)["train/cat/cat_0.png"] == (1, 1)
    rows[0]["label"] = "cat"
    forced = scan_manifest(_write(path, rows), ManifestColumns(multi_label=True))
    hot = _hot(forced)
    assert forced.multi_label and set(hot.values()) == {(1, 0), (0, 1)}
    assert all(v == ((1, 0) if "/cat/" in name else (0, 1)) for name, v in hot.items())


COMMANDS = {
    "train": ["train", "m.csv"],
    "check": ["check", "m.csv"],
    "advise": ["advise", "m.csv"],
    "audit": ["audit", "m.csv"],
    "evaluate": ["evaluate", "run", "m.csv"],
    "extract": ["extract", "m.csv", "--out", "f.parquet"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_reads_the_manifest_options(command):
    parser = build_parser()
    assert manifest_columns(parser.parse_args(COMMANDS[command])) == ManifestColumns()
    options = ["--path-column", "photo", "--label-column", "Diagnosis", "--group-column", "g"]
    options += ["--label-delimiter", "|", "--multi-label"]
    args = parser.parse_args([*COMMANDS[command], *options])
    assert manifest_columns(args) == ManifestColumns(
        path="photo", label="Diagnosis", group="g", delimiter="|", multi_label=True
    )


# ----------------------------------------------------------------------- runs and evaluation


def test_a_run_records_its_manifest_and_evaluates_from_it(images, tmp_path, monkeypatch, capsys):
    path = _write(images / "m.csv", _rows(images))
    monkeypatch.chdir(tmp_path)  # the manifest's relative paths still start from its folder
    run = tmp_path / "run"
    visiontune.fit(path, strategy="head", out=str(run), progress=False, workers=0, **TINY)
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["layout"] == "manifest" and data["manifest"]["path"] == str(path.resolve())
    assert data["manifest"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data["manifest"]["columns"] == {
        "path": "path",
        "label": "label",
        "split": "split",
        "group": None,
    }
    assert data["train"] + data["val"] == 16 and data["test"] == 6
    assert visiontune.evaluate(run, path, workers=0)["num_images"] == 6  # the test rows
    rows = [{"photo": str(images / r["path"]), "kind": r["label"]} for r in _rows(images)]
    whole = _write(tmp_path / "all.csv", rows)
    columns = ManifestColumns(path="photo", label="kind")
    assert visiontune.evaluate(run, whole, workers=0, columns=columns)["num_images"] == 22
    argv = ["evaluate", run, whole, "--path-column", "photo", "--label-column", "kind"]
    code, out, err = _cli([*argv, "--json", "--workers", "0"], capsys)
    assert code == 0, err
    assert json.loads(out)["num_images"] == 22  # no split column: every row


def test_a_dataframe_is_saved_under_the_cache(images, tmp_path, monkeypatch):
    monkeypatch.chdir(images)  # a DataFrame's relative paths start from the cwd
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    frame = pd.DataFrame(_rows(images))
    result = visiontune.fit(
        frame, strategy="head", out=str(tmp_path / "run"), progress=False, workers=0, **TINY
    )
    config = json.loads((result.run_dir / "config.json").read_text())
    saved = Path(config["training"]["data"])
    assert saved.parent == tmp_path / "cache" / "manifests" and saved.suffix == ".csv"
    assert config["data"]["manifest"]["path"] == str(saved.resolve())
    assert config["data"]["test"] == 6
    written = pd.read_csv(saved)
    assert list(written["path"]) == [str(images / p) for p in frame["path"]]
    assert list(written["label"]) == list(frame["label"])


def test_a_dataframe_with_named_columns_trains(images, tmp_path, monkeypatch):
    monkeypatch.chdir(images)
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    frame = pd.DataFrame([{"photo": r["path"], "kind": r["label"]} for r in _rows(images)])
    result = visiontune.fit(
        frame,
        path_column="photo",
        label_column="kind",
        strategy="head",
        out=str(tmp_path / "run"),
        progress=False,
        workers=0,
        **TINY,
    )
    assert (result.run_dir / "config.json").is_file()


# ---------------------------------------------------------------------------- folders


def test_folders_scan_as_before(images, tmp_path):
    flat = make_class_folder(tmp_path / "flat", {"cat": 5, "dog": 7})
    for folder in (images, flat):
        via_data, via_folder = scan_data(folder, seed=3), scan_folder(folder, seed=3)
        assert via_data.summary() == via_folder.summary() and via_data.layout != "manifest"
        _same_splits(via_data, via_folder)
        assert via_data.manifest == {} and not via_data.multi_label
        assert scan_data(folder, ManifestColumns(), seed=3).summary() == via_folder.summary()
    for columns in (ManifestColumns(label="diagnosis"), ManifestColumns(multi_label=True)):
        with pytest.raises(DataError, match="is a folder: --path-column"):
            scan_data(images, columns)
