"""Scanning DATA: the two layouts, split and class names in any case, the stratified split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import make_class_folder, make_split_folder

from visiontune.config import TrainConfig
from visiontune.data.folder import (
    Sample,
    list_images,
    scan_class_folder,
    scan_folder,
    stratified_split,
)
from visiontune.errors import DataError, VisiontuneError
from visiontune.specs import LabelMap


def _names(samples, labels) -> Counter:
    """(class name, file's parent folder name lowered) pairs: checks each label points at its
    folder."""
    return Counter((labels.names[s.label], s.path.parent.name.lower()) for s in samples)


# ------------------------------------------------------------------------------ flat layout


def test_flat_class_folders(tmp_path):
    root = make_class_folder(tmp_path / "d", {"dog": 10, "cat": 10, "bird": 4})
    splits = scan_folder(root, val_fraction=0.2, seed=0)
    assert splits.layout == "classes"
    assert splits.labels.names == ("bird", "cat", "dog")  # sorted, index order
    assert splits.test == []
    assert splits.val_source == "held-out"
    everything = splits.train + splits.val
    assert len(everything) == 24
    assert len({s.path for s in everything}) == 24  # no image in both parts
    for s in everything:  # every label is its folder's class
        assert splits.labels.names[s.label] == s.path.parent.name
    assert Counter(splits.labels.names[s.label] for s in splits.val) == {
        "dog": 2,
        "cat": 2,
        "bird": 1,
    }
    assert splits.summary()["train"] == len(splits.train)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".hidden.png").write_bytes((root / "a" / "a_0.png").read_bytes())
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes((root / "a" / "a_0.png").read_bytes())
    (root / "a" / "UPPER.JPG").write_bytes((root / "a" / "a_0.png").read_bytes())
    splits = scan_folder(root, val_fraction=0.0)
    assert splits.labels.names == ("a", "b")
    names = sorted(s.path.name for s in splits.train)
    assert names == ["UPPER.JPG", "a_0.png", "a_1.png", "a_2.png", "b_0.png", "b_1.png", "b_2.png"]


def test_images_in_nested_sub_folders_belong_to_their_class(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 2, "b": 2})
    nested = root / "a" / "more" / "deeper"
    nested.mkdir(parents=True)
    (nested / "x.png").write_bytes((root / "a" / "a_0.png").read_bytes())
    labels, samples = scan_class_folder(root)
    assert Counter(labels.names[s.label] for s in samples) == {"a": 3, "b": 2}
    assert list_images(root / "a")[-1] == nested / "x.png"


# ----------------------------------------------------------------------------- split layout


def test_split_layout_with_val_and_test(split_folder):
    splits = scan_folder(split_folder, val_fraction=0.5)
    assert splits.layout == "splits"
    assert splits.val_source == "folder"  # the val folder is used as is, nothing held out
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)
    assert all(s.path.parts[-3] == "train" for s in splits.train)
    assert all(s.path.parts[-3] == "val" for s in splits.val)
    assert all(s.path.parts[-3] == "test" for s in splits.test)
    for part in (splits.train, splits.val, splits.test):
        assert all(splits.labels.names[s.label] == s.path.parent.name for s in part)


def test_split_layout_without_val_holds_validation_out_of_train(tmp_path):
    root = make_split_folder(
        tmp_path / "d", {"train": {"cat": 10, "dog": 10}, "test": {"cat": 2, "dog": 2}}
    )
    splits = scan_folder(root, val_fraction=0.3, seed=1)
    assert splits.layout == "splits"
    assert splits.val_source == "held-out"
    assert len(splits.test) == 4
    assert Counter(s.label for s in splits.val) == {0: 3, 1: 3}
    assert all(s.path.parts[-3] == "train" for s in splits.train + splits.val)


@pytest.mark.parametrize(
    "train, val, test",
    [
        ("TRAIN", "VALID", "Test"),
        ("Train", "validation", "TEST"),
        ("training", "Val", "testing"),
        ("train", "VALIDATION", "test"),
    ],
)
def test_split_folder_names_in_any_case(tmp_path, train, val, test):
    root = make_split_folder(
        tmp_path / "d",
        {train: {"cat": 3, "dog": 3}, val: {"cat": 1, "dog": 1}, test: {"cat": 2, "dog": 2}},
    )
    splits = scan_folder(root)
    assert splits.layout == "splits"
    assert splits.val_source == "folder"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 4)
    assert {s.path.parts[-3] for s in splits.test} == {test}
    assert {s.path.parts[-3] for s in splits.val} == {val}


def test_class_names_match_across_splits_ignoring_case(tmp_path):
    root = make_split_folder(
        tmp_path / "d",
        {
            "train": {"Cat": 3, "dog": 3},
            "val": {"CAT": 1, "Dog": 1},
            "test": {"cat": 2, "DOG": 2},
        },
    )
    splits = scan_folder(root)
    assert splits.labels.names == ("Cat", "dog")  # as spelled in train
    for part in (splits.train, splits.val, splits.test):
        assert _names(part, splits.labels).keys() <= {("Cat", "cat"), ("dog", "dog")}
    assert Counter(s.label for s in splits.test) == {0: 2, 1: 2}
    assert Counter(s.label for s in splits.val) == {0: 1, 1: 1}


def test_test_split_may_lack_a_class(tmp_path):
    root = make_split_folder(tmp_path / "d", {"train": {"cat": 3, "dog": 3}, "test": {"dog": 2}})
    root.joinpath("test", "cat").mkdir()  # an empty class folder in test is fine too
    splits = scan_folder(root)
    assert Counter(s.label for s in splits.test) == {1: 2}


# ---------------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        scan_folder(tmp_path / "nope")


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        scan_folder(tmp_path / "f.png")


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "d").mkdir()
    make_class_folder(tmp_path / "tmp", {"a": 2})
    for p in (tmp_path / "tmp" / "a").iterdir():  # images directly in DATA, no class folders
        p.rename(tmp_path / "d" / p.name)
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_folder(tmp_path / "d")


def test_single_class(tmp_path):
    root = make_class_folder(tmp_path / "d", {"only": 4})
    with pytest.raises(DataError, match="single class"):
        scan_folder(root)


def test_empty_class_folder(tmp_path):
    root = make_class_folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty"):
        scan_folder(root)


def test_class_folders_differing_only_in_case(tmp_path):
    root = make_class_folder(tmp_path / "d", {"cat": 2, "Cat": 2, "dog": 2})
    with pytest.raises(DataError, match="differ only in case"):
        scan_folder(root)


def test_split_folders_without_train(tmp_path):
    root = make_split_folder(tmp_path / "d", {"val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}})
    with pytest.raises(DataError, match="no train"):
        scan_folder(root)


def test_two_folders_for_one_split(tmp_path):
    root = make_split_folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "TRAIN": {"a": 2, "b": 2}})
    with pytest.raises(DataError, match="two train folders"):
        scan_folder(root)


def test_test_split_with_a_class_unknown_to_train(tmp_path):
    root = make_split_folder(
        tmp_path / "d", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "zebra": 1}}
    )
    with pytest.raises(DataError, match="zebra"):
        scan_folder(root)


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_val_fraction_out_of_range(class_folder, fraction):
    with pytest.raises(DataError, match="val-fraction"):
        scan_folder(class_folder, val_fraction=fraction)
    with pytest.raises(VisiontuneError, match="val-fraction"):
        TrainConfig(data=str(class_folder), val_fraction=fraction)


# -------------------------------------------------------------------------- stratified split


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [
        Sample(Path(f"c{label}/img{i:03d}.png"), label)
        for label, n in counts.items()
        for i in range(n)
    ]


def test_stratified_split_holds_out_the_fraction_of_each_class():
    samples = _samples({0: 40, 1: 20, 2: 10})
    kept, held = stratified_split(samples, 0.25, seed=0)
    assert Counter(s.label for s in held) == {0: 10, 1: 5, 2: 2}  # round(2.5) == 2
    assert Counter(s.label for s in kept) == {0: 30, 1: 15, 2: 8}
    assert set(kept).isdisjoint(held)
    assert set(kept) | set(held) == set(samples)
    assert kept == sorted(kept, key=lambda s: str(s.path))  # order independent of the shuffle


def test_stratified_split_is_seeded():
    samples = _samples({0: 30, 1: 30})
    first = stratified_split(samples, 0.2, seed=7)
    assert stratified_split(samples, 0.2, seed=7) == first
    assert stratified_split(samples, 0.2, seed=8)[1] != first[1]


def test_every_class_is_in_both_parts():
    samples = _samples({0: 2, 1: 3, 2: 50})
    for fraction in (0.01, 0.15, 0.9):
        kept, held = stratified_split(samples, fraction, seed=0)
        assert {s.label for s in kept} == {0, 1, 2}, fraction
        assert {s.label for s in held} == {0, 1, 2}, fraction


def test_zero_fraction_holds_out_nothing():
    samples = _samples({0: 5, 1: 5})
    kept, held = stratified_split(samples, 0.0, seed=0)
    assert held == [] and len(kept) == 10


def test_scan_folder_split_depends_on_seed(class_folder):
    a = scan_folder(class_folder, val_fraction=0.25, seed=0)
    b = scan_folder(class_folder, val_fraction=0.25, seed=0)
    c = scan_folder(class_folder, val_fraction=0.25, seed=3)
    assert a.val == b.val
    assert a.val != c.val
    assert Counter(s.label for s in c.val) == {0: 2, 1: 2}


def test_label_map_is_case_insensitive_and_unique():
    labels = LabelMap(("Cat", "dog"))
    assert labels.index("CAT") == 0 and labels.index("Dog") == 1 and len(labels) == 2
    with pytest.raises(ValueError):
        LabelMap(("cat", "CAT"))
