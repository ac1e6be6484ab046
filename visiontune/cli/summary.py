"""The lines `train` and `demo` print when a run is done."""

from __future__ import annotations

import os

__all__ = ["print_summary"]


def print_summary(result) -> None:
    """Validation and test accuracy, excluded and skipped files, and the run folder of a
    ``FitResult``; printed by rank 0 only under torchrun."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    val = result.metrics["val"]
    chosen = f"L2 strength C={val['C']:g}" if "C" in val else f"best epoch {val['best_epoch']}"
    print(f"validation accuracy {val['accuracy']:.4f} ({chosen})")
    test = result.metrics.get("test")
    if test and test.get("accuracy") is not None:
        print(f"test accuracy {test['accuracy']:.4f} on {test['num_images']} images")
    excluded = (result.metrics.get("data_checks") or {}).get("excluded_duplicates")
    if excluded:
        print(
            f"excluded {excluded['val']} val and {excluded['test']} test image(s) with a copy in "
            "train "
            "(--exclude-duplicates)"
        )
    skipped = result.metrics.get("skipped") or {}
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable file(s); listed in "
            f"{result.run_dir / 'metrics.json'}"
        )
    print(f"run saved to {result.run_dir}")
