"""What the `sebre` subcommands share: the library's parameters said as the flags a command-line
user types (`overwrite=True` -> `--overwrite`), user errors as one line on stderr and exit code 2,
SIGTERM and SIGINT as a request to stop, and the regions table."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import fields

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

console = Console()


state = {"debug": False}


# Library parameters that messages may name, said as flags: `name=True` -> --flag, `name=False` ->
# --no-flag, `name=VALUE` -> --flag VALUE.
PARAMETERS = (
    "labels",
    "overwrite",
    "resume",
    "mode",
    "device",
    "batch_size",
    "min_score",
    "tile_size",
    "overlap",
    "tta",
    "pixel_size",
    "pixel_size_in",
    "rois",
    "geojson",
    "measurements",
    "preview",
    "roi_groups",
    "roi_level",
    "roi_tolerance",
    "workers",
    "scheduler",
    "cluster",
    "queue",
    "cores",
    "memory",
    "gpus",
    "jobs",
    "walltime",
    "arch",
    "steps",
    "lr",
    "seed",
    "class_map",
    "classes",
    "val_sections",
    "val_fraction",
    "test_sections",
    "val_every",
    "init",
    "semantic",
    "model",
    "pred_labels",
    "truth_labels",
    "atlas",
    "atlas_fraction",
    "input",
    "instance_loss",
)


NAMED = re.compile(r"\b(" + "|".join(PARAMETERS) + r")=(True\b|False\b)?")


def as_flags(message: str) -> str:
    """A library message with its parameters said as command-line flags.

    Examples
    --------
    >>> as_flags("pass overwrite=True to replace it or labels=NAME for another")
    'pass --overwrite to replace it or --labels NAME for another'
    """

    def flag(match: re.Match) -> str:
        name, value = match[1].replace("_", "-"), match[2]
        if value == "True":
            return f"--{name}"
        if value == "False":
            return f"--no-{name}"
        follows = match.string[match.end() : match.end() + 1]
        return f"--{name}" if follows in ("", " ", ",", ";", ")") else f"--{name} "

    return NAMED.sub(flag, message)


def _run(fn, *args, **kwargs):
    """Call the API; turn user errors (and unreadable files) into one line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (UserError, FileExistsError, FileNotFoundError, PermissionError) as exc:
        if state["debug"]:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sebre: error: {as_flags(message)}", file=sys.stderr)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM (SLURM's preemption, scancel) and SIGINT (Ctrl-C) ask the run to stop after the batch
    it is storing; a second signal stops at once. The previous handlers come back after."""
    stop = threading.Event()

    def ask(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()

    wanted = (signal.SIGTERM, signal.SIGINT)
    before = {s: signal.signal(s, ask) for s in wanted}
    try:
        yield stop
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _positive_int(text: str, flag: str) -> int:
    """A whole number of 1 or more from the command line, or the one-line error and exit 2."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    print(f"sebre: error: {flag} {text!r}: give a whole number of 1 or more, or auto", file=sys.stderr)
    raise typer.Exit(2)


def print_regions(rows: list[dict], dice: dict[str, float] | None = None) -> None:
    table = Table("value", "section", "region", "area (mm²)", "score", *(["Dice (class)"] if dice else []))
    for r in rows:
        extra = [f"{dice.get(r['name'], float('nan')):.3f}"] if dice else []
        table.add_row(
            str(r["label-value"]),
            str(r["section"]),
            r["name"],
            f"{r['area_um2'] / 1e6:.3f}",
            f"{r['score']:.2f}",
            *extra,
        )
    console.print(table)


def options_from(cls, given: dict, **overrides):
    """`cls` (an options dataclass) from the command's parameters of its fields' names, each flag
    being named as the field it sets; `overrides` for those the command line gives in another form.
    Fields no parameter names keep their defaults."""
    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in given.items() if k in names}, **overrides})
