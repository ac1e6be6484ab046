"""Human-facing output on stderr (stdout stays for results a script may parse)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["console", "stage_table"]

console = Console(stderr=True, highlight=False)


def stage_table(rows, *, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("stage", "left"),
        ("status", "left"),
        ("params", "right"),
        ("lr", "right"),
        ("BatchNorm", "left"),
    ):
        table.add_column(column, justify=justify)
    for row in rows:
        starts = getattr(row, "starts", None)  # gradual unfreezing: trains from that epoch on
        status = (
            "frozen"
            if not row.trainable
            else "trainable"
            if starts is None
            else f"from epoch {starts + 1}"
        )
        table.add_row(
            row.stage,
            status,
            f"{row.num_params:,}",
            f"{row.lr:.2e}" if row.trainable else "-",
            row.batchnorm,
        )
    return table
