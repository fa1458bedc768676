"""Lock files, so that two runs never write one label layer at once while runs on other names share
the store.

A lock is a file created atomically (O_CREAT | O_EXCL) holding its owner's pid, host and start
time, and removed when the run ends. A killed run leaves its lock behind: a lock whose pid is no
longer alive on this host is taken over, so the same command resumes without a manual step. A lock
from another host cannot be checked; the refusal says which file to delete once that run is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .errors import UserError


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }


def _read(path: Path) -> dict | None:
    """The lock's owner; None when the lock is gone, {} when it cannot be parsed (its writer was cut short)."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(pid: int) -> bool:
    """Is `pid` a running (not zombie) process on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _stale(owner: dict) -> bool:
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[None]:
    """Serialise take-overs in `folder` (flock on the folder, where the filesystem has it), so two runs
    that find the same dead lock cannot both remove it after one of them has made a new one."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _take_over(path: Path, dead: dict) -> None:
    """Remove a dead run's lock, unless someone replaced it meanwhile."""
    with _guard(path.parent):
        if _read(path) == dead:
            path.unlink(missing_ok=True)


def _refusal(path: Path, owner: dict) -> str:
    if not owner:
        return (
            f"{path}: lock file of unknown owner; if no other run writes this label layer, delete {path} and run again"
        )
    return (
        f"{path}: label layer is being written by pid {owner.get('pid')} on {owner.get('host')} since "
        f"{owner.get('started')}; "
        f"wait for that run to end, or if it is gone (killed on another machine), delete {path} and run again"
    )


def acquire(path: Path, wait: float = 0.0) -> dict:
    """Create the lock at `path` and return its owner record; a live lock is waited for up to `wait`
    seconds, then refused with a UserError."""
    owner, deadline = _owner(), time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            if held is None:
                continue
            if _stale(held):
                _take_over(path, held)
                continue
            if time.monotonic() >= deadline:
                raise UserError(_refusal(path, held)) from None
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
            f.flush()
            os.fsync(f.fileno())
        return owner


def release(path: Path, owner: dict) -> None:
    """Remove the lock if it is still ours."""
    if _read(path) == owner:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path: Path, wait: float = 0.0) -> Iterator[None]:
    owner = acquire(path, wait)
    try:
        yield
    finally:
        release(path, owner)
