"""A one-line progress bar on stderr (``\\r`` redrawn), silent when not a terminal."""

from __future__ import annotations

import sys
import time

BAR_WIDTH = 30
REDRAW_SECONDS = 0.2


class Progress:
    """``what  [=====>     ] done/total  rate/s  elapsed``."""

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = max(1, total)
        self.started = time.monotonic()
        self._drawn = 0.0
        self._done = 0
        self._tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if now - self._drawn >= REDRAW_SECONDS or done >= self.total:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        if not self._tty:
            return
        elapsed = now - self.started
        filled = min(BAR_WIDTH, BAR_WIDTH * self._done // self.total)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * (BAR_WIDTH - filled - 1)
        rate = self._done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r{self.what:<24} [{bar}] {self._done}/{self.total} {rate:7.1f}/s {elapsed:6.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        if self._tty:
            sys.stderr.write("\n")
        else:
            elapsed = time.monotonic() - self.started
            sys.stderr.write(f"{self.what}: {self._done}/{self.total} in {elapsed:.1f}s\n")
        sys.stderr.flush()
