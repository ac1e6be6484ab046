"""``evaluate --report``: metrics against hand-worked numbers, the report folder, and the page
opened in headless Chromium (no console errors, every image resolves)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _chromium import check_page, find_chromium
from conftest import TINY, make_split_folder, require_or_skip, solid_image
from PIL import Image

import visiontune
from visiontune.cli import main
from visiontune.errors import DataError, VisiontuneError
from visiontune.evaluation._plots import history_kind, plot_history
from visiontune.evaluation.metrics import (
    calibrated_ece,
    calibration_bins,
    expected_calibration_error,
    most_confused_pairs,
    top_k_accuracy,
)
from visiontune.evaluation.predictions import LabelledPredictions
from visiontune.evaluation.report import write_report

REPORT_FILES = {
    "index.html",
    "metrics.json",
    "confusion_matrix.png",
    "curves.png",
    "reliability.png",
    "thumbs",
}

# ---------------------------------------------------------------- pure functions, fixed arrays


def test_top_k_accuracy_on_fixed_probabilities():
    probs = np.array(
        [
            [0.6, 0.3, 0.1, 0.0],  # true 0: first
            [0.5, 0.4, 0.1, 0.0],  # true 1: second
            [0.5, 0.3, 0.2, 0.0],  # true 2: third
            [0.1, 0.2, 0.3, 0.4],  # true 0: fourth
        ]
    )
    y = [0, 1, 2, 0]
    assert top_k_accuracy(y, probs, k=1) == pytest.approx(1 / 4)
    assert top_k_accuracy(y, probs, k=2) == pytest.approx(2 / 4)
    assert top_k_accuracy(y, probs, k=3) == pytest.approx(3 / 4)
    assert top_k_accuracy(y, probs, k=4) == 1.0
    assert top_k_accuracy([], np.zeros((0, 4)), k=2) is None


def test_top_k_accuracy_with_two_classes_and_a_class_absent_from_the_labels():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top_k_accuracy([0, 1, 1], probs, k=1) == pytest.approx(2 / 3)
    assert top_k_accuracy([0, 0, 0], probs, k=1) == pytest.approx(2 / 3)  # only class 0 present


def test_expected_calibration_error_worked_by_hand():
    # confidence (top probability), and whether the top class is the true one:
    #   0.95 right, 0.95 wrong -> bin (0.9, 1.0]: accuracy 0.5, confidence 0.95, gap 0.45, 2 images
    #   0.65 right             -> bin (0.6, 0.7]: accuracy 1.0, confidence 0.65, gap 0.35, 1 image
    #   0.55 wrong             -> bin (0.5, 0.6]: accuracy 0.0, confidence 0.55, gap 0.55, 1 image
    # ECE = (2 * 0.45 + 0.35 + 0.55) / 4 = 0.45
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.65, 0.35], [0.45, 0.55]])
    y = [0, 0, 0, 0]
    assert expected_calibration_error(y, probs, bins=10) == pytest.approx(0.45)
    table = calibration_bins(y, probs, bins=10)
    assert [(row["lower"], row["upper"], row["count"]) for row in table] == [
        pytest.approx((0.5, 0.6, 1)),
        pytest.approx((0.6, 0.7, 1)),
        pytest.approx((0.9, 1.0, 2)),
    ]
    assert [row["accuracy"] for row in table] == [0.0, 1.0, 0.5]
    # One bin holding everything: the gap between overall accuracy and mean confidence.
    assert expected_calibration_error(y, probs, bins=1) == pytest.approx(
        abs(0.5 - (0.95 + 0.95 + 0.65 + 0.55) / 4)
    )
    assert expected_calibration_error([], np.zeros((0, 2))) is None


def test_a_confidence_on_a_bin_edge_belongs_to_the_bin_it_closes():
    probs = np.array([[0.5, 0.5, 0.0]])  # confidence exactly 0.5
    assert calibration_bins([0], probs, bins=10)[0]["upper"] == pytest.approx(0.5)


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = np.tile([0.75, 0.25], (4, 1))  # 75% confident, and right 3 times in 4
    assert expected_calibration_error([0, 0, 0, 1], probs) == pytest.approx(0.0)


def test_most_confused_pairs_from_a_confusion_matrix():
    confusion = [[5, 3, 0], [1, 7, 3], [0, 4, 2]]
    pairs = most_confused_pairs(confusion, ["ant", "bee", "cow"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("cow", "bee", 4),
        ("ant", "bee", 3),
        ("bee", "cow", 3),
        ("bee", "ant", 1),
    ]  # ties: class order
    assert pairs[0]["rate"] == pytest.approx(4 / 6)
    assert most_confused_pairs(confusion, ["ant", "bee", "cow"], top=1) == pairs[:1]
    assert most_confused_pairs([[3, 0], [0, 2]], ["a", "b"]) == []


# ---------------------------------------------------------------- a report from fixed probabilities

NAMES = ["ant", "bee", "cow"]
# true:      ant ant ant bee bee cow
# predicted: ant bee ant bee cow cow   (argmax of PROBS)
Y_TRUE = [0, 0, 0, 1, 1, 2]
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.30, 0.60, 0.10],  # ant taken for bee, 60% sure
        [0.50, 0.30, 0.20],
        [0.10, 0.80, 0.10],
        [0.15, 0.05, 0.80],  # bee taken for cow, 80% sure; bee is only third (a top-2 miss)
        [0.20, 0.10, 0.70],
    ]
)


def _image_files(folder, names=NAMES):
    """One file per row of PROBS, in the colour modes real folders hold; the two misclassified
    ones are a CMYK JPEG and an EXIF-rotated JPEG (60x30 stored, 30x60 shown)."""
    paths = []
    for i, label in enumerate(Y_TRUE):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        image = solid_image((200, 40 * i, 90), (48, 40), seed=i)
        if i == 1:
            path = folder / names[label] / "cmyk.jpg"
            image.convert("CMYK").save(path)
        elif i == 4:
            path = folder / names[label] / "rotated.jpg"
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 degrees to display
            solid_image((30, 30, 220), (60, 30), seed=i).save(path, exif=exif)
        elif i == 5:
            path = folder / names[label] / "grey16.png"
            Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)).save(path)
        else:
            path = folder / names[label] / f"{i}.png"
            image.save(path)
        paths.append(str(path))
    return paths


def _predictions(paths, names=NAMES) -> LabelledPredictions:
    return LabelledPredictions(paths=paths, y_true=np.array(Y_TRUE), probs=PROBS, class_names=names)


EPOCHS = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "train_acc": 0.5 + 0.1 * e,
        "val_loss": 1.1 / e,
        "val_acc": 0.4 + 0.1 * e,
        "lr": 0.01,
        "seconds": 1.0,
        "best": e == 3,
    }
    for e in (1, 2, 3)
]


def test_report_agrees_with_a_hand_computed_confusion_matrix(tmp_path):
    out = tmp_path / "report"
    returned = write_report(
        out, _predictions(_image_files(tmp_path / "data")), histories={"run": EPOCHS}
    )
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics["num_images"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["top_k_accuracy"] == pytest.approx({"1": 4 / 6, "2": 5 / 6})  # k < 3 classes
    expected = {"ant": (2 / 2, 2 / 3, 3), "bee": (1 / 2, 1 / 2, 2), "cow": (1 / 2, 1 / 1, 1)}
    for name, (p, r, support) in expected.items():
        assert metrics["per_class"][name] == pytest.approx(
            {"precision": p, "recall": r, "f1": 2 * p * r / (p + r), "support": support}
        )
    assert metrics["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert metrics["weighted_avg"]["recall"] == pytest.approx(4 / 6)
    assert metrics["expected_calibration_error"] == pytest.approx(
        expected_calibration_error(Y_TRUE, PROBS, bins=15)
    )
    assert sum(row["count"] for row in metrics["reliability"]) == 6
    assert metrics["ece_if_calibrated"] == calibrated_ece(PROBS, bins=15)
    assert [(p["true"], p["predicted"], p["count"]) for p in metrics["most_confused"]] == [
        ("ant", "bee", 1),
        ("bee", "cow", 1),
    ]
    assert metrics["forward_passes_per_image"] == 1
    # every mistake, the most confident first, with its thumbnail
    wrong = metrics["misclassified"]
    assert [(m["true"], m["predicted"]) for m in wrong] == [("bee", "cow"), ("ant", "bee")]
    assert [m["confidence"] for m in wrong] == pytest.approx([0.8, 0.6])
    assert [m["true_probability"] for m in wrong] == pytest.approx([0.05, 0.3])
    assert [m["thumbnail"] for m in wrong] == ["thumbs/miss-0001.jpg", "thumbs/miss-0002.jpg"]


def test_thumbnails_are_decoded_like_training_images(tmp_path):
    out = tmp_path / "report"
    write_report(out, _predictions(_image_files(tmp_path / "data")))
    rotated, cmyk = (Image.open(out / "thumbs" / f"miss-000{i}.jpg") for i in (1, 2))
    assert rotated.size == (30, 60)  # EXIF orientation applied
    assert cmyk.mode == "RGB" and cmyk.size == (48, 40)
    page = (out / "index.html").read_text()
    assert 'src="thumbs/miss-0001.jpg"' in page and 'src="confusion_matrix.png"' in page
    assert "a calibrated model: " in page  # the ECE tile gives its floor
    assert str(tmp_path) not in page.split("<h2>Misclassified")[0]  # no absolute links to files


def test_the_gallery_is_capped_and_says_so(tmp_path):
    out = tmp_path / "report"
    metrics = write_report(out, _predictions(_image_files(tmp_path / "data")), gallery_limit=1)
    assert len(metrics["misclassified"]) == 2  # metrics.json lists them all
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == ["miss-0001.jpg"]
    assert "The 1 most confident of 2 misclassified images" in (out / "index.html").read_text()


def test_a_second_report_in_the_same_folder_leaves_no_stale_files(tmp_path):
    out = tmp_path / "report"
    paths = _image_files(tmp_path / "data")
    write_report(out, _predictions(paths), histories={"run": EPOCHS})
    right = LabelledPredictions(paths=paths, y_true=PROBS.argmax(1), probs=PROBS, class_names=NAMES)
    metrics = write_report(out, right)  # no mistakes and no history this time
    assert metrics["misclassified"] == [] and metrics["most_confused"] == []
    assert list((out / "thumbs").iterdir()) == []
    assert not (out / "curves.png").exists()
    page = (out / "index.html").read_text()
    assert "No image was misclassified" in page and "no history.json" in page


def test_all_text_on_the_page_is_escaped(tmp_path):
    names = ["<script>alert(1)</script>", 'say "a&b"', "it's"]
    out = tmp_path / "report"
    write_report(
        out,
        _predictions(_image_files(tmp_path / "data", names), names),
        context={"run": "<img src=x onerror=alert(2)>"},
    )
    page = (out / "index.html").read_text()
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "say &quot;a&amp;b&quot;" in page


def test_bad_inputs_write_nothing(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with pytest.raises(VisiontuneError, match="not a folder"):
        write_report(a_file, _predictions(_image_files(tmp_path / "data")))
    empty = LabelledPredictions(
        paths=[],
        y_true=np.zeros(0, int),
        probs=np.zeros((0, 3)),
        class_names=NAMES,
        skipped={"x.jpg": "broken"},
    )
    with pytest.raises(DataError, match="nothing to report"):
        write_report(tmp_path / "empty", empty)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ValueError, match="same 6 images"):
        LabelledPredictions(
            paths=["a"] * 6, y_true=np.array(Y_TRUE), probs=PROBS[:, :2], class_names=NAMES
        )


C_GRID = [
    {"C": c, "train_acc": 0.9, "val_acc": 0.8, "val_loss": 0.5 / c, "best": c == 10.0}
    for c in (0.1, 1.0, 10.0)
]


@pytest.mark.parametrize(
    "histories, kind",
    [
        ({"run": EPOCHS}, "epochs"),
        ({"run": C_GRID}, "c_grid"),  # a ``head`` run's linear probe: one row per C
        (
            {
                "run": [
                    {**row, "val_acc": float("nan"), "val_loss": -row["train_acc"]}
                    for row in C_GRID
                ]
            },
            "c_grid",
        ),  # ... without a validation split
        ({"member 0": EPOCHS, "member 1": EPOCHS[:2]}, "epochs"),  # an ensemble: one colour each
    ],
)
def test_training_curves_for_each_history_shape(tmp_path, histories, kind):
    assert history_kind(next(iter(histories.values()))) == kind
    assert plot_history(tmp_path / "curves.png", histories)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 300


def test_a_history_of_unknown_shape_draws_nothing(tmp_path):
    assert not plot_history(tmp_path / "curves.png", {"run": [{"step": 1, "loss": 0.3}]})
    assert not (tmp_path / "curves.png").exists()


# ---------------------------------------------------------------- end to end, tiny backbone


def test_evaluate_with_a_report_agrees_with_plain_evaluate(trained_run, trained_data, tmp_path):
    plain = visiontune.evaluate(trained_run.run_dir, trained_data / "test", workers=0)
    out = tmp_path / "report"
    metrics = visiontune.evaluate(trained_run.run_dir, trained_data / "test", workers=0, report=out)
    overlays = {"explain"} if metrics["misclassified"] else set()  # Grad-CAM of each mistake
    assert {p.name for p in out.iterdir()} == REPORT_FILES | overlays
    assert metrics["report"] == str(out / "index.html")
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "num_images",
        "accuracy",
        "confusion_matrix",
        "per_class",
        "macro_avg",
        "class_names",
    ):
        assert saved[key] == plain[key], key
    assert saved["forward_passes_per_image"] == 1
    assert len(saved["misclassified"]) == saved["num_images"] - np.trace(saved["confusion_matrix"])
    assert saved["context"]["run"] == str(trained_run.run_dir)


def test_the_report_states_the_cost_of_tta_and_ensembles(trained_run, trained_data, tmp_path):
    out = tmp_path / "report"
    runs = [trained_run.run_dir, trained_run.run_dir]  # an ensemble of two members
    metrics = visiontune.evaluate(runs, trained_data / "test", workers=0, tta="flip", report=out)
    assert metrics["forward_passes_per_image"] == 2 * 2  # views x members
    assert json.loads((out / "metrics.json").read_text())["forward_passes_per_image"] == 4
    page = (out / "index.html").read_text()
    assert '<div class="v">4</div><div class="k">forward passes per image' in page
    assert "test-time augmentation: <b>flip</b>" in page and "2 members" in page


def test_cli_evaluate_report_of_a_head_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    data = make_split_folder(
        tmp_path / "data",
        {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 3}},
    )
    run = tmp_path / "run"
    visiontune.fit(
        data,
        **TINY,
        strategy="head",
        epochs=2,
        batch_size=8,
        workers=0,
        out=str(run),
        progress=False,
    )
    out = tmp_path / "report"
    code = main(["evaluate", str(run), str(data / "test"), "--workers", "0", "--report", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert f"report: {out / 'index.html'}" in stdout
    assert history_kind(json.loads((run / "history.json").read_text())) == "c_grid"
    assert (out / "curves.png").is_file()  # drawn from the probe's C grid


def test_cli_refuses_a_report_path_that_is_a_file(trained_run, trained_data, tmp_path, capsys):
    taken = tmp_path / "taken.html"
    taken.write_text("x")
    code = main(
        ["evaluate", str(trained_run.run_dir), str(trained_data / "test"), "--report", str(taken)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "x"


# ---------------------------------------------------------------- the page in headless Chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (CI: root on a clean machine)."""
    path, reason = find_chromium()
    if path is None:
        require_or_skip(f"headless Chromium unavailable: {reason}")
    return path


def test_the_report_page_loads_cleanly_in_chromium_after_a_move(chromium, tmp_path):
    names = ["ant <a>", "bee & co", "cow"]
    paths = _image_files(tmp_path / "data", names)
    write_report(tmp_path / "report", _predictions(paths, names), histories={"run": EPOCHS})
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "moved report"
    shutil.move(tmp_path / "report", moved)  # links are relative, so the page moves with its files
    shutil.rmtree(tmp_path / "data")  # the page needs nothing outside its folder
    check = check_page(chromium, moved / "index.html")
    assert check.errors == []
    assert sorted(img["src"] for img in check.images) == [
        "confusion_matrix.png",
        "curves.png",
        "reliability.png",
        "thumbs/miss-0001.jpg",
        "thumbs/miss-0002.jpg",
    ]
    assert check.broken_images == []
    assert all(img["width"] > 0 for img in check.images)


def test_the_end_to_end_report_loads_cleanly_in_chromium(
    chromium, trained_run, trained_data, tmp_path
):
    out = tmp_path / "report"
    metrics = visiontune.evaluate(trained_run.run_dir, trained_data / "test", workers=0, report=out)
    check = check_page(chromium, out / "index.html")
    assert check.errors == [] and check.broken_images == []
    thumbs = [img for img in check.images if img["src"].startswith("thumbs/")]
    overlays = [img for img in check.images if img["src"].startswith("explain/")]
    assert len(thumbs) == len(overlays) == len(metrics["misclassified"])
    assert len(check.images) == 3 + len(thumbs) + len(overlays)  # + confusion, curves,
    # reliability


def test_the_chromium_check_sees_a_missing_image_and_a_script_error(chromium, tmp_path):
    """The check itself can fail: a broken image and a console error are both reported."""
    page = tmp_path / "page.html"
    page.write_text(
        '<!doctype html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="missing.png"><script>console.error("boom"); null.x;</script></body></html>'
    )
    check = check_page(chromium, page)
    assert check.broken_images == ["missing.png"]
    assert any("missing.png" in e for e in check.errors)
    assert any("boom" in e for e in check.errors)
    assert any("exception" in e for e in check.errors)
