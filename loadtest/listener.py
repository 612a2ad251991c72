"""Time the arrival of ``flows-done`` notifications, in a process of its own.

Run inside the harness, the listening thread waited for the GIL behind the
signal sender and reported notifications hundreds of milliseconds late; a
separate process receives them within a millisecond or two of the commit.
It writes one line per notification, ``<monotonic seconds> <channel>``
(CLOCK_MONOTONIC is system-wide, so the harness can compare), and stops on
SIGTERM.

``python -m loadtest.listener OUTPUT DSN CHANNEL...``
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from flows import sharding

from loadtest import db

POLL_SECONDS = 0.2  # how often the loop looks at its stop flag
READY_LINE = "ready"
STOP_TIMEOUT_SECONDS = 5.0


class DoneListener:
    """Records when each ``flows-done`` notification of the given shards
    arrives, by the system-wide monotonic clock; a context manager."""

    def __init__(self, dsn: str, shards: list[str]) -> None:
        self.channels = {sharding.channel(s, "flows-done"): s for s in shards}
        self.received: list[tuple[str, float]] = []
        self._dir = tempfile.TemporaryDirectory(prefix="loadtest-listener-")
        self._out = Path(self._dir.name) / "notifications.txt"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.listener", str(self._out), dsn, *self.channels],
            stdout=subprocess.PIPE, text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != READY_LINE:
            self._proc.kill()
            raise RuntimeError("the notification listener did not start")

    def __enter__(self) -> DoneListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._out.exists():
            for line in self._out.read_text().splitlines():
                at, _, channel = line.partition(" ")
                self.received.append((self.channels.get(channel, channel), float(at)))
        self._dir.cleanup()

    def match(self, sent: list[tuple[str, float]]) -> list[float | None]:
        """For each (shard, monotonic time) in send order, the delay to the
        notification of the same rank on that shard (each workflow ends
        once); None for those that never came."""
        by_shard: dict[str, list[float]] = {}
        for shard, at in sorted(self.received, key=lambda r: r[1]):
            by_shard.setdefault(shard, []).append(at)
        rank: dict[str, int] = {}
        out: list[float | None] = []
        for shard, t in sent:
            k = rank.get(shard, 0)
            rank[shard] = k + 1
            times = by_shard.get(shard, [])
            out.append(times[k] - t if k < len(times) else None)
        return out


def main(argv: list[str]) -> int:
    output, dsn, *channels = argv
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conn = db.connect(dsn, autocommit=True)
    for channel in channels:
        db.listen(conn, channel)
    print(READY_LINE, flush=True)
    with open(output, "w") as out:
        while not stop:
            for note in conn.notifies(timeout=POLL_SECONDS):
                out.write(f"{time.monotonic()} {note.channel}\n")
            out.flush()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
