"""Datasets, loaders and transforms: undecodable files are dropped from batches and reported."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import solid_image

from visiontune import _runtime
from visiontune.data.folder import Sample
from visiontune.data.loader import ImageDataset, SkipLog, make_loader
from visiontune.data.transforms import decode_size, eval_transform, train_transform
from visiontune.specs import PreprocessSpec

SPEC = PreprocessSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.8)


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    out = []
    for i in range(5):
        solid_image((50 * i, 100, 200), (60, 40), seed=i).save(tmp_path / f"ok{i}.png")
        out.append(Sample(tmp_path / f"ok{i}.png", i % 2))
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "empty.png").write_bytes(b"")
    solid_image((1, 2, 3), (60, 40)).save(tmp_path / "cut.jpg", quality=90)
    cut = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    return (
        out[:2]
        + [Sample(tmp_path / "noise.jpg", 0), Sample(tmp_path / "cut.jpg", 1)]
        + out[2:]
        + [Sample(tmp_path / "empty.png", 1)]
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_drop_undecodable_files_and_report_them(samples, workers):
    dataset = ImageDataset(samples, eval_transform(SPEC), decode_size=decode_size(SPEC))
    loader = make_loader(dataset, batch_size=3, shuffle=False, workers=workers)
    skips = SkipLog()
    seen = []
    for batch in loader:
        skips.record(batch)
        assert batch.images.shape[1:] == (3, 32, 32)
        assert len(batch.images) == len(batch.labels) == len(batch.indices)
        assert batch.labels.tolist() == [samples[i].label for i in batch.indices.tolist()]
        seen += batch.indices.tolist()
    assert seen == [0, 1, 3, 4, 5, 6]
    report = skips.to_dict()
    assert set(report["skipped"]) == {str(samples[2].path), str(samples[7].path)}
    assert all(reason for reason in report["skipped"].values())
    assert list(report["notes"]) == [str(samples[3].path)]
    assert "truncated" in report["notes"][str(samples[3].path)]


def test_a_batch_of_only_bad_files_is_empty_not_an_error(samples):
    bad = [samples[2], samples[7]]
    loader = make_loader(
        ImageDataset(bad, eval_transform(SPEC), decode_size=None),
        batch_size=4,
        shuffle=False,
        workers=0,
    )
    (batch,) = list(loader)
    assert len(batch.labels) == 0 and len(batch.failures) == 2


def test_shuffled_order_is_seeded(samples):
    good = [s for s in samples if s.path.suffix == ".png" and s.path.stat().st_size]
    dataset = ImageDataset(good, eval_transform(SPEC), decode_size=None)

    def order(seed):
        return [
            i
            for b in make_loader(dataset, batch_size=2, shuffle=True, workers=0, seed=seed)
            for i in b.indices.tolist()
        ]

    assert order(3) == order(3)
    assert sorted(order(3)) == list(range(len(good)))
    assert any(order(3) != order(s) for s in (4, 5, 6))


def test_eval_transform_resizes_crops_and_normalises():
    img = solid_image((128, 64, 255), (90, 50), noise=0)
    x = eval_transform(SPEC)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = (torch.tensor([128, 64, 255]) / 255 - 0.5) / 0.25
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=0.02)
    assert SPEC.resize_size == 40 and decode_size(SPEC) == 40


def test_train_transform_is_random_but_the_right_shape():
    img = solid_image((128, 64, 255), (90, 50), seed=1, noise=60)
    t = train_transform(SPEC)
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == b.shape == (3, 32, 32)
    assert not torch.equal(a, b)
    assert torch.equal(train_transform(SPEC, augment="none")(img), eval_transform(SPEC)(img))
    with pytest.raises(ValueError):
        train_transform(SPEC, augment="heavy")


def test_preprocess_spec_round_trips_and_validates():
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
    assert PreprocessSpec.from_dict({**SPEC.to_dict(), "unknown": 1}) == SPEC
    for bad in (
        {"interpolation": "lanczos9"},
        {"crop_pct": 0},
        {"crop_pct": 1.5},
        {"size": 4},
        {"mean": (0.5, 0.5)},
    ):
        with pytest.raises(ValueError):
            PreprocessSpec(**bad)


# A fresh interpreter forks the worker, so the heap it inherits is the same at every run (a
# long test session's parent leaves free heap of any shape, which the worker may reuse: glibc
# maps a large block only where no free chunk fits it). The blocks lie between the worker's mmap
# threshold (16 MiB) and the parent's (1 GiB, or 32 MiB where glibc caps it): a reset worker
# takes from its heap only what fits in the heap's free top (at most the 64 MiB pad its parent's
# settings keep there), maps the rest and unmaps it at free; a worker with the parent's
# thresholds grows its heap for them all and keeps them. Private memory, not resident, is
# measured: a reused inherited page is copied on write.
_KEPT_AFTER_FREE = """
import ctypes, sys, torch
from visiontune import _runtime
from visiontune.data.loader import make_loader

BLOCK, BLOCKS = (_runtime.WORKER_MMAP_THRESHOLD + (32 << 20)) // 2, 8

def private_mib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) // 1024

class KeptAfterFree(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        before = private_mib()
        blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)
        for block in blocks:
            libc.free(ctypes.c_void_p(block))
        return torch.zeros(1), private_mib() - before, index, None, "x"

if not _runtime.tune_allocator():
    sys.exit(3)
_runtime.release_free_memory()  # nor does the worker inherit free heap to reuse
loader = make_loader(KeptAfterFree(), batch_size=1, shuffle=False, workers=1)
if sys.argv[1] == "inherited":
    loader.worker_init_fn = None  # the worker as it was before: the parent's thresholds
print(BLOCKS * BLOCK >> 20, int(next(iter(loader)).labels[0]))
"""


def _kept_after_free(worker: str) -> tuple[int, int]:
    """(MiB written, MiB of them kept) by a loader worker that malloc'd, wrote
    and freed them, with its start as the loader makes it or with the parent's thresholds."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = subprocess.run(
        [sys.executable, "-c", _KEPT_AFTER_FREE, worker], capture_output=True, text=True, env=env
    )
    if run.returncode == 3:
        pytest.skip("the allocator could not be tuned here")
    assert run.returncode == 0, run.stderr
    written, kept = map(int, run.stdout.split())
    return written, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_loader_worker_gives_back_what_it_frees_though_the_parent_keeps_it():
    written, kept = _kept_after_free("reset")
    assert kept <= _runtime.TOP_PAD >> 20  # all but what fitted in the heap's free top: unmapped
    written, kept_as_before = _kept_after_free("inherited")
    assert kept_as_before > written // 2  # the control: its heap kept what was freed
