"""What every test folder shares: finding the offline data, and keeping count of the
tests that could not run for lack of it.

A test that needs a real dataset asks the ``offline_data`` fixture, which finds it the
way the library does (:func:`lsslib.data.find_data_root`: ``$LSS_DATA_ROOT``,
``./data``, a ``shared/data`` folder beside the checkout) and hands the folder on
explicitly to whatever the test starts (subprocesses, installed wheels). Without the
data the test is skipped with a message saying how to provide it, and the skip is
appended to ``.test-skips.log`` at the repository root. ``make test`` empties that
file when it starts and fails at its end if anything was written to it, so a run
without data is never mistaken for a pass.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))

#: Where skips for missing data are recorded (read by ``make test``).
SKIP_LOG = REPO / ".test-skips.log"
#: The prefix of every such skip's reason.
NO_DATA = "no offline data:"

_HOW = {
    "cifar10": "put cifar10-jpeg.tar.xz (or its unpacked train/ and test/) in ./data or "
    "in a shared/data folder beside the checkout, or set LSS_DATA_ROOT=/that/folder",
}


@pytest.fixture(scope="session")
def offline_data() -> Callable[[str], Path]:
    """``offline_data(name)``: the folder holding dataset ``name``, resolved to an
    absolute path; skips the test (and records the skip) when no folder has it."""
    from lsslib.data import find_data_root

    def find(name: str) -> Path:
        root = find_data_root(name)
        if root is None:
            how = _HOW.get(name, "set LSS_DATA_ROOT to a folder holding it")
            pytest.skip(f"{NO_DATA} {name} not found; {how}")
        return Path(root).resolve()

    return find


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    if reason.startswith(NO_DATA):
        with SKIP_LOG.open("a") as f:
            f.write(f"{report.nodeid}: {reason}\n")
