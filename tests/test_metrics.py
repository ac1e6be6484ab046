"""``classification_metrics`` against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from visiontune.evaluation.metrics import classification_metrics

NAMES = ["ant", "bee", "cow"]
# true:      ant ant ant bee bee cow
# predicted: ant bee ant bee cow cow
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 1, 0, 1, 2, 2]


def test_against_a_hand_computed_confusion_matrix():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["num_images"] == 6
    assert m["confusion_matrix"] == [
        [2, 1, 0],
        [0, 1, 1],
        [0, 0, 1],
    ]  # rows true, columns predicted
    assert m["accuracy"] == pytest.approx(4 / 6)
    expected = {  # precision = diagonal / column sum, recall = diagonal / row sum
        "ant": (2 / 2, 2 / 3, 3),
        "bee": (1 / 2, 1 / 2, 2),
        "cow": (1 / 2, 1 / 1, 1),
    }
    for name, (p, r, support) in expected.items():
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(2 * p * r / (p + r))
        assert row["support"] == support
    f1 = {n: 2 * p * r / (p + r) for n, (p, r, _) in expected.items()}
    assert m["macro_avg"]["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_avg"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["macro_avg"]["f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["weighted_avg"]["recall"] == pytest.approx(4 / 6)  # support-weighted recall = accuracy
    assert m["weighted_avg"]["f1"] == pytest.approx((3 * f1["ant"] + 2 * f1["bee"] + f1["cow"]) / 6)
    assert m["class_names"] == NAMES


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    m = classification_metrics([0, 1, 2], [0, 1, 1], NAMES)
    assert m["per_class"]["cow"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["confusion_matrix"][2] == [0, 1, 0]


def test_a_class_absent_from_the_data_still_has_a_row():
    m = classification_metrics([0, 0], [0, 0], NAMES)
    assert m["per_class"]["bee"]["support"] == 0
    assert np.array(m["confusion_matrix"]).shape == (3, 3)


def test_top_2_accuracy_from_probabilities():
    probs = np.array(
        [
            [0.6, 0.3, 0.1],  # true ant: top-1
            [0.5, 0.4, 0.1],  # true bee: second
            [0.5, 0.4, 0.1],  # true cow: third
            [0.1, 0.2, 0.7],  # true cow: top-1
        ]
    )
    m = classification_metrics([0, 1, 2, 2], probs.argmax(1), NAMES, probs)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top_2_accuracy"] == pytest.approx(0.75)


def test_no_images():
    m = classification_metrics([], [], NAMES)
    assert m["num_images"] == 0 and m["accuracy"] is None and m["confusion_matrix"] == []
