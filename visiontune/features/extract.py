"""Run a frozen backbone over images once; train heads on the resulting feature tensors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..backbones import Backbone
from ..data.augment import PCAStats, describe_view
from ..data.folder import Sample
from ..data.loader import ImageDataset, SkipLog, make_loader
from ..data.transforms import decode_size, eval_transform, train_transform
from ..engine.loop import Runtime, run_inference
from .cache import FeatureCache, description_key, model_description, view_descriptor

__all__ = [
    "STORE_EVERY",
    "FeatureDataset",
    "FeatureSet",
    "concat_feature_sets",
    "empty_feature_set",
    "extract_features",
    "iter_features",
    "run_backbone",
]

# Images per cache write: a killed extraction keeps what it finished, at one shard per chunk.
STORE_EVERY = 8192


@dataclass
class FeatureSet:
    """Pooled backbone features for the decodable ``samples`` (rows align with ``samples``)."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) long
    samples: list[Sample]
    computed: int = 0  # rows this call ran through the backbone
    from_cache: int = 0  # rows this call read from a FeatureCache

    def __len__(self) -> int:
        return len(self.samples)


class FeatureDataset(Dataset):
    """Cached features in ``ImageDataset``'s ``(input, label, index, note, path)`` form."""

    def __init__(self, features: FeatureSet):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        return (
            self.features.features[index],
            self.features.labels[index].tolist(),
            index,
            None,
            None,
        )


class _SeededViews(ImageDataset):
    """Augmented views drawn from a seed per (view, image), not from the loader's RNG stream.

    So an image recomputed alone gets the same view it would get among all the others, which is
    what lets a cached view stand for "view ``seed`` of this image".
    """

    def __init__(self, samples: Sequence[Sample], transform, *, decode_size: int | None, seed: int):
        super().__init__(samples, transform, decode_size=decode_size)
        self.seed = seed

    def __getitem__(self, index: int):
        path = os.path.abspath(self.samples[index].path)
        digest = hashlib.sha256(f"{self.seed}\0{path}".encode()).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            return super().__getitem__(index)


def _dataset(
    backbone: Backbone,
    samples: list[Sample],
    view_seed: int | None,
    augment: str,
    pca: PCAStats | None,
) -> ImageDataset:
    spec = backbone.preprocess
    if view_seed is None:
        return ImageDataset(samples, eval_transform(spec), decode_size=decode_size(spec))
    transform = train_transform(spec, augment=augment, pca=pca)
    return _SeededViews(samples, transform, decode_size=decode_size(spec), seed=view_seed)


def extract_features(
    backbone: Backbone,
    samples: Sequence[Sample],
    *,
    network: nn.Module | None = None,
    **options,
) -> FeatureSet:
    """Features with the backbone's deterministic eval preprocessing; undecodable files skipped.

    ``cache``: read features stored for these files and run the backbone only on the rest, which
    are then stored. ``view_seed``: instead of the eval view, augmented view ``view_seed`` of each
    image (``train_transform(augment=..., pca=...)``, seeded per image); a cache for it must be
    made with ``view=view_descriptor(describe_view(augment, pca), view_seed)``. ``network``:
    the module run on the preprocessed images instead of ``backbone`` (a ``BackboneSplit``'s
    flattened ``lower`` part, for cached activations; its cache names it in ``pooling``).
    The keywords are ``iter_features``' (``runtime`` is required), which gives the same rows a
    chunk at a time.

    >>> from visiontune.backbones import create_backbone
    >>> from visiontune.data.folder import scan_folder
    >>> backbone = create_backbone(TINY["backbone"], weights=TINY["weights"])
    >>> cache = FeatureCache.for_backbone(None, backbone)  # under $VISIONTUNE_CACHE
    >>> runtime, test = Runtime(progress=False), scan_folder(photos).test
    >>> first = extract_features(backbone, test, runtime=runtime, cache=cache)
    >>> again = extract_features(backbone, test, runtime=runtime, cache=cache)
    >>> first.features.shape, first.computed, again.from_cache
    (torch.Size([6, 256]), 6, 6)
    """
    sets = list(iter_features(backbone, samples, network=network, **options))
    width = backbone.num_features if network is None else 0  # of an empty result
    return concat_feature_sets(sets) if sets else empty_feature_set(width)


def iter_features(
    backbone: Backbone,
    samples: Sequence[Sample],
    *,
    runtime: Runtime,
    batch_size: int = 64,
    workers: int = 0,
    skips: SkipLog | None = None,
    desc: str = "extract features",
    cache: FeatureCache | None = None,
    view_seed: int | None = None,
    augment: str = "standard",
    pca: PCAStats | None = None,
    network: nn.Module | None = None,
    chunk: int | None = None,
) -> Iterator[FeatureSet]:
    """``extract_features``' rows as ``FeatureSet`` s of at most ``chunk`` rows (default
    ``STORE_EVERY``), in sample order.

    It holds the rows of one chunk it computed (and, with a ``cache``, the rows it read from
    it), so a caller that writes each chunk out and drops it (``extract``) runs any number of
    images in the memory of one chunk; joining the chunks is ``extract_features``.

    >>> from visiontune.backbones import create_backbone
    >>> from visiontune.data.folder import scan_folder
    >>> backbone = create_backbone(TINY["backbone"], weights=TINY["weights"])
    >>> test = scan_folder(photos).test
    >>> chunks = iter_features(backbone, test, runtime=Runtime(progress=False), chunk=4)
    >>> [len(c) for c in chunks]
    [4, 2]
    """
    samples = list(samples)
    chunk = STORE_EVERY if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")

    def run(part: list[Sample], label: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return run_backbone(
            network if network is not None else backbone,
            _dataset(backbone, part, view_seed, augment, pca),
            runtime=runtime,
            batch_size=batch_size,
            workers=workers,
            skips=skips,
            desc=label,
        )

    if cache is None:
        return _uncached_chunks(samples, run, desc, chunk)
    view = (
        view_descriptor(describe_view(augment, pca), view_seed) if view_seed is not None else None
    )
    _check_cache(cache, backbone, view, runtime.precision.inference)
    return _cached_chunks(samples, cache, run, desc, chunk)


def concat_feature_sets(sets: Sequence[FeatureSet]) -> FeatureSet:
    """One set holding the rows of ``sets`` in order (their ``computed``/``from_cache`` summed)."""
    if len(sets) == 1:
        return sets[0]
    return FeatureSet(
        torch.cat([s.features for s in sets]),
        torch.cat([s.labels for s in sets]),
        [x for s in sets for x in s.samples],
        computed=sum(s.computed for s in sets),
        from_cache=sum(s.from_cache for s in sets),
    )


def empty_feature_set(dim: int) -> FeatureSet:
    """No rows, ``dim`` columns: a missing validation split, say."""
    return FeatureSet(torch.empty(0, dim), torch.empty(0, dtype=torch.long), [])


def run_backbone(
    backbone: nn.Module,
    dataset: ImageDataset,
    *,
    runtime: Runtime,
    batch_size: int,
    workers: int,
    skips: SkipLog | None,
    desc: str,
):
    """``(features, labels, indices)`` of ``dataset``'s decodable images, in order, through
    ``backbone`` (or any module mapping image batches to rows) on ``runtime.device``;
    undecodable ones are recorded in ``skips``."""
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers)
    record = skips.record if skips is not None else None
    backbone = backbone.to(runtime.device)
    if runtime.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    return run_inference(backbone, loader, runtime=runtime, on_batch=record, desc=desc)


def _check_cache(cache: FeatureCache, backbone: Backbone, view: str | None, precision: str) -> None:
    """Refuse a cache made for another backbone, preprocessing, view or precision: its rows
    would be wrong."""
    if cache.description is None:  # built from a bare key: the caller vouches for it
        return
    pooling = cache.description.get("pooling")
    expected = model_description(backbone, pooling=pooling, view=view, precision=precision)
    if description_key(expected) != cache.key:
        raise ValueError(f"{cache} was made for {cache.description}, not for {expected}")


def _image_key(cache: FeatureCache, sample: Sample) -> str | None:
    try:
        return cache.image_key(sample.path)
    except OSError:  # missing or unreadable: left to the loader, which records it as skipped
        return None


def _chunk_label(desc: str, n: int, count: int) -> str:
    return desc if count == 1 else f"{desc} {n + 1}/{count}"


def _uncached_chunks(samples: list[Sample], run, desc: str, chunk: int) -> Iterator[FeatureSet]:
    parts = range(0, len(samples), chunk)
    for n, start in enumerate(parts):
        part = samples[start : start + chunk]
        features, labels, indices = run(part, _chunk_label(desc, n, len(parts)))
        if len(indices):
            kept = [part[i] for i in indices.tolist()]
            yield FeatureSet(features, labels, kept, computed=len(kept))


def _cached_chunks(
    samples: list[Sample], cache: FeatureCache, run, desc: str, chunk: int
) -> Iterator[FeatureSet]:
    """Look every sample up, run ``run`` on the misses a chunk at a time and store each chunk
    (a killed extraction keeps what it finished), yielding the rows up to the next miss."""
    keys = [_image_key(cache, s) for s in samples]
    found, _ = cache.lookup(k for k in keys if k is not None)
    todo = [i for i, k in enumerate(keys) if k not in found]
    computed: dict[int, torch.Tensor] = {}  # sample index -> row, until it is yielded
    parts = range(0, len(todo), chunk)
    ready = 0  # the samples before this index have been yielded
    for n, start in enumerate(parts):
        part = todo[start : start + chunk]
        features, _, indices = run([samples[i] for i in part], _chunk_label(desc, n, len(parts)))
        done = [part[j] for j in indices.tolist()]
        keyed = [j for j, i in enumerate(done) if keys[i] is not None]
        cache.store([keys[done[j]] for j in keyed], features[keyed])
        computed.update(zip(done, features, strict=True))
        upto = todo[start + chunk] if start + chunk < len(todo) else len(samples)
        yield from _rows_as_sets(samples, range(ready, upto), keys, found, computed, chunk)
        ready = upto
    yield from _rows_as_sets(samples, range(ready, len(samples)), keys, found, computed, chunk)


def _rows_as_sets(
    samples: list[Sample],
    indices: range,
    keys: list[str | None],
    found: dict[str, torch.Tensor],
    computed: dict[int, torch.Tensor],
    chunk: int,
) -> Iterator[FeatureSet]:
    """The rows of ``indices`` (read from the cache or computed; skipped images have neither) in
    sets of at most ``chunk``; computed rows are handed over, not kept."""
    present = [i for i in indices if i in computed or keys[i] in found]
    for start in range(0, len(present), chunk):
        part = present[start : start + chunk]
        fresh = sum(1 for i in part if i in computed)
        rows = [computed.pop(i) if i in computed else found[keys[i]] for i in part]
        yield FeatureSet(
            torch.stack(rows),
            torch.tensor([samples[i].target for i in part], dtype=torch.long),
            [samples[i] for i in part],
            computed=fresh,
            from_cache=len(part) - fresh,
        )
