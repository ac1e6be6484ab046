"""``advise`` and ``--strategy auto``: measure the data, choose a strategy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import _runtime
from .._console import console
from ..backbones import Backbone, create_backbone
from ..config import TrainConfig
from ..data.folder import DatasetSplits, scan_folder
from ..data.loader import default_workers
from ..engine.loop import LoopConfig
from ..features.cache import FeatureCache
from ..features.similarity import measure
from ..strategies import Advice, decide


def _advise(splits: DatasetSplits, backbone: Backbone, config: TrainConfig, device) -> dict:
    """``--strategy auto``: measure train + val, decide, print the advice; the record for the run."""
    cfg = LoopConfig(
        epochs=1, device=device, channels_last=device.type == "cpu", progress=config.progress
    )
    cache = FeatureCache.for_backbone(config.cache_dir, backbone) if config.cache else None
    workers = default_workers() if config.workers is None else config.workers
    advice = decide(
        measure(splits, backbone, cfg=cfg, cache=cache, workers=workers, seed=config.seed)
    )
    if config.progress:
        console.print(
            f"[bold]advice[/] {advice.quadrant} -> strategy {advice.strategy}: {advice.reason}"
        )
    return advice.to_dict()


def _apply_advice(config: TrainConfig, advice: dict) -> TrainConfig:
    """The chosen strategy, with its settings where the option was left at its default.

    An option given explicitly with its default value cannot be told apart and is replaced too.
    """
    defaults = TrainConfig(data=config.data)
    applied = {
        k: v for k, v in advice["settings"].items() if getattr(config, k) == getattr(defaults, k)
    }
    advice["applied"] = applied
    return replace(config, strategy=advice["strategy"], **applied)


def advise(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
) -> Advice:
    """Measure ``data`` against ``backbone`` and choose a fine-tuning strategy (``--strategy auto``).

    Looks at the train and val splits only (never test): their size and class balance, how well a
    cross-validated linear probe separates the classes on frozen features (cached) and how far the
    images' BatchNorm statistics sit from the pretraining data's. See ``visiontune.strategies.advisor``.

    >>> advice = visiontune.api.advise("photos/")        # doctest: +SKIP
    >>> advice.strategy, advice.quadrant                  # doctest: +SKIP
    ('head', 'small+similar')
    """
    _runtime.tune_allocator()
    _runtime.configure_threads()
    splits = scan_folder(data, val_fraction=0.0, seed=seed)
    model = create_backbone(backbone, weights=weights or "default")
    dev = _runtime.resolve_device(device)
    cfg = LoopConfig(epochs=1, device=dev, channels_last=dev.type == "cpu", progress=progress)
    store = FeatureCache.for_backbone(cache_dir, model) if cache else None
    return decide(
        measure(
            splits,
            model,
            cfg=cfg,
            cache=store,
            seed=seed,
            workers=default_workers() if workers is None else workers,
        )
    )
