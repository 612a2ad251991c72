"""One line per event on stderr, each tagged with the process id and its
role: ``master`` for the supervisor, ``group=0,2`` for a worker."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

LOG_FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(levelname)s %(name)s: %(message)s"


class _Role(logging.Filter):
    role = "master"

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


_role = _Role()
_handler = logging.StreamHandler(sys.stderr)
_handler.addFilter(_role)
_handler.setFormatter(logging.Formatter(LOG_FORMAT))


def setup(level: str | None = None) -> None:
    """Log to stderr (what process managers collect), replacing other handlers."""
    logging.basicConfig(level=level or os.environ.get("FLOWS_LOG_LEVEL", "INFO"), handlers=[_handler], force=True)


@contextmanager
def unless_app_configures() -> Iterator[None]:
    """Around a worker's import of the app: if the app sets up logging of
    its own (``logging.basicConfig``, ``dictConfig``, a handler on the root
    logger), its setup stays and ours goes; otherwise ours comes back."""
    root = logging.getLogger()
    root.removeHandler(_handler)
    try:
        yield
    finally:
        if not root.handlers:
            root.addHandler(_handler)


def set_role(role: str) -> None:
    """Tag this process's lines from now on (called in a forked worker)."""
    _role.role = role


def flush() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
