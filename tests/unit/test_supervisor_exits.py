"""How the supervisor reads a child's end, from real wait statuses."""

from __future__ import annotations

import os
import signal
from typing import Callable

import pytest

from flows.supervisor.exits import EXIT_BOOT_ERROR, ChildExit, classify


def _status_of(child: Callable[[], object]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("code", [0, 1, EXIT_BOOT_ERROR])
def test_an_exit_code(code: int) -> None:
    how = classify(_status_of(lambda: os._exit(code)))
    assert how == ChildExit(code=code)
    assert how.clean is (code == 0)
    assert how.cannot_boot is (code == EXIT_BOOT_ERROR)


def test_killed_by_a_signal() -> None:
    how = classify(_status_of(lambda: os.kill(os.getpid(), signal.SIGKILL)))
    assert how == ChildExit(signal=signal.SIGKILL)
    assert how.describe() == "killed by SIGKILL (out of memory?)"
    assert not how.clean and not how.cannot_boot


def test_descriptions() -> None:
    assert ChildExit(signal=signal.SIGTERM).describe() == "killed by SIGTERM"
    assert ChildExit(code=3).describe() == "exited with code 3 (cannot boot)"
    assert ChildExit(code=1).describe() == "exited with code 1"
    assert ChildExit(signal=200).describe() == "killed by signal 200"
