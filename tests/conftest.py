import os

import pytest


@pytest.fixture(scope="session")
def ij_jar():
    """ij.jar; skipped locally without it, a failure under CI (a broken runner)."""
    from sebre_ij.imagej import ij_jar as find_jar

    try:
        return find_jar()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (required when CI is set)")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def imagej(ij_jar):
    """The ij.IJ class of one headless JVM shared by the session (a JVM starts once per process)."""
    from sebre_ij.imagej import start_imagej

    return start_imagej(ij_jar, headless=True)
