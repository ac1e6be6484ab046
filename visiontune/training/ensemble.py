"""``fit_ensemble``: train several members into one folder that loads as one model.

An ensemble is ``fit`` in a loop over derived configs: the same backbone with seeds
``seed .. seed+N-1`` (each seed also draws its own validation hold-out, so together the members
see all of the training images), or one member per backbone with the same seed.

    RUN/ensemble.json        members, their backbones and seeds
    RUN/metrics.json         the ensemble's test metrics (when DATA has a test split), per member
    RUN/members/0, 1, ...    ordinary run folders
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .._console import console
from .._io import atomic_write_text
from ..backbones import create_backbone
from ..config import TrainConfig
from ..data.dataset import scan_data
from ..errors import VisiontuneError
from ..prediction.ensemble import Ensemble, write_ensemble_file
from .outdir import check_out, remove_old_run
from .plan import default_run_dir
from .run import FitResult, json_text, run_training

__all__ = ["EnsembleFitResult", "member_configs", "train_ensemble"]


@dataclass
class EnsembleFitResult:
    run_dir: Path
    model: Ensemble
    members: list[FitResult]
    metrics: dict  # "test" (the ensemble's, if DATA has a test split), "members"


def member_configs(
    config: TrainConfig, *, members: int | None = None, backbones: Sequence[str] | None = None
) -> list[TrainConfig]:
    """One config per member: seeds ``seed..seed+members-1``, or one per backbone (same seed).
    Output folders are left to the caller."""
    if backbones is not None:
        backbones = [b.strip() for b in backbones]
        if not backbones or not all(backbones):
            raise VisiontuneError("--backbone list has an empty name")
        if members not in (None, len(backbones)):
            raise VisiontuneError(
                f"--ensemble {members} does not match the {len(backbones)} backbones "
                "given; leave --ensemble out to train one member per backbone"
            )
        return [replace(config, backbone=b) for b in backbones]
    if members is None or members < 1:
        raise VisiontuneError(f"--ensemble must be at least 1, got {members}")
    return [replace(config, seed=config.seed + i) for i in range(members)]


def _check_backbones(configs: list[TrainConfig]) -> None:
    """Every backbone builds with its weights before the first member trains for minutes."""
    for name in dict.fromkeys(c.backbone for c in configs):
        create_backbone(name, weights=configs[0].weights or "default")


def train_ensemble(
    config: TrainConfig,
    *,
    members: int | None = None,
    backbones: Sequence[str] | None = None,
    explicit: frozenset[str] = frozenset(),
) -> EnsembleFitResult:
    """Train an ensemble described by ``config`` and save it as one run folder."""
    configs = member_configs(config, members=members, backbones=backbones)
    if config.out:  # before any work: writable, and not a finished ensemble unless --overwrite
        check_out(Path(config.out).expanduser(), overwrite=config.overwrite)
    splits = scan_data(
        config.data, config.manifest_columns, val_fraction=config.val_fraction, seed=config.seed
    )
    if len(set(c.backbone for c in configs)) > 1:
        _check_backbones(configs)
    root = default_run_dir(replace(config, backbone="ensemble"))
    results = []
    for i, member in enumerate(configs):
        if config.progress:
            console.print(
                f"[bold]ensemble member {i + 1}/{len(configs)}[/]: {member.backbone}, "
                f"seed {member.seed}"
            )
        out = str(root / "members" / str(i))
        results.append(run_training(replace(member, out=out), explicit=explicit))
    ensemble = Ensemble([r.model for r in results], run_dir=root)
    remove_old_run(root, keep_members=len(configs))  # an old, larger ensemble's extra members
    write_ensemble_file(
        root,
        [r.run_dir for r in results],
        extra={
            "classes": list(ensemble.labels.names),
            "backbones": [c.backbone for c in configs],
            "seeds": [c.seed for c in configs],
            "training": replace(config, out=str(root)).to_dict(),
        },
    )
    test = None
    if splits.test:
        test = ensemble.evaluate_samples(
            splits.test,
            batch_size=config.batch_size * 2,
            workers=config.workers,
            progress=config.progress,
        )
    metrics = {
        "test": test,
        "members": [
            {
                "run": f"members/{i}",
                "backbone": c.backbone,
                "seed": c.seed,
                "val": r.metrics["val"],
                "test_accuracy": (r.metrics.get("test") or {}).get("accuracy"),
            }
            for i, (c, r) in enumerate(zip(configs, results, strict=True))
        ],
    }
    atomic_write_text(root / "metrics.json", json_text(metrics))
    return EnsembleFitResult(root, ensemble, results, metrics)
