"""What ``train`` and ``demo`` print when a run ends."""

from __future__ import annotations

import os

__all__ = ["print_ensemble_summary", "print_summary"]


def print_summary(result) -> None:
    """Validation and test accuracy, excluded and skipped files, and where the run went."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    decision = result.metrics.get("auto")
    if decision:
        tried = ", ".join(c["name"] for c in decision["candidates"])
        print(f"auto tried {tried}; kept {decision['kept']}: {decision['reasons'][-1]}")
    val = result.metrics["val"]
    chosen = f"L2 strength C={val['C']:g}" if "C" in val else f"best epoch {val['best_epoch']}"
    thresholds = result.metrics.get("thresholds")
    if thresholds and "val" in thresholds:  # multi-label: scored at the per-class thresholds
        scores = thresholds["val"]
        print(f"validation mAP {scores['mAP']:.4f}, macro F1 {scores['macro_f1']:.4f} ({chosen})")
    else:
        accuracy = "n/a" if val["accuracy"] is None else f"{val['accuracy']:.4f}"
        print(f"validation accuracy {accuracy} ({chosen})")
    test = result.metrics.get("test")
    if test and test.get("task") == "multi-label":
        print(
            f"test mAP {test['mAP']:.4f}, macro F1 {test['macro_f1']:.4f} on "
            f"{test['num_images']} images"
        )
    elif test and test.get("accuracy") is not None:
        print(f"test accuracy {test['accuracy']:.4f} on {test['num_images']} images")
    excluded = (result.metrics.get("data_checks") or {}).get("excluded_duplicates")
    if excluded:
        print(
            f"excluded {excluded['val']} val and {excluded['test']} test image(s) with a copy "
            "in train (--exclude-duplicates)"
        )
    suspects = result.metrics.get("excluded_suspects")
    if suspects is not None:
        print(
            f"left out {suspects['count']} of {suspects['audited']} training images the audit "
            f"flagged (--exclude-suspects); listed in {result.run_dir / 'metrics.json'}"
        )
    skipped = result.metrics.get("skipped") or {}
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable file(s); listed in "
            f"{result.run_dir / 'metrics.json'}"
        )
    print(f"run saved to {result.run_dir}")


def print_ensemble_summary(result) -> None:
    """Each member's summary, then the ensemble's test accuracy and folder."""
    for member, fitted in zip(result.metrics["members"], result.members, strict=True):
        print(f"member {member['run']} ({member['backbone']}, seed {member['seed']}): ", end="")
        print_summary(fitted)
    test = result.metrics.get("test")
    if test and test.get("task") == "multi-label":
        print(
            f"ensemble of {len(result.members)}: test mAP {test['mAP']:.4f}, macro F1 "
            f"{test['macro_f1']:.4f} on {test['num_images']} images"
        )
    elif test and test.get("accuracy") is not None:
        print(
            f"ensemble of {len(result.members)}: test accuracy {test['accuracy']:.4f} on "
            f"{test['num_images']} images"
        )
    print(f"ensemble saved to {result.run_dir}")
