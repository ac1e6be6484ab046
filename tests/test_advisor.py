"""``advise`` and ``--strategy auto``: the decision table on hand-made numbers, the measurements on
data made similar and different by construction, the JSON schema, and the advice in the run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_class_folder
from PIL import Image

import visiontune
from visiontune.backbones import create_backbone
from visiontune.cli import main
from visiontune.config import TrainConfig
from visiontune.data.folder import scan_folder
from visiontune.data.loader import ImageDataset
from visiontune.data.transforms import decode_size, eval_transform
from visiontune.engine.loop import Runtime
from visiontune.errors import VisiontuneError
from visiontune.features.similarity import batchnorm_shift, measure, probe_accuracy
from visiontune.strategies import STRATEGIES, Measurements, decide
from visiontune.strategies.advisor import BN_SHIFT_SCALE, SIMILAR_AT, SMALL_BELOW, similarity_score
from visiontune.training import run_training

TINY_ARGS = ["--backbone", "test_efficientnet", "--weights", "none", "--workers", "0"]
CFG = Runtime(progress=False)


def _m(
    per_class: float,
    *,
    probe: float | None = None,
    shift: float | None = None,
    classes: int = 4,
    stages: int = 8,
) -> Measurements:
    n = int(per_class * classes)
    return Measurements(
        num_images=n,
        num_classes=classes,
        min_per_class=int(per_class),
        max_per_class=int(per_class),
        probe_accuracy=probe,
        bn_shift=shift,
        bn_images=min(n, 200),
        backbone="efficientnet_lite0",
        num_stages=stages,
    )


# ------------------------------------------------------------------------- the decision table

SMALL, BIG = SMALL_BELOW // 3, SMALL_BELOW * 4
SIMILAR = {
    "probe": 0.95,
    "shift": 0.15,
}  # frozen features separate the classes; ImageNet-like statistics
DIFFERENT = {"probe": 0.40, "shift": 2.5}  # barely above chance; statistics far from ImageNet's


@pytest.mark.parametrize(
    "size, similarity, quadrant, strategy",
    [
        (SMALL, SIMILAR, "small+similar", "head"),
        (SMALL, DIFFERENT, "small+different", "gradual"),
        (BIG, SIMILAR, "big+similar", "partial"),
        (BIG, DIFFERENT, "big+different", "full"),
    ],
)
def test_decision_table(size, similarity, quadrant, strategy):
    advice = decide(_m(size, **similarity))
    assert (advice.quadrant, advice.strategy) == (quadrant, strategy)
    assert advice.strategy in STRATEGIES
    s = advice.settings
    assert set(s) == {"epochs", "lr", "backbone_lr_mult", "unfreeze", "warm_start_head"}
    if strategy != "head":  # pretrained layers always train at a smaller LR than the new head
        assert 0 < s["backbone_lr_mult"] < 1
    top = math.ceil(8 / 3)
    assert s["unfreeze"] == {"head": 0, "gradual": top, "partial": top, "full": None}[strategy]
    assert s["warm_start_head"] == (strategy == "gradual")  # gradual is linear-probe-then-fine-tune
    if strategy == "gradual":  # enough epochs to reach every stage it unfreezes
        assert s["epochs"] > s["unfreeze"]
    assert "small" in advice.reason or "big" in advice.reason
    assert advice.measurements.images_per_class == size


def test_thresholds_are_inclusive_at_the_boundary():
    at = {"probe": 1.0, "shift": None}
    assert decide(_m(SMALL_BELOW, **at)).quadrant.startswith("big")
    assert decide(_m(SMALL_BELOW - 1, **at)).quadrant.startswith("small")
    # similarity exactly at the threshold counts as similar:
    # 4 classes, probe 62.5 % -> separability 0.5
    m = _m(SMALL, probe=0.625)
    assert m.similarity == pytest.approx(SIMILAR_AT)
    assert decide(m).quadrant == "small+similar"
    assert decide(_m(SMALL, probe=0.62)).quadrant == "small+different"


def test_nothing_measurable_counts_as_different():
    advice = decide(_m(SMALL))
    assert advice.measurements.similarity is None
    assert advice.quadrant == "small+different" and advice.strategy == "gradual"
    assert decide(_m(BIG)).strategy == "full"


def test_similarity_formula():
    m = _m(SMALL, probe=0.7, shift=0.5, classes=5)
    separability = (0.7 - 0.2) / 0.8
    stats = math.exp(-0.5 / BN_SHIFT_SCALE)
    assert m.separability == pytest.approx(separability)
    assert m.statistics_similarity == pytest.approx(stats)
    assert m.similarity == pytest.approx((separability + stats) / 2)
    # either part alone, clipped to [0, 1]
    assert _m(SMALL, probe=0.1).similarity == 0.0  # below chance
    assert _m(SMALL, shift=0.0).similarity == 1.0
    assert similarity_score(None, None) is None
    # perfectly separable but unlike ImageNet sits just above the threshold: the head will do
    assert similarity_score(1.0, 0.0) == pytest.approx(0.5)


def test_imbalance_is_mentioned():
    m = Measurements(
        num_images=110,
        num_classes=2,
        min_per_class=10,
        max_per_class=100,
        probe_accuracy=0.9,
        bn_shift=0.2,
        num_stages=8,
    )
    assert m.balance == pytest.approx(0.1)
    assert "imbalanced" in decide(m).reason
    assert "imbalanced" not in decide(_m(SMALL, **SIMILAR)).reason


def test_advice_to_dict_is_json():
    advice = decide(_m(BIG, **DIFFERENT))
    record = json.loads(json.dumps(advice.to_dict()))
    assert record["strategy"] == "full" and record["quadrant"] == "big+different"
    assert record["num_images"] == BIG * 4
    assert record["similarity"] == pytest.approx(advice.measurements.similarity)
    assert record["measurements"]["separability"] == pytest.approx(advice.measurements.separability)


# -------------------------------------------------------------------------------- measurements


def test_probe_accuracy_separable_random_and_too_small():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 16))
    separable = x + 6 * np.eye(3, 16)[y]
    assert probe_accuracy(separable, y) > 0.95
    assert probe_accuracy(x, y) < 0.6  # features that know nothing about the labels: ~chance (1/3)
    assert probe_accuracy(x[:4], np.array([0, 0, 0, 1])) is None  # one image in a class: no CV
    assert probe_accuracy(x, np.zeros(60, dtype=int)) is None  # one class
    # above max_images a stratified subset keeps every class
    assert probe_accuracy(separable, y, max_images=30) > 0.9


def test_probe_accuracy_matches_scikit_learns_logistic_regression():
    """The torch L-BFGS probe solves sklearn's objective: its held-out predictions agree."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from visiontune.features.similarity import PROBE_C

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 40)
    x = rng.normal(size=(160, 32)) + 0.3 * rng.normal(size=(4, 32))[y]  # overlapping classes
    reference = cross_val_predict(
        make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000)),
        x,
        y,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    )
    ours = probe_accuracy(x, y, seed=0)
    assert 0.4 < ours < 0.98  # neither trivial nor chance, so the comparison says something
    assert ours == pytest.approx(balanced_accuracy_score(y, reference), abs=0.013)  # 2 images


def test_batchnorm_shift_is_none_for_random_weights(tmp_path):
    data = make_class_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    backbone = create_backbone("test_efficientnet", weights="none")
    samples = scan_folder(data, val_fraction=0.0).train
    assert batchnorm_shift(backbone, samples, runtime=CFG) == (None, 0)


def _fit_statistics(backbone, samples) -> None:
    """Make ``samples`` the backbone's "pretraining data": its BatchNorm statistics become
    theirs."""
    spec = backbone.preprocess
    dataset = ImageDataset(samples, eval_transform(spec), decode_size=decode_size(spec))
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    for m in backbone.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average of what it sees
    backbone.train()
    with torch.no_grad():
        backbone(batch)  # one batch of all images: running statistics = their statistics
    backbone.eval()


def _noise_folder(root: Path, classes=("a", "b"), count=8, size=48, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_batchnorm_shift_is_small_on_the_data_the_statistics_came_from(tmp_path):
    torch.manual_seed(0)
    own = scan_folder(
        make_class_folder(tmp_path / "own", {"cat": 8, "dog": 8}), val_fraction=0.0
    ).train
    other = scan_folder(_noise_folder(tmp_path / "noise"), val_fraction=0.0).train
    backbone = create_backbone("test_efficientnet", weights="none")
    _fit_statistics(backbone, own)
    shift_own, seen = batchnorm_shift(backbone, own, runtime=CFG)
    shift_other, _ = batchnorm_shift(backbone, other, runtime=CFG)
    assert seen == len(own)
    assert shift_own < 0.05
    assert shift_other > 10 * shift_own and shift_other > 0.3
    # a sample of at most max_images images, seeded
    assert batchnorm_shift(backbone, own, runtime=CFG, max_images=5)[1] == 5
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    batchnorm_shift(backbone, other, runtime=CFG)
    assert all(
        torch.equal(v, backbone.state_dict()[k]) for k, v in state.items()
    )  # measuring changes nothing


def _reference_shift(backbone, batches) -> float:
    """The shift from float64 ``torch.var_mean`` over each BatchNorm input: what the recorder's
    matrix-product moments must reproduce."""
    layers = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs: dict[int, list] = {id(m): [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs[id(m)].append(a[0])) for m in layers]
    with torch.no_grad():
        for batch in batches:
            backbone(batch)
    for hook in hooks:
        hook.remove()
    per_layer = []
    for m in layers:
        var, mean = torch.var_mean(torch.cat(inputs[id(m)]).double(), dim=(0, 2, 3), correction=0)
        var_data, var_run = var + m.eps, m.running_var.double() + m.eps
        delta2 = (mean - m.running_mean.double()) ** 2
        kl = 0.5 * ((var_data + delta2) / var_run + (var_run + delta2) / var_data) - 1
        per_layer.append(float(kl.median()))
    return float(np.mean(per_layer))


def _autocast(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


@pytest.mark.parametrize(
    ("channels_last", "dtype", "rel"),
    [(False, "fp32", 1e-4), (True, "fp32", 1e-4), (True, "bf16", 1e-2)],
)
def test_recorded_shift_equals_var_mean_over_every_batch(channels_last, dtype, rel):
    """Under bf16 inference the moments are taken in bf16 (fp32 accumulation): within 1 % of
    float64 moments of the same activations."""
    from visiontune.features.similarity import BatchNormRecorder

    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="none").eval()
    for m in backbone.modules():  # pretrained-looking statistics, so the recorder records
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=memory)
    batches = [(torch.randn(n, 3, 40, 40) * 2 + 1).to(memory_format=memory) for n in (5, 3)]
    with BatchNormRecorder(backbone) as recorder, torch.no_grad(), _autocast(dtype):
        for batch in batches:
            backbone(batch)
    assert recorder.images == 8
    with _autocast(dtype):
        reference = _reference_shift(backbone, batches)
    assert recorder.shift() == pytest.approx(reference, rel=rel)


def test_measure_takes_batchnorm_statistics_from_the_extraction_pass(tmp_path):
    """Cold cache: the statistics come from the extraction's own pass over every image and equal a
    separate pass's; warm cache (no forward pass): a separate pass over a sample runs instead."""
    from visiontune.features.cache import FeatureCache

    torch.manual_seed(0)
    splits = scan_folder(
        make_class_folder(tmp_path / "data", {"cat": 8, "dog": 8}), val_fraction=0.0
    )
    backbone = create_backbone("test_efficientnet", weights="none")
    _fit_statistics(
        backbone, scan_folder(_noise_folder(tmp_path / "noise"), val_fraction=0.0).train
    )
    cache = FeatureCache.for_backbone(tmp_path / "cache", backbone)
    cold = measure(splits, backbone, runtime=CFG, cache=cache)
    separate, seen = batchnorm_shift(backbone, splits.train, runtime=CFG)
    assert cold.bn_images == seen == 16
    assert cold.bn_shift == pytest.approx(separate, rel=1e-4) and cold.bn_shift > 0.1
    assert cold.probe_images == cold.num_images == 16
    capped = measure(
        splits, backbone, runtime=CFG, per_class=3
    )  # sizes count all; the probe sees 3 a class
    assert (capped.num_images, capped.min_per_class, capped.probe_images, capped.bn_images) == (
        16,
        8,
        6,
        6,
    )
    # The cache now serves every image: a pass of its own over the same images, the same shift.
    warm = measure(splits, backbone, runtime=CFG, cache=cache)
    assert warm.bn_images == 16 and warm.bn_shift == pytest.approx(cold.bn_shift, rel=1e-4)
    assert warm.probe_accuracy == cold.probe_accuracy
    # A sample smaller than the data (3 a class): warm, the pass covers those 6 images, no others.
    subset_cache = FeatureCache.for_backbone(tmp_path / "cache-3", backbone)
    cold = measure(splits, backbone, runtime=CFG, cache=subset_cache, per_class=3)
    warm = measure(splits, backbone, runtime=CFG, cache=subset_cache, per_class=3)
    assert warm.bn_images == cold.bn_images == 6
    assert warm.bn_shift == pytest.approx(cold.bn_shift, rel=1e-4)


def test_a_sample_recorded_earlier_is_measured_without_a_pass_of_its_own(tmp_path, monkeypatch):
    """``record_sample`` on a cold cache, then ``measure(sample=...)`` on the cache it filled:
    the same statistics as measuring cold, and no separate statistics pass (made to fail)."""
    from visiontune.features import similarity
    from visiontune.features.cache import FeatureCache

    torch.manual_seed(0)
    splits = scan_folder(make_class_folder(tmp_path / "data", {"cat": 8, "dog": 8}), val_fraction=0)
    backbone = create_backbone("test_efficientnet", weights="none")
    _fit_statistics(
        backbone, scan_folder(_noise_folder(tmp_path / "noise"), val_fraction=0.0).train
    )
    reference = measure(splits, backbone, runtime=CFG)
    cache = FeatureCache.for_backbone(tmp_path / "cache", backbone)
    sample = similarity.record_sample(splits, backbone, runtime=CFG, cache=cache)
    assert (sample.bn_images, sample.features.computed) == (16, 16)

    def no_pass(*args, **kwargs):
        raise AssertionError("a separate statistics pass ran")

    monkeypatch.setattr(similarity, "batchnorm_shift", no_pass)
    reused = measure(splits, backbone, runtime=CFG, cache=cache, sample=sample)
    assert reused.bn_images == 16 and reused.bn_shift == pytest.approx(reference.bn_shift)
    assert reused.probe_accuracy == reference.probe_accuracy


# ------------------------------------- similar and different by construction, on the real backbone


def _photo_folder(root: Path, count: int = 8, size: int = 96, seed: int = 0) -> Path:
    """Natural photos: one class per scikit-image sample photo, random crops of it."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        image = getattr(skimage.data, name)()
        h, w = image.shape[:2]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            f = rng.uniform(0.5, 0.9)
            ch, cw = int(h * f), int(w * f)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = Image.fromarray(image[y : y + ch, x : x + cw]).resize(
                (size, size), Image.BICUBIC
            )
            crop.save(root / name / f"{i}.png")
    return root


def _secret_pattern_folder(root: Path, count: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Not like ImageNet: binary pixel noise, the class only in its faint correlation with a fixed
    random pixel pattern (a pixel-level linear model finds it; ImageNet features barely do)."""
    rng = np.random.default_rng(seed)
    pattern = rng.choice([-1.0, 1.0], size=(size, size))
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            bits = (rng.random((size, size)) + (0.05 if c else -0.05) * pattern) > 0.5
            Image.fromarray(np.repeat(bits[..., None], 3, axis=2).astype(np.uint8) * 255).save(
                root / f"class{c}" / f"{i}.png"
            )
    return root


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def test_similar_and_different_by_construction(tmp_path, lite0):
    similar = measure(
        scan_folder(_photo_folder(tmp_path / "photos"), val_fraction=0.0), lite0, runtime=CFG
    )
    different = measure(
        scan_folder(_secret_pattern_folder(tmp_path / "noise"), val_fraction=0.0),
        lite0,
        runtime=CFG,
    )
    assert similar.separability > 0.8 and different.separability < 0.6
    assert similar.bn_shift < 0.5 < 1.5 < different.bn_shift
    assert similar.similarity >= SIMILAR_AT > different.similarity
    assert (decide(similar).strategy, decide(different).strategy) == ("head", "gradual")
    assert similar.num_images == 32 and similar.bn_images == 32 and similar.num_stages == 8


# ------------------------------------------------------------------------------ CLI and runs


@pytest.fixture
def colours(tmp_path) -> Path:
    return make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6, "bird": 6})


def test_advise_json_schema(colours, capsys):
    code = main(["advise", str(colours), *TINY_ARGS, "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    record = json.loads(out)
    assert record["strategy"] in STRATEGIES
    assert record["quadrant"] in (
        "small+similar",
        "small+different",
        "big+similar",
        "big+different",
    )
    assert record["num_images"] == 18 and record["images_per_class"] == 6
    assert record["similarity"] is None or 0 <= record["similarity"] <= 1
    assert isinstance(record["reason"], str) and record["reason"]
    assert set(record["settings"]) == {
        "epochs",
        "lr",
        "backbone_lr_mult",
        "unfreeze",
        "warm_start_head",
    }
    m = record["measurements"]
    assert m["num_classes"] == 3 and m["min_per_class"] == m["max_per_class"] == 6
    assert m["bn_shift"] is None  # random weights have no pretraining statistics
    assert 0 <= m["probe_accuracy"] <= 1 and m["chance"] == pytest.approx(1 / 3)
    assert record["thresholds"]["small_below_per_class"] == SMALL_BELOW


def test_advise_prints_the_quadrant_strategy_and_reason(colours, capsys):
    assert main(["advise", str(colours), *TINY_ARGS]) == 0
    out, _ = capsys.readouterr()
    for label in ("data", "probe", "similarity", "quadrant", "strategy", "reason", "auto"):
        assert any(line.startswith(label) for line in out.splitlines()), label
    assert "18 images, 3 classes" in out
    assert "auto trains the head on cached features" in out  # what the default will do


def test_advise_bad_folder_is_a_user_error(tmp_path, capsys):
    assert main(["advise", str(tmp_path / "missing"), *TINY_ARGS]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("visiontune: error: ")


def test_advise_never_reads_the_test_split(tmp_path):
    root = tmp_path / "data"
    make_class_folder(root / "train", {"cat": 5, "dog": 5})
    make_class_folder(root / "test", {"cat": 7, "dog": 7}, seed=3)
    advice = visiontune.advise(root, **TINY, workers=0)
    assert advice.measurements.num_images == 10


def test_advise_takes_every_seed_train_takes():
    # Before: a seed of 2**32 or more reached scikit-learn's random_state: a numpy traceback.
    x = np.random.default_rng(0).normal(size=(20, 3)) + np.repeat([[0.0], [3.0]], 10, axis=0)
    y = np.repeat([0, 1], 10)
    assert probe_accuracy(x, y, seed=2**63 - 1) == probe_accuracy(x, y, seed=2**63 - 1)
    assert probe_accuracy(x, y, seed=2**40) is not None
    with pytest.raises(VisiontuneError, match="--seed must be at least 0, got -1"):
        visiontune.advise("anywhere", seed=-1)


def test_the_rule_alone_records_the_advice(colours, tmp_path):
    # ``run_training`` with ``auto`` is the rule alone: what torchrun ranks and ensemble members
    # run (single-process ``fit`` weighs candidates on validation instead: tests/test_auto.py).
    out = tmp_path / "run"
    config = TrainConfig(
        data=str(colours), **TINY, workers=0, progress=False, lr=0.02, batch_size=8, out=str(out)
    )
    run_training(config, explicit=frozenset({"lr", "batch_size"}))
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    advice = config["advice"]
    assert advice == metrics["advice"]
    assert advice["strategy"] in STRATEGIES
    assert config["strategy"]["name"] == config["training"]["strategy"] == advice["strategy"]
    assert config["training"]["lr"] == 0.02  # given explicitly: kept
    assert "lr" not in advice["applied"]
    for key, value in advice["applied"].items():  # the rest of the advice was applied
        assert config["training"][key] == value


def test_fit_auto_keeps_explicit_options(tmp_path):
    # noise: the head is not perfect on validation, so auto measures and applies the advice
    data = _noise_folder(tmp_path / "data", count=20)
    result = visiontune.fit(
        data,
        **TINY,
        epochs=1,
        batch_size=8,
        workers=0,
        out=str(tmp_path / "run"),
        progress=False,
    )
    advice = result.metrics["auto"]["advice"]
    assert advice["applied"].get("epochs") is None  # epochs=1 was explicit
    kept = result.metrics["auto"]["kept"]
    saved = json.loads((result.run_dir / "candidates" / kept / "config.json").read_text())
    assert saved["training"]["strategy"] == kept
