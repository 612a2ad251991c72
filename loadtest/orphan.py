"""``python -m loadtest.orphan COMMAND...``: run COMMAND, ended with the harness.

The harness starts the fleet and gunicorn in sessions of their own (so a
Ctrl-C reaches only the harness, which stops them in order). Should the
harness itself be killed outright (SIGKILL, OOM), nothing would stop them;
this wrapper asks Linux to send SIGTERM to the command when the harness
dies (PR_SET_PDEATHSIG survives the exec), then becomes the command.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the harness's own clean-up still applies
        pass
    if os.getppid() == 1:  # the harness died before the line above took effect
        sys.exit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
