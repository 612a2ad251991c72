"""Sampling profiles of the worker processes with py-spy, summarised.

py-spy is a profiling tool, not a dependency: install it into the venv by
hand (``pip install py-spy``) to use ``--profile``. It samples the running
workers from outside (root or ptrace rights needed), non-blocking, and
writes collapsed stacks of the threads holding the GIL, i.e. where the
workers' Python CPU goes (time waiting for PostgreSQL is the
pg_stat_statements breakdown's business). The summary ranks functions by
the share of samples they were on the stack (inclusive) and on top (self).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

SAMPLES_PER_SECOND = 200
STOP_TIMEOUT_SECONDS = 10.0
TOP_FUNCTIONS = 25


def available() -> bool:
    return _pyspy() is not None


def _pyspy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def record(pids: list[int], out_dir: Path, label: str) -> Iterator[list[Path]]:
    """Sample each pid's GIL-holding thread while the block runs."""
    exe = _pyspy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy (into the venv; a profiling tool only)")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [out_dir / f"{label}-{pid}.txt" for pid in pids]
    procs = [
        subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--gil",
             "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid, out in zip(pids, outputs)
    ]
    try:
        yield outputs
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for p in procs:
            try:
                p.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                p.kill()


def summarise(files: list[Path], top: int = TOP_FUNCTIONS) -> dict[str, list[tuple[str, float]]]:
    """{"inclusive": [(function, % of samples)], "self": [...]} over all files."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short(fr) for fr in stack.split(";")[1:]]  # the first frame names the thread
            total += n
            for fr in set(frames):
                inclusive[fr] += n
            if frames:
                own[frames[-1]] += n
    if total == 0:
        return {"inclusive": [], "self": []}
    return {
        "inclusive": [(f, 100.0 * n / total) for f, n in inclusive.most_common(top)],
        "self": [(f, 100.0 * n / total) for f, n in own.most_common(top)],
    }


def _short(frame: str) -> str:
    """``fn (path/to/module.py:123)`` -> ``fn (module.py)``: line numbers split a function's samples."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"
