"""Training curves: the loss and the validation Dice by step, as CSV and a plot beside the checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

CURVE_FIELDS = ["step", "loss", "lr", "val_dice", "seconds"]


def curve_paths(out: str | Path) -> tuple[Path, Path]:
    """Where the curves of the checkpoint `out` go: `<stem>.curves.csv` and `.png` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".curves.csv"), out.with_name(out.stem + ".curves.png")


def write_curves(out: str | Path, rows: list[dict]) -> None:
    """The training loss and the validation Dice by step, as CSV and as a two-panel plot."""
    csv_path, png_path = curve_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)  # the first curves come before the first checkpoint
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    fig = Figure(figsize=(6, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue")
    top.set_ylabel("training loss")
    val = [r for r in rows if r["val_dice"] != ""]
    bottom.plot([r["step"] for r in val], [r["val_dice"] for r in val], "o-", color="tab:green")
    bottom.set_ylabel("validation mean Dice")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
