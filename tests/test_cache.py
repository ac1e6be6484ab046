"""The feature cache: hits, per-image invalidation, damage detection, keys, info/clear."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiontune.backbones import create_backbone
from visiontune.cli import main
from visiontune.data.folder import Sample
from visiontune.data.loader import SkipLog
from visiontune.engine.loop import Runtime
from visiontune.features import cache as cache_mod
from visiontune.features.cache import (
    CacheWarning,
    FeatureCache,
    cache_info,
    clear_cache,
    image_key,
    model_key,
    view_descriptor,
)
from visiontune.features.extract import concat_feature_sets, extract_features, iter_features

CFG = Runtime(progress=False, channels_last=False)
ATOL = 1e-5  # a row computed alone may differ from the same row in a batch by rounding only


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", weights="none")
    small = dataclasses.replace(model.preprocess, size=48)  # small images, fast tests
    return _with(model, preprocess=small).eval()


def _with(backbone, **changes):
    """The same network under a weights spec with ``changes`` (the spec itself is frozen)."""
    return backbone.with_weights(dataclasses.replace(backbone.weights, **changes))


def _write_png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def images(tmp_path) -> list[Sample]:
    folder = tmp_path / "data"
    folder.mkdir()
    samples = []
    for i in range(6):
        _write_png(folder / f"img{i}.png", seed=i)
        samples.append(Sample(folder / f"img{i}.png", label=i % 2))
    return samples


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "cache"


def _extract(backbone, samples, cache=None, **kwargs):
    return extract_features(
        backbone, samples, runtime=CFG, batch_size=4, workers=0, cache=cache, **kwargs
    )


def _cache(root, backbone, **kwargs) -> FeatureCache:
    return FeatureCache.for_backbone(root, backbone, **kwargs)


def _shards(cache: FeatureCache) -> list[Path]:
    return sorted(cache.folder.glob("shard-*.safetensors"))


def _assert_matches_fresh(backbone, result, samples) -> None:
    fresh = _extract(backbone, samples)
    assert [s.path for s in result.samples] == [s.path for s in fresh.samples]
    assert torch.equal(result.labels, fresh.labels)
    assert torch.allclose(result.features, fresh.features, atol=ATOL)


def _bump(path: Path, seed: int) -> None:
    """Rewrite with other pixels and move mtime on, as an editor saving the file would."""
    _write_png(path, seed=seed)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


# ------------------------------------------------------------------------------------ hits


def test_second_extract_is_all_hits_and_never_runs_the_backbone(backbone, images, root):
    cache = _cache(root, backbone)
    first = _extract(backbone, images, cache)
    assert (first.computed, first.from_cache) == (6, 0)
    _assert_matches_fresh(backbone, first, images)

    calls = []
    hook = backbone.register_forward_hook(lambda *args: calls.append(1))
    try:
        second = _extract(backbone, images, _cache(root, backbone))
    finally:
        hook.remove()
    assert calls == []
    assert (second.computed, second.from_cache) == (0, 6)
    assert torch.equal(second.features, first.features)
    assert torch.equal(second.labels, first.labels)
    assert second.samples == first.samples


def test_without_cache_behaviour_is_unchanged(backbone, images):
    result = _extract(backbone, images)
    assert result.features.shape == (6, backbone.num_features)
    assert (result.computed, result.from_cache) == (6, 0)


def test_partial_hits_keep_the_original_order(backbone, images, root):
    cache = _cache(root, backbone)
    _extract(backbone, images[::2], cache)
    shuffled = [images[i] for i in (5, 0, 3, 2, 1, 4)]
    result = _extract(backbone, shuffled, cache)
    assert (result.computed, result.from_cache) == (3, 3)
    _assert_matches_fresh(backbone, result, shuffled)


# ------------------------------------------------------------------------- per-image changes


def test_changed_added_removed_image_recompute_only_that_image(backbone, images, root):
    cache = _cache(root, backbone)
    before = _extract(backbone, images, cache)

    _bump(images[2].path, seed=99)
    changed = _extract(backbone, images, cache)
    assert (changed.computed, changed.from_cache) == (1, 5)
    assert not torch.allclose(changed.features[2], before.features[2], atol=ATOL)
    _assert_matches_fresh(backbone, changed, images)

    extra = images[0].path.with_name("new.png")
    _write_png(extra, seed=123)
    added = _extract(backbone, images + [Sample(extra, 1)], cache)
    assert (added.computed, added.from_cache) == (1, 6)

    images[4].path.unlink()
    removed = _extract(backbone, images, cache)  # the listing still names it: skipped, not cached
    assert (removed.computed, removed.from_cache) == (0, 5)
    assert images[4] not in removed.samples
    rescanned = [s for s in images if s.path.exists()]
    assert _extract(backbone, rescanned, cache).computed == 0


def test_undecodable_files_stay_skipped_and_are_never_stored(backbone, images, root):
    broken = images[0].path.with_name("broken.png")
    broken.write_bytes(b"not an image at all")
    samples = images + [Sample(broken, 0)]
    for expected_computed in (6, 0):
        skips = SkipLog()
        result = _extract(backbone, samples, _cache(root, backbone), skips=skips)
        assert result.computed == expected_computed and len(result) == 6
        assert str(broken) in skips.skipped


def test_stale_rows_are_dropped_at_compaction(backbone, images, root, monkeypatch):
    monkeypatch.setattr(cache_mod, "COMPACT_ABOVE", 3)
    cache = _cache(root, backbone)
    for sample in images:  # one shard per image
        _extract(backbone, [sample], cache)
    assert len(_shards(cache)) == 3  # four shards merged into one, then two more
    images[0].path.unlink()
    _bump(images[1].path, seed=77)
    assert cache.compact() == 4
    assert len(_shards(cache)) == 1
    result = _extract(backbone, images[1:], cache)
    assert (result.computed, result.from_cache) == (1, 4)
    _assert_matches_fresh(backbone, result, images[1:])


# ----------------------------------------------------------------------------- damage


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(255 - b for b in data[-16:])  # same size, different features
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [_corrupt, _truncate, _delete])
def test_damaged_shard_is_detected_and_rebuilt(backbone, images, root, damage):
    cache = _cache(root, backbone)
    _extract(backbone, images[:3], cache)
    _extract(backbone, images[3:], cache)
    damage(_shards(cache)[0])
    with pytest.warns(CacheWarning, match="damaged shard-0"):
        result = _extract(backbone, images, cache)
    assert (result.computed, result.from_cache) == (3, 3)
    _assert_matches_fresh(backbone, result, images)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert _extract(backbone, images, cache).computed == 0


GARBAGE = ['{"format_version": 1, "entr', "", '{"format_version": 1}', "\xff\xfe"]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_manifest_is_detected_and_rebuilt(backbone, images, root, garbage):
    cache = _cache(root, backbone)
    _extract(backbone, images, cache)
    (cache.folder / "manifest.json").write_text(garbage, encoding="latin-1")
    with pytest.warns(CacheWarning, match="unreadable manifest"):
        result = _extract(backbone, images, cache)
    assert result.computed == 6
    _assert_matches_fresh(backbone, result, images)
    assert len(_shards(cache)) == 1  # the old shards went with their manifest
    assert _extract(backbone, images, cache).computed == 0


def test_manifest_pointing_past_a_shard_is_rejected(backbone, images, root):
    cache = _cache(root, backbone)
    _extract(backbone, images, cache)
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    next(iter(manifest["entries"].values()))[1] = 10_000
    (cache.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(CacheWarning, match="unreadable manifest"):
        assert _extract(backbone, images, cache).computed == 6


def test_leftovers_of_a_killed_write_are_ignored_then_removed(backbone, images, root):
    cache = _cache(root, backbone)
    _extract(backbone, images[:3], cache)
    orphan = cache.folder / "shard-7.safetensors"  # shard renamed in, manifest never written
    orphan.write_bytes(b"half a shard")
    temp = cache.folder / ".manifest.json.abc.tmp"
    temp.write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        result = _extract(backbone, images, cache)
    assert (result.computed, result.from_cache) == (3, 3)
    assert not orphan.exists() and not temp.exists()


def test_store_rejects_mismatched_rows(backbone, root):
    cache = _cache(root, backbone)
    with pytest.raises(ValueError):
        cache.store(["a", "b"], torch.zeros(3, backbone.num_features))
    cache.store(["a"], torch.ones(1, 4))
    with pytest.raises(ValueError, match="4-wide"):
        cache.store(["b"], torch.ones(1, 5))
    found, missing = cache.lookup(["a", "b", "a"])
    assert torch.equal(found["a"], torch.ones(4)) and missing == ["b"]


# ------------------------------------------------------------------------------- keys


def test_key_changes_with_everything_that_changes_a_feature(backbone):
    base = model_key(backbone)
    assert model_key(backbone) == base and len(base) == 16
    resized = create_backbone("test_efficientnet", weights="none")
    resized.load_state_dict(backbone.state_dict())
    resized = _with(resized, preprocess=backbone.preprocess)
    assert model_key(resized) == base  # same weights, same preprocessing: same features

    size = dataclasses.replace(backbone.preprocess, size=56)
    assert model_key(_with(resized, preprocess=size)) != base
    crop = dataclasses.replace(backbone.preprocess, crop_pct=0.8)
    assert model_key(_with(resized, preprocess=crop)) != base

    other_init = create_backbone("test_efficientnet", weights="none")
    other_init = _with(other_init, preprocess=backbone.preprocess)
    assert model_key(other_init) != base  # no weights hash: the tensors themselves are hashed

    hashed = model_key(_with(other_init, sha256="a" * 64))
    assert len({base, hashed, model_key(_with(other_init, sha256="b" * 64))}) == 3
    # Fine-tuned (a run's bundle): the file's hash no longer names the tensors, they are hashed.
    fine_tuned = _with(other_init, sha256="a" * 64, fine_tuned=True)
    assert model_key(fine_tuned) == model_key(other_init)

    other_arch = create_backbone("test_resnet", weights="none")
    other_arch = _with(other_arch, sha256="a" * 64, preprocess=backbone.preprocess)
    assert model_key(other_arch) != hashed

    assert model_key(backbone, pooling="max") != base
    assert model_key(backbone, view=view_descriptor("standard", 0)) != base
    assert model_key(backbone, view=view_descriptor("standard", 1)) != model_key(
        backbone, view=view_descriptor("standard", 0)
    )


def test_changed_preprocessing_misses_the_cache(backbone, images, root):
    _extract(backbone, images, _cache(root, backbone))
    other = create_backbone("test_efficientnet", weights="none")
    other.load_state_dict(backbone.state_dict())
    other = _with(other, preprocess=dataclasses.replace(backbone.preprocess, size=40))
    result = _extract(other, images, _cache(root, other))
    assert result.computed == 6
    assert len(cache_info(root)) == 2


def test_cache_for_another_backbone_or_view_is_refused(backbone, images, root):
    other = create_backbone("test_efficientnet", weights="none")
    with pytest.raises(ValueError, match="was made for"):
        _extract(backbone, images, _cache(root, other))
    with pytest.raises(ValueError, match="was made for"):
        _extract(backbone, images, _cache(root, backbone), view_seed=3)


def test_image_key_identities(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _write_png(a, seed=1)
    _write_png(b, seed=1)
    stat_key = image_key(a)
    assert stat_key.startswith("stat:") and str(a.resolve()) in stat_key
    assert image_key(a, identity="content") == image_key(b, identity="content")
    assert image_key(a) != image_key(b)
    _bump(a, seed=2)
    assert image_key(a) != stat_key
    assert image_key(a, identity="content") != image_key(b, identity="content")
    with pytest.raises(ValueError):
        image_key(a, identity="guess")


def test_content_identity_survives_a_touch(backbone, images, root):
    cache = _cache(root, backbone, identity="content")
    _extract(backbone, images, cache)
    os.utime(images[0].path, ns=(0, 0))
    assert _extract(backbone, images, cache).computed == 0


# ------------------------------------------------------------------------ augmented views


def test_augmented_views_are_seeded_per_image(backbone, images, root):
    view = view_descriptor("standard", 7)
    cache = _cache(root, backbone, view=view)
    full = _extract(backbone, images, cache, view_seed=7)
    alone = _extract(backbone, images[3:4], view_seed=7)  # no cache: drawn afresh, alone
    assert torch.allclose(alone.features[0], full.features[3], atol=ATOL)
    other_seed = _extract(backbone, images, view_seed=8)
    assert not torch.allclose(other_seed.features, full.features, atol=ATOL)
    eval_view = _extract(backbone, images)
    assert not torch.allclose(eval_view.features, full.features, atol=ATOL)
    again = _extract(backbone, images, _cache(root, backbone, view=view), view_seed=7)
    assert again.computed == 0 and torch.equal(again.features, full.features)


# ------------------------------------------------------------------------- info / clear


def test_cache_info_and_clear(backbone, images, root):
    assert cache_info(root) == [] and clear_cache(root) == 0
    eval_cache = _cache(root, backbone)
    view_cache = _cache(root, backbone, view=view_descriptor("standard", 0))
    _extract(backbone, images, eval_cache)
    _extract(backbone, images[:2], view_cache, view_seed=0)

    info = {row["key"]: row for row in cache_info(root)}
    assert set(info) == {eval_cache.key, view_cache.key}
    row = info[eval_cache.key]
    assert (row["entries"], row["shards"], row["status"]) == (6, 1, "ok")
    assert row["dim"] == backbone.num_features
    assert row["description"]["backbone"] == "test_efficientnet"
    assert row["description"]["preprocess"]["size"] == 48
    assert row["bytes"] > 6 * backbone.num_features * 4
    assert info[view_cache.key]["entries"] == 2

    _truncate(_shards(eval_cache)[0])
    status = {r["key"]: r for r in cache_info(root)}[eval_cache.key]["status"]
    assert status.startswith("corrupt: shard-0.safetensors (") and "bytes" in status

    freed = clear_cache(root, view_cache.key)
    assert freed == info[view_cache.key]["bytes"] and not view_cache.folder.exists()
    assert [r["key"] for r in cache_info(root)] == [eval_cache.key]
    assert clear_cache(root) > 0 and cache_info(root) == []
    with pytest.raises(ValueError):
        clear_cache(root, "../../etc")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"\x00" * 8 + data[8:],  # header length zeroed
        lambda data: data[:8] + b"[" + data[9:],  # header JSON broken
        lambda data: data[:8] + data[8:].replace(b'"F32"', b'"F16"', 1),  # another dtype
        lambda data: data[:8] + data[8:].replace(b'"shape":[6,', b'"shape":[3,', 1),  # rows
        lambda data: bytes(len(data)),  # all zeros, same size
    ],
    ids=["length", "json", "dtype", "rows", "zeros"],
)
def test_cache_info_reports_a_corrupt_shard_of_the_right_size(
    backbone, images, root, damage, capsys
):
    """A shard overwritten in place keeps its size; its header gives it away, cheaply."""
    cache = _cache(root, backbone)
    _extract(backbone, images, cache)
    shard = _shards(cache)[0]
    data = shard.read_bytes()
    assert b'"shape":[6,' in data
    damaged = damage(data)
    assert len(damaged) == len(data) and damaged != data
    shard.write_bytes(damaged)
    status = cache_info(root)[0]["status"]
    assert status.startswith("corrupt: shard-0.safetensors (") and "rebuilt on next use" in status
    assert main(["cache", "info", "--cache-dir", str(root)]) == 0
    assert "corrupt: shard-0.safetensors" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(root)]) == 0  # info is the default action
    assert "corrupt: shard-0.safetensors" in capsys.readouterr().out


def test_default_root_is_the_per_user_cache(monkeypatch, tmp_path, backbone):
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "user-cache"))
    cache = FeatureCache(None, model_key(backbone))
    assert cache.folder == tmp_path / "user-cache" / "features" / cache.key
    assert cache.description is None


def test_concurrent_writers_lose_nothing(tmp_path):
    import threading

    def writer(w: int) -> None:
        cache = FeatureCache(tmp_path, "0123456789abcdef")  # own lock file handle per writer
        for i in range(10):
            cache.store([f"sha256:{w}-{i}"], torch.full((1, 4), float(10 * w + i)))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found, missing = FeatureCache(tmp_path, "0123456789abcdef").lookup(
        f"sha256:{w}-{i}" for w in range(3) for i in range(10)
    )
    assert missing == []
    assert all(
        float(found[f"sha256:{w}-{i}"][0]) == 10 * w + i for w in range(3) for i in range(10)
    )


@pytest.mark.parametrize("warm", [None, (), (0, 4, 5), (0, 1, 2, 4, 5, 6)])
def test_chunks_join_to_the_whole_extraction_however_warm_the_cache(backbone, images, root, warm):
    """``iter_features``' chunks (what ``extract`` writes one at a time) are ``extract_features``'
    rows in order: cached rows and computed misses interleaved, an undecodable file left out.
    ``warm``: indices already cached (None: no cache at all)."""
    broken = images[0].path.parent / "broken.png"
    broken.write_bytes(b"not a png")
    samples = [*images[:3], Sample(broken, 0), *images[3:]]
    cache = None if warm is None else _cache(root, backbone)
    if warm:
        _extract(backbone, [samples[i] for i in warm], cache=cache)
    chunks = list(
        iter_features(backbone, samples, runtime=CFG, batch_size=4, workers=0, cache=cache, chunk=2)
    )
    assert all(1 <= len(c) <= 2 for c in chunks)
    _assert_matches_fresh(backbone, concat_feature_sets(chunks), samples)
    assert sum(c.from_cache for c in chunks) == len(warm or ())
    assert sum(c.computed for c in chunks) == 6 - len(warm or ())
