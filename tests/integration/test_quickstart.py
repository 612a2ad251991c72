import os
import subprocess
import sys

from tests.conftest import ROOT


def test_quickstart_script_runs_to_completion(db_url: str) -> None:
    """The README's example, run as a user would: a separate process, only the public API."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env={**os.environ, "DATABASE_URL": db_url}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "'approved_by': 'alice'" in out.stdout
    assert "'shipped': 'shipped reservation-" in out.stdout
