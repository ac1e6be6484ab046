"""The report's two figures: the confusion matrix and the training curves, as PNG files.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never through
pyplot's global state, so they work with no display and leak no open figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from .._io import atomic_write

__all__ = [
    "history_kind",
    "plot_confusion_matrix",
    "plot_error_cooccurrence",
    "plot_history",
    "plot_reliability",
]


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def plot_confusion_matrix(
    path: Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str]
) -> None:
    """Counts, rows true and columns predicted; numbers in the cells up to 30 classes."""
    n = len(class_names)
    side = min(24.0, max(4.5, 0.55 * n + 2.5))
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(class_names)).plot(
        ax=ax,
        cmap="Blues",
        colorbar=False,
        include_values=n <= 30,
        xticks_rotation=45,
        values_format="d",
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (rows: true, columns: predicted)")
    _save(fig, path)


def plot_error_cooccurrence(path: Path, counts: np.ndarray, labels: Sequence[str]) -> None:
    """A multi-label evaluation's errors: rows the class missed, columns the class wrongly
    predicted on the same image (``multilabel_report.error_cooccurrence``)."""
    n = len(labels)
    side = min(24.0, max(4.5, 0.55 * n + 2.5))
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Reds")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    if n <= 30:
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
    ax.set_xlabel("wrongly predicted class")
    ax.set_ylabel("missed class")
    ax.set_title("Errors on the same image (rows: missed, columns: wrongly predicted)")
    _save(fig, path)


def history_kind(history: Sequence[dict] | None) -> str | None:
    """``"epochs"`` (one row per epoch: train/val loss and accuracy), ``"c_grid"`` (a ``head``
    run's linear probe: one row per regularisation strength C, no training loss), or None."""
    if not history:
        return None
    if all("epoch" in row for row in history):
        return "epochs"
    if all("C" in row for row in history):
        return "c_grid"
    return None


def _column(history: Sequence[dict], key: str) -> np.ndarray:
    values = [row.get(key) for row in history]
    return np.array([math.nan if v is None else float(v) for v in values])


def _plot_series(ax, x, history, keys_labels, colour) -> None:
    for key, label, style in keys_labels:
        y = _column(history, key)
        if np.isfinite(y).any():  # no validation split: val columns are NaN, nothing to draw
            ax.plot(x, y, style, color=colour, marker="o", markersize=3, label=label)


def _plot_one(
    loss_ax, acc_ax, kind: str, history: Sequence[dict], name: str | None, colour: str
) -> None:
    def label(split: str) -> str:
        return f"{name}: {split}" if name else split

    best = next((row for row in history if row.get("best")), None)
    x_key = "epoch" if kind == "epochs" else "C"
    x = _column(history, x_key)
    if kind == "epochs":
        _plot_series(
            loss_ax,
            x,
            history,
            [("train_loss", label("train"), "-"), ("val_loss", label("validation"), "--")],
            colour,
        )
    elif np.isfinite(_column(history, "val_acc")).any():
        # without a validation split the probe stores -train_acc as "val_loss" (to rank C): no loss
        _plot_series(loss_ax, x, history, [("val_loss", label("validation"), "--")], colour)
    _plot_series(
        acc_ax,
        x,
        history,
        [("train_acc", label("train"), "-"), ("val_acc", label("validation"), "--")],
        colour,
    )
    if best is not None:
        for ax in (loss_ax, acc_ax):
            ax.axvline(
                best[x_key], color=colour, linestyle=":", alpha=0.7, label=None if name else "best"
            )


def plot_history(path: Path, histories: Mapping[str, Sequence[dict]]) -> bool:
    """Loss and accuracy along training from runs' ``history.json`` (one run, or an ensemble's
    members: one colour each); False (nothing written) when no history has a known shape."""
    kinds = {name: history_kind(h) for name, h in histories.items()}
    known = [name for name, kind in kinds.items() if kind]
    if not known:
        return False
    kind = kinds[known[0]]  # members of another shape (a head run among fine-tunes) are left out
    shown = [name for name in known if kinds[name] == kind]
    fig = Figure(figsize=(10, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, name in enumerate(shown):
        _plot_one(loss_ax, acc_ax, kind, histories[name], name if len(shown) > 1 else None, f"C{i}")
    if kind == "epochs":
        xlabel, title = "epoch", "Training curves (dotted: best epoch, the lowest validation loss)"
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        xlabel = "C (inverse L2 strength)"
        title = (
            "Linear probe on frozen features: one fit per C (dotted: best, lowest validation loss)"
        )
        for ax in (loss_ax, acc_ax):
            ax.set_xscale("log")
    for ax, ylabel in ((loss_ax, "cross-entropy loss"), (acc_ax, "accuracy")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    _save(fig, path)
    return True


def plot_reliability(path: Path, bins: Sequence[dict], ece: float | None) -> None:
    """The reliability diagram: accuracy against mean confidence per confidence bin (bars as
    wide as the bin, shaded by image count), the diagonal where a calibrated model lies."""
    fig = Figure(figsize=(4.8, 4.5))
    ax = fig.subplots()
    counts = np.array([b["count"] for b in bins], dtype=float)
    shade = 0.25 + 0.75 * counts / max(1.0, counts.max())
    for b, alpha in zip(bins, shade, strict=True):
        width = b["upper"] - b["lower"]
        ax.bar(b["lower"], b["accuracy"], width=width, align="edge", color="#3b7dd8", alpha=alpha)
        ax.plot(b["confidence"], b["accuracy"], "o", color="#1b3d6e", markersize=3)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    title = "Reliability" + (f" (ECE {100 * ece:.1f} %)" if ece is not None else "")
    ax.set_title(title)
    ax.legend(loc="upper left", frameon=False)
    _save(fig, path)
