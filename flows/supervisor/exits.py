"""Exit codes of the fleet's processes, and how the supervisor reads a
child's wait status.

A worker that cannot boot exits with ``EXIT_BOOT_ERROR``: respawning it
would only fail again, so the supervisor stops instead of looping.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_BOOT_ERROR = 3  # a worker cannot boot: the app does not import, or defines nothing to run
EXIT_DATABASE = 4  # at start-up the database was unreachable, not migrated, or a migration file changed


@dataclass(frozen=True)
class ChildExit:
    """How a child ended: ``code`` when it exited, ``signal`` when killed."""

    code: int | None = None
    signal: int | None = None

    @property
    def cannot_boot(self) -> bool:
        return self.code == EXIT_BOOT_ERROR

    @property
    def clean(self) -> bool:
        return self.code == EXIT_OK

    def describe(self) -> str:
        if self.signal is not None:
            name = signal_name(self.signal)
            if self.signal == signal.SIGKILL:
                return f"killed by {name} (out of memory?)"
            return f"killed by {name}"
        if self.code == EXIT_BOOT_ERROR:
            return f"exited with code {self.code} (cannot boot)"
        return f"exited with code {self.code}"


def classify(status: int) -> ChildExit:
    """Decode a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        return ChildExit(signal=os.WTERMSIG(status))
    if os.WIFEXITED(status):
        return ChildExit(code=os.WEXITSTATUS(status))
    return ChildExit(code=-1)  # stopped/continued: not asked for (no WUNTRACED)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
