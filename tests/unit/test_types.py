import subprocess
import sys

from tests.conftest import ROOT


def test_the_library_and_the_supervisor_type_check_strictly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "--cache-dir", "/tmp/flows-mypy-cache",
         "flows", "supervisor"], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
