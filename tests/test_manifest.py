"""DATA as a manifest: CSV and Parquet files and DataFrames, the split and group columns, every
bad-manifest message with its row, check's group leakage, and runs that record their manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, files_under, make_split_folder

import visiontune
from visiontune.cli import main
from visiontune.data.dataset import scan_data
from visiontune.data.folder import scan_folder
from visiontune.data.manifest import ManifestColumns, scan_manifest
from visiontune.errors import DataError


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


@pytest.fixture
def images(tmp_path) -> Path:
    return make_split_folder(
        tmp_path / "data", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 3, "dog": 3}}
    )


def _paths(samples) -> list[str]:
    return sorted(str(s.path) for s in samples)


def test_csv_parquet_and_frame_give_the_same_splits(images, tmp_path, monkeypatch):
    rows = _rows(images)
    csv_path = _write(images / "m.csv", rows)
    pd.DataFrame(rows).to_parquet(images / "m.parquet")
    monkeypatch.chdir(tmp_path)  # relative paths start from the manifest's folder, not the cwd
    a, b = scan_manifest(csv_path), scan_manifest(images / "m.parquet")
    c = scan_manifest(pd.DataFrame(rows), root=images)
    for other in (b, c):
        assert other.labels.names == a.labels.names == ("cat", "dog")
        assert _paths(other.train) == _paths(a.train) and _paths(other.test) == _paths(a.test)
    assert len(a.train) + len(a.val) == 16 and len(a.test) == 6 and a.val_source == "held-out"
    assert a.layout == "manifest" and a.manifest["sha256"] and a.manifest["path"] == str(csv_path)


def test_absolute_paths_and_named_columns(images, tmp_path):
    rows = [
        {"File": str(images / r["path"]), "Diagnosis": r["label"], "SPLIT": r["split"]}
        for r in _rows(images)
    ]
    path = _write(tmp_path / "elsewhere.csv", rows)
    with pytest.raises(DataError, match="no label column.*--label-column"):
        scan_manifest(path)
    splits = scan_manifest(path, ManifestColumns(path="file", label="diagnosis"))
    assert all(s.path.is_absolute() and s.path.is_file() for s in splits.train + splits.test)
    assert len(splits.test) == 6


def test_split_column_aliases_and_a_val_split(images):
    rows = _rows(images)
    for i, row in enumerate(rows):
        row["split"] = {"train": "Train" if i % 4 else "VALID", "test": "Test"}[row["split"]]
    splits = scan_manifest(_write(images / "m.csv", rows))
    assert splits.val_source == "split-column"
    assert len(splits.val) == 4 and len(splits.train) == 12 and len(splits.test) == 6


@pytest.mark.parametrize("groups", [3, 12])  # few: GroupShuffleSplit; many: StratifiedGroupKFold
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_validation_never_shares_a_group(images, groups, seed):
    path = _write(images / "m.csv", _rows(images, splits=("train",), groups=groups))
    splits = scan_manifest(path, ManifestColumns(group="group"), val_fraction=0.25, seed=seed)
    train, val = {s.group for s in splits.train}, {s.group for s in splits.val}
    assert val and train and not train & val
    assert splits.val_source == "held-out by group"
    assert len(splits.train) + len(splits.val) == 16


def _bad(images: Path, edit) -> Path:
    rows = _rows(images)
    edit(rows)
    return _write(images / "bad.csv", rows, columns=list(dict.fromkeys(k for r in rows for k in r)))


def _missing_file(rows):
    rows[2]["path"] = "train/cat/nope.png"


def _blank_label(rows):
    rows[4]["label"] = ""


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


@pytest.mark.parametrize(
    "edit, message",
    [
        (_missing_file, r"row 4: no such file, e\.g\. .*nope\.png"),
        (_blank_label, r"row 6: no label \(column 'label'\)"),
        (_odd_split, r"row 3: split 'holdout' is not one of train, val, test"),
        (_twice, r"rows 2 and 24 list .*cat_0\.png twice"),
        (_leak, r"rows 2 and 24 list .* in train and test: .*leaks"),
        (_typo, r"label 'cta' appears once \(row 5\)"),
        (_test_only, r"label 'bird' \(rows 22, 23\) has no train rows"),
        (_no_train, r"split column 'split' has no train rows"),
    ],
)
def test_bad_manifests_name_their_rows(images, edit, message):
    with pytest.raises(DataError, match=message):
        scan_manifest(_bad(images, edit))


def test_missing_columns_empty_and_unreadable_manifests(images, tmp_path):
    rows = [{"image": r["path"], "kind": r["label"]} for r in _rows(images)]
    with pytest.raises(DataError, match=r"no label column.*columns: image, kind"):
        scan_manifest(_write(images / "m.csv", rows))
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="has no rows"):
        scan_manifest(tmp_path / "empty.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet manifest"):
        scan_manifest(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="no such manifest file"):
        scan_manifest(tmp_path / "absent.csv")


def test_cli_refuses_a_bad_manifest_and_writes_nothing(images, tmp_path, capsys):
    bad = _bad(images, _typo)
    out = tmp_path / "run"
    code = main(["train", str(bad), "--strategy", "head", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "label 'cta' appears once (row 5)" in err and "Traceback" not in err
    assert not out.exists() and files_under(tmp_path / "run") == set()


def test_check_reports_groups_straddling_train_and_test(images, capsys):
    rows = _rows(images, groups=3)  # g0..g2 in train and in test
    path = _write(images / "m.csv", rows)
    assert main(["check", str(path), "--group-column", "group", "--no-near-duplicates"]) == 1
    out = capsys.readouterr().out
    assert "group-leakage" in out and "(row " in out
    for row in rows:  # groups of their own per split: no finding
        row["group"] = row["split"] + row["group"]
    _write(path, rows)
    report = visiontune.check(path, columns=ManifestColumns(group="group"), near_duplicates=False)
    assert not report.of_type("group-leakage")


def test_multi_label_cells_give_multi_hot_rows(images):
    rows = _rows(images)
    rows[0]["label"] = "cat;dog"
    splits = scan_manifest(_write(images / "m.csv", rows))
    both = next(s for s in splits.train + splits.val if s.path.name == "cat_0.png")
    assert splits.multi_label and both.multi_hot == (1, 1)
    assert all(sum(s.multi_hot) == 1 for s in splits.train + splits.val if s is not both)
    rows[0]["label"] = "cat|dog"
    piped = scan_manifest(_write(images / "m.csv", rows), ManifestColumns(delimiter="|"))
    assert piped.multi_label
    rows[0]["label"] = "cat"
    forced = scan_manifest(_write(images / "m.csv", rows), ManifestColumns(multi_label=True))
    assert forced.multi_label and {s.multi_hot for s in forced.train} == {(1, 0), (0, 1)}


def test_a_run_records_its_manifest_and_evaluates_from_it(images, tmp_path):
    path = _write(images / "m.csv", _rows(images))
    run = tmp_path / "run"
    visiontune.fit(path, strategy="head", out=str(run), progress=False, workers=0, **TINY)
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["layout"] == "manifest" and data["manifest"]["path"] == str(path.resolve())
    assert data["manifest"]["columns"]["split"] == "split" and len(data["manifest"]["sha256"]) == 64
    assert visiontune.evaluate(run, path)["num_images"] == 6  # the test rows
    whole = _write(
        tmp_path / "all.csv",
        [{"path": str(images / r["path"]), "label": r["label"]} for r in _rows(images)],
    )
    assert visiontune.evaluate(run, whole)["num_images"] == 22  # no split column: every row


def test_a_dataframe_is_saved_beside_the_cache(images, tmp_path, monkeypatch):
    monkeypatch.chdir(images)  # a DataFrame's relative paths start from the cwd
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    frame = pd.DataFrame(_rows(images))
    result = visiontune.fit(
        frame, strategy="head", out=str(tmp_path / "run"), progress=False, workers=0, **TINY
    )
    saved = Path(json.loads((result.run_dir / "config.json").read_text())["training"]["data"])
    assert saved.parent == tmp_path / "cache" / "manifests" and saved.suffix == ".csv"
    assert len(pd.read_csv(saved)) == len(frame)


def test_folders_scan_as_before(images):
    via_data, via_folder = scan_data(images, seed=3), scan_folder(images, seed=3)
    assert via_data.summary() == via_folder.summary()
    assert _paths(via_data.val) == _paths(via_folder.val)
    with pytest.raises(DataError, match="is a folder"):
        scan_data(images, ManifestColumns(label="diagnosis"))


def test_check_names_the_row_of_an_unreadable_image(images, capsys):
    rows = _rows(images)
    broken = images / "train" / "cat" / "cat_1.png"
    broken.write_bytes(b"not an image at all")
    path = _write(images / "m.csv", rows)
    row = next(i for i, r in enumerate(rows) if r["path"] == "train/cat/cat_1.png") + 2
    assert main(["check", str(path), "--no-near-duplicates"]) == 1
    out = capsys.readouterr().out
    assert "unreadable" in out and f"train/cat/cat_1.png (row {row})" in out
