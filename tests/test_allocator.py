"""allocator.py: glibc keeps big freed blocks while a holder is inside, restores its settings
when the last one leaves, and overlapping holders never undo each other."""

import ctypes
import os
import sys
import threading

import numpy as np
import pytest

from sebre_ij.allocator import DEFAULTS, M_MMAP_MAX, M_TRIM_THRESHOLD, kept_heap, starting_values

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


LIBC = ctypes.CDLL(None)
LIBC.mallinfo2.restype = MallInfo2


def mapped_by_a_big_block() -> int:
    """Bytes glibc mmaps for a 40 MB array (a batch's mask head output), freed at once."""
    before = LIBC.mallinfo2().hblkhd
    block = np.ones(40 << 20, np.uint8)
    mapped = LIBC.mallinfo2().hblkhd - before
    del block
    return mapped


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_big_blocks_come_from_the_heap_inside_and_the_memory_goes_back_after():
    assert mapped_by_a_big_block() >= 40 << 20
    with kept_heap() as told:
        assert told
        assert mapped_by_a_big_block() == 0
        kept = resident()
    assert kept - resident() >= 30 << 20  # the freed block, given back
    assert mapped_by_a_big_block() >= 40 << 20


def test_overlapping_holders_keep_the_setting_until_the_last_leaves():
    """Two threads: the first to leave must not restore glibc's settings under the second."""
    first_in, first_out, second_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with kept_heap():
            first_in.set()
            second_done.wait(30)
        first_out.set()

    def second():
        first_in.wait(30)
        with kept_heap():
            seen["both inside"] = mapped_by_a_big_block()
            second_done.set()
            first_out.wait(30)
            seen["first left"] = mapped_by_a_big_block()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == {"both inside": 0, "first left": 0}
    assert mapped_by_a_big_block() >= 40 << 20  # both gone: glibc's own settings again


def test_the_settings_restored_are_those_the_process_started_with(monkeypatch):
    assert starting_values() == DEFAULTS
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "7")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "not a number")
    assert starting_values() == {M_MMAP_MAX: 7, M_TRIM_THRESHOLD: DEFAULTS[M_TRIM_THRESHOLD]}
