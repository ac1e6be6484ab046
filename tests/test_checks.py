"""``visiontune check``: every finding type on a generated folder with one planted defect of each
kind, the command's output and exit codes, train's cheap checks and --exclude-duplicates, and the
real yoga set's documented defects."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY,
    YOGA,
    make_class_folder,
    make_split_folder,
    shape_image,
    solid_image,
)
from fuzz_files import png_header_only
from PIL import Image

import visiontune
from visiontune.api import check
from visiontune.cli import main

OPTIONS = {"workers": 0, "max_pixels": 10_000, "imbalance_ratio": 2.5}


def _plant_defects(root: Path) -> dict[str, Path]:
    """One defect of each kind in ``root/{train,test}/{cat,dog}/``; ``{name: path}``."""
    cat, dog, test_cat = root / "train" / "cat", root / "train" / "dog", root / "test" / "cat"
    planted = {
        "broken": cat / "broken.jpg",
        "bomb": cat / "bomb.png",
        "folder": cat / "folder.jpg",
        "cut": dog / "cut.png",
        "really_png": cat / "really_png.jpg",
        "cmyk": cat / "cmyk.jpg",
        "alpha": dog / "alpha.png",
        "grey16": cat / "grey16.png",
        "tiny": dog / "tiny.png",
        "big": cat / "big.png",
        "copy": cat / "cat_copy.png",
        "leak": test_cat / "leak.png",
        "conflict": dog / "conflict.png",
        "disc": cat / "disc.png",
        "disc_small": test_cat / "disc_small.jpg",
    }
    planted["broken"].write_bytes(np.random.default_rng(0).bytes(2000))
    planted["bomb"].write_bytes(png_header_only(20_000, 20_000))
    planted["folder"].mkdir()
    shape_image("square", 64, seed=1).save(planted["cut"])
    planted["cut"].write_bytes(planted["cut"].read_bytes()[:-2000])
    solid_image((10, 200, 10), seed=2).save(planted["really_png"], format="PNG")
    solid_image((200, 200, 10), seed=3).convert("CMYK").save(planted["cmyk"])
    solid_image((10, 10, 200), seed=4).convert("RGBA").save(planted["alpha"])
    noise = np.random.default_rng(5).integers(0, 65535, size=(32, 40), dtype=np.uint16)
    Image.fromarray(noise).save(planted["grey16"])
    solid_image((90, 90, 90), size=(12, 10), seed=6).save(planted["tiny"])
    solid_image((250, 120, 0), size=(120, 100), seed=7).save(planted["big"])
    shutil.copy(cat / "cat_1.png", planted["copy"])
    shutil.copy(cat / "cat_0.png", planted["leak"])
    shutil.copy(cat / "cat_2.png", planted["conflict"])
    disc = shape_image("disc", 96, seed=8)
    disc.save(planted["disc"])
    disc.resize((64, 64), Image.Resampling.BILINEAR).save(planted["disc_small"], quality=85)
    return planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = make_split_folder(
        tmp_path_factory.mktemp("checks") / "data",
        {"train": {"cat": 12, "dog": 3}, "test": {"cat": 2, "dog": 2}},
    )
    return root, _plant_defects(root)


@pytest.fixture(scope="module")
def report(planted):
    return check(planted[0], **OPTIONS)


def _files(report, kind) -> list[set[str]]:
    return [set(f.files) for f in report.of_type(kind)]


@pytest.mark.parametrize(
    "kind, names",
    [
        ("unreadable", ["broken"]),
        ("decompression-bomb", ["bomb"]),
        ("not-a-file", ["folder"]),
        ("truncated", ["cut"]),
        ("extension-mismatch", ["really_png"]),
        ("tiny-image", ["tiny"]),
        ("huge-image", ["big"]),
    ],
)
def test_each_per_file_finding_names_exactly_the_planted_file(report, planted, kind, names):
    _, files = planted
    assert _files(report, kind) == [{str(files[n])} for n in names]


def test_severities_follow_the_finding_types(report):
    from visiontune.data.checks import FINDING_TYPES

    for finding in report.findings:  # (an image under 8 px, which train skips, would be an error)
        assert finding.severity == FINDING_TYPES[finding.type][0], finding


def test_colour_modes_are_grouped_by_mode(report, planted):
    _, files = planted
    modes = {f.details["mode"]: set(f.files) for f in report.of_type("colour-mode")}
    assert modes == {
        "CMYK": {str(files["cmyk"])},
        "RGBA": {str(files["alpha"])},
        "I;16": {str(files["grey16"])},
    }


def test_class_counts_and_imbalance(report):
    counts = report.counts
    assert counts["train"] == {
        "cat": 12 + 8,
        "dog": 3 + 4,
    }  # the planted files count where they lie
    assert counts["test"] == {"cat": 2 + 2, "dog": 2}
    imbalance = report.of_type("class-imbalance")
    assert [f.details["split"] for f in imbalance] == ["train"]  # test's 4:2 is under the ratio 2.5
    assert imbalance[0].details["largest"] == "cat" and imbalance[0].details[
        "ratio"
    ] == pytest.approx(20 / 7)


def test_exact_duplicates_leakage_and_label_conflict(report, planted):
    root, files = planted
    train = root / "train"
    assert sorted(map(sorted, _files(report, "duplicates"))) == sorted(
        map(
            sorted,
            [
                {str(train / "cat" / "cat_0.png"), str(files["leak"])},
                {str(train / "cat" / "cat_1.png"), str(files["copy"])},
                {str(train / "cat" / "cat_2.png"), str(files["conflict"])},
            ],
        )
    )
    leakage = report.of_type("leakage")
    assert [f.files for f in leakage] == [[str(files["leak"]), str(train / "cat" / "cat_0.png")]]
    assert leakage[0].details["split"] == "test"
    conflict = report.of_type("label-conflict")
    assert [set(f.files) for f in conflict] == [
        {str(train / "cat" / "cat_2.png"), str(files["conflict"])}
    ]
    assert conflict[0].details["classes"] == ["cat", "dog"]


def test_near_duplicates_find_the_resized_jpeg_and_nothing_else(report, planted):
    _, files = planted
    near = report.of_type("near-duplicates")
    assert [set(f.files) for f in near] == [{str(files["disc"]), str(files["disc_small"])}]
    assert near[0].details["splits"] == ["train", "test"] and "leakage" in near[0].message
    assert near[0].message.startswith("2 files look like the same picture (across train")


def test_a_near_duplicate_group_with_a_copy_counts_its_files_and_its_contents(tmp_path):
    root = make_class_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    disc = shape_image("disc", 96, seed=8)
    disc.save(root / "cat" / "disc.png")
    shutil.copy(root / "cat" / "disc.png", root / "cat" / "disc_copy.png")
    disc.resize((64, 64), Image.Resampling.BILINEAR).save(root / "cat" / "disc_small.jpg")
    (near,) = check(root, **OPTIONS).of_type("near-duplicates")
    assert len(near.files) == 3 and near.details["distinct"] == 2
    assert near.message.startswith("3 files (2 different contents) look like the same picture")


def test_a_clean_folder_has_no_errors_or_warnings(tmp_path):
    report = check(make_class_folder(tmp_path / "data", {"cat": 4, "dog": 4}), workers=0)
    assert [f.type for f in report.findings] == ["class-counts"]
    assert not report.has_errors


def test_without_decoding_truncation_and_leakage_are_still_found(planted):
    from visiontune.data.checks import check_folder

    cheap = check_folder(planted[0], decode=False, workers=0)
    assert cheap.summary()["truncated"] == 1 and cheap.summary()["leakage"] == 1
    assert "near-duplicates" not in cheap.summary()
    assert all(info.phash is None for info in cheap.files)


def test_a_process_pool_gives_the_same_findings(planted, report):
    pooled = check(planted[0], **{**OPTIONS, "workers": 2})
    assert [f.to_dict() for f in pooled.findings] == [f.to_dict() for f in report.findings]


# ----------------------------------------------------------------------------- the command


def test_cli_summary_and_exit_code_1_on_errors(planted, capsys):
    code = main(
        ["check", str(planted[0]), "--workers", "0", "--max-pixels", "10000", "--examples", "1"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"^ERROR +leakage +1$", out, re.MULTILINE)
    assert re.search(r"^WARNING +near-duplicates +1$", out, re.MULTILINE)
    assert re.search(r"^WARNING +duplicates +3\n.*\n +\.\.\. 2 more", out, re.MULTILINE)
    assert "test/cat/leak.png (test) is byte-identical to train/cat/cat_0.png (train)" in out


def test_cli_json_lists_every_finding_with_all_its_files(planted, report, capsys):
    assert (
        main(
            [
                "check",
                str(planted[0]),
                "--json",
                "--workers",
                "0",
                "--max-pixels",
                "10000",
                "--imbalance-ratio",
                "2.5",
            ]
        )
        == 1
    )
    out = json.loads(capsys.readouterr().out)
    assert out["findings"] == [f.to_dict() for f in report.findings]
    assert out["summary"] == report.summary() and out["num_files"] == len(report.files)


def test_cli_exit_0_on_a_clean_folder(tmp_path, capsys):
    assert (
        main(
            ["check", str(make_class_folder(tmp_path / "data", {"a": 3, "b": 3})), "--workers", "0"]
        )
        == 0
    )
    assert "no errors" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [(["--min-side", "0"], "--min-side"), (["--near-distance", "-1"], "--near-distance")],
)
def test_cli_bad_options_and_paths_exit_2(tmp_path, capsys, argv, match):
    data = make_class_folder(tmp_path / "data", {"a": 2, "b": 2})
    assert main(["check", str(data), *argv]) == 2
    assert match in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_check_does_not_import_torch(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 2, "b": 2})
    code = (
        "import sys; from visiontune.cli import main; main(['check', sys.argv[1], '--workers', "
        "'0']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(data)], check=True, capture_output=True)


# --------------------------------------------------------------- train's checks and exclusion


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """Splits where two test images are byte-identical copies of training images."""
    root = make_split_folder(
        tmp_path_factory.mktemp("leaky") / "data",
        {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 3}},
    )
    shutil.copy(root / "train" / "cat" / "cat_0.png", root / "test" / "cat" / "leaked_0.png")
    shutil.copy(root / "train" / "dog" / "dog_1.png", root / "test" / "dog" / "leaked_1.png")
    shutil.copy(root / "train" / "dog" / "dog_2.png", root / "train" / "cat" / "conflict.png")
    return root


def _data_checks(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["data_checks"]


def test_train_warns_about_leakage_and_conflicts_and_records_them(leaky, tmp_path, capsys):
    result = visiontune.fit(
        leaky,
        **TINY,
        strategy="head",
        workers=0,
        out=str(tmp_path / "run"),
        progress=False,
        cache=False,
    )
    err = capsys.readouterr().err
    assert (
        "2 test image(s) have a byte-identical copy in train" in err
        and "--exclude-duplicates" in err
    )
    assert "filed under two or more classes" in err
    checks = _data_checks(result.run_dir)
    assert checks["leakage"]["test"] == 2 and len(checks["leakage"]["files"]) == 2
    assert len(checks["label_conflicts"]) == 1
    assert checks["excluded_duplicates"] is None
    assert result.metrics["test"]["num_images"] == 8


def test_train_exclude_duplicates_leaves_leaked_test_images_out(leaky, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(leaky),
            "--strategy",
            "head",
            "--exclude-duplicates",
            "--out",
            str(out),
            "--backbone",
            TINY["backbone"],
            "--weights",
            TINY["weights"],
            "--workers",
            "0",
            "--no-progress",
            "--no-cache",
        ]
    )
    assert code == 0
    assert "excluded 0 val and 2 test image(s) with a copy in train" in capsys.readouterr().out
    assert _data_checks(out)["excluded_duplicates"] == {"val": 0, "test": 2}
    assert json.loads((out / "metrics.json").read_text())["test"]["num_images"] == 6


# --------------------------------------------------------------------------- the yoga set


@pytest.mark.usefixtures("yoga")  # skips where it is absent; fails under $CI
def test_yoga_check_reports_every_documented_defect(capsys):
    """Counts from ../shared/datasets/yoga-poses/README.md (this size-reduced copy: 37 leaked
    TEST images, 301 duplicate groups, 313 redundant copies)."""
    assert main(["check", str(YOGA), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    by_type: dict[str, list[dict]] = {}
    for finding in out["findings"]:
        by_type.setdefault(finding["type"], []).append(finding)

    def rel(paths):
        return {Path(p).relative_to(YOGA).as_posix() for p in paths}

    assert out["num_files"] == 1547
    assert [rel(f["files"]) for f in by_type["truncated"]] == [{"TRAIN/tree/00000114.jpg"}]
    mismatches = {
        Path(f["files"][0]).relative_to(YOGA).as_posix(): f["details"]["format"]
        for f in by_type["extension-mismatch"]
    }
    assert mismatches == {
        "TRAIN/tree/00000143.jpg": "PNG",
        "TRAIN/downdog/00000181.bmp": "JPEG",
        "TRAIN/goddess/00000103.png": "JPEG",
    }
    modes = {f["details"]["mode"]: len(f["files"]) for f in by_type["colour-mode"]}
    assert modes == {"CMYK": 5, "RGBA": 61, "P": 20, "L": 1}
    duplicates = by_type["duplicates"]
    assert len(duplicates) == 301 and sum(f["details"]["redundant"] for f in duplicates) == 313
    assert [rel(f["files"]) for f in by_type["label-conflict"]] == [
        {"TRAIN/warrior2/00000193.jpg", "TRAIN/warrior2/00000204.jpg", "TRAIN/goddess/00000378.jpg"}
    ]
    leaked = {Path(f["files"][0]).relative_to(YOGA).as_posix() for f in by_type["leakage"]}
    assert len(leaked) == 37 and Counter(f["details"]["split"] for f in by_type["leakage"]) == {
        "test": 37
    }
    assert {
        "TEST/goddess/00000055.jpg",
        "TEST/plank/00000109.jpg",
        "TEST/tree/00000053.jpg",
    } <= leaked
    assert "unreadable" not in by_type
    assert out["counts"]["train"]["tree"] == 159 and out["counts"]["test"]["tree"] == 66
