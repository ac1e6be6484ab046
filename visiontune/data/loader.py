"""Datasets and DataLoaders that decode in worker processes and survive undecodable files.

A file that fails to decode never stops an epoch: the dataset returns a failure marker, the
collate function drops it from the batch and passes its index and reason up, and the caller
records it (``SkipLog``) for the run's report.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from .. import _runtime
from .._seeding import derive_seed, isolated_rng, sample_seeds
from .folder import Sample
from .images import ImageDecodeError, decode_image

__all__ = [
    "Batch",
    "EpochSampler",
    "ImageDataset",
    "SeededSamples",
    "SkipLog",
    "collate_skipping_failures",
    "default_workers",
    "make_loader",
]


class ImageDataset(Dataset):
    """``(image tensor, label, index, note, path)`` per sample; for an unreadable file the image
    is ``None`` and the note says why. The path travels so a batch can say which files failed."""

    def __init__(self, samples: Sequence[Sample], transform: Callable, *, decode_size: int | None):
        self.samples = list(samples)
        self.transform = transform
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            decoded = decode_image(sample.path, min_short_side=self.decode_size)
        except ImageDecodeError as exc:
            return None, sample.target, index, str(exc), str(sample.path)
        return self.transform(decoded.image), sample.target, index, decoded.note, str(sample.path)


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): skipped
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, note): loaded, but odd


def collate_skipping_failures(items) -> Batch:
    good = [it for it in items if it[0] is not None]
    failures = [(it[4], it[3]) for it in items if it[0] is None]
    notes = [(it[4], it[3]) for it in good if it[3]]
    if good:
        images = torch.stack([it[0] for it in good])
    else:
        images = torch.empty(0)
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    indices = torch.tensor([it[2] for it in good], dtype=torch.long)
    return Batch(images, labels, indices, failures, notes)


class SkipLog:
    """Files skipped (undecodable) or loaded with a caveat, keyed by path, for the run's report."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def record(self, batch: Batch) -> None:
        """Note the batch's skipped files and caveats (pass it as a loop's ``on_batch``)."""
        self.skipped.update(batch.failures)
        self.notes.update(batch.notes)

    def update(self, found: dict) -> None:
        """Add a ``to_dict()`` record: another rank's, or an interrupted run's."""
        self.skipped.update(found.get("skipped", {}))
        self.notes.update(found.get("notes", {}))

    def to_dict(self) -> dict:
        return {
            "skipped": dict(sorted(self.skipped.items())),
            "notes": dict(sorted(self.notes.items())),
        }


def default_workers() -> int:
    """Loader processes: one per spare core, at least one, at most four."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) - 1))


def _start_worker(worker_id: int) -> None:
    _runtime.tune_worker_allocator()  # so the worker does not keep 2 GiB of free heap
    # torch seeds each worker from the loader's generator; numpy and random follow it so any
    # augmentation library gives the same draws for the same --seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochSampler(Sampler):
    """One epoch's indices, each paired with the seed its sample is drawn under: ``(index, seed)``.

    The order is a permutation seeded by ``(seed, epoch)`` and is split across ``world_size``
    ranks as ``DistributedSampler`` does (padded to a multiple, then every ``world_size``-th
    index), so rank ``r``'s ``k``-th batch holds every ``world_size``-th image of the ``k``-th
    batch one process would take with the whole batch size. ``set_epoch`` picks the epoch; each
    pass also moves on to the next one, so plain re-iteration still draws a new epoch.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        weights: torch.Tensor | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.weights = weights  # given: the epoch is ``size`` weighted draws with replacement
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self):
        # Eager, not a generator: the epoch is taken when the loader asks, not at first use.
        epoch, self.epoch = self.epoch, self.epoch + 1
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        if self.weights is not None:
            order = list(WeightedRandomSampler(self.weights, self.size, generator=generator))
        elif self.shuffle:
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        while order and len(order) < len(self) * self.world_size:  # pad by repeating, like torch
            order += order[: len(self) * self.world_size - len(order)]
        seeds = sample_seeds(self.seed, epoch, self.size)
        return iter([(i, int(seeds[i])) for i in order[self.rank :: self.world_size]])


class SeededSamples(Dataset):
    """``dataset[index]`` computed under the sample's own seed, for ``(index, seed)`` items.

    Augmentation then depends on neither the worker that decodes the image nor what that
    worker decoded before, so any ``--workers`` (persistent or not) gives the same batches.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with isolated_rng(seed):
            return self.dataset[index]


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    seeded_epochs: bool = False,
    rank: int = 0,
    world_size: int = 1,
    sample_weights: torch.Tensor | None = None,
) -> DataLoader:
    """A loader that survives undecodable files (``collate_skipping_failures``).

    ``seeded_epochs``: order and augmentation are functions of ``(seed, epoch, index)`` through
    ``EpochSampler`` and ``SeededSamples`` (call ``loader.sampler.set_epoch`` before each epoch);
    needed to resume a run exactly and to shard it over ``world_size`` ranks.
    ``sample_weights`` (one per sample, ``data.balance.sample_weights``): each epoch is
    ``len(dataset)`` draws with replacement in proportion to them (``WeightedRandomSampler``).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if seeded_epochs or world_size > 1:
        sampler = EpochSampler(
            len(dataset),
            seed=seed,
            shuffle=shuffle,
            rank=rank,
            world_size=world_size,
            weights=sample_weights,
        )
        dataset, shuffle = SeededSamples(dataset), None
    elif sample_weights is not None:
        sampler, shuffle = (
            WeightedRandomSampler(sample_weights, len(dataset), generator=generator),
            None,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_failures,
        worker_init_fn=_start_worker if workers > 0 else None,
        generator=generator,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
