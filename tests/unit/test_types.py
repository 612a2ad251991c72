import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_library_and_the_supervisor_type_check_strictly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "--cache-dir", "/tmp/flows-mypy-cache",
         "flows", "supervisor"], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


USER_MODULE = '''
from uuid import UUID

import flows


@flows.activity("charge")
def charge(ctx: flows.ActivityContext, amount: int) -> str:
    return f"{ctx.idempotency_key}:{amount}"


@flows.workflow("checkout")
def checkout(ctx: flows.WorkflowContext, amount: int) -> str:
    receipt: str = ctx.activity(charge, amount)
    return receipt


def begin(engine: flows.Engine) -> UUID:
    run = engine.start(checkout, 3)
    status = engine.query(run.workflow_name, run.workflow_id)
    return status.id
'''

WRONG_USE = '''
import flows


def begin(engine: flows.Engine) -> int:
    return engine.start(flows.registered_workflows()[0], 3).workflow_id
'''


def test_a_users_module_type_checks_against_the_package_as_built(tmp_path: Path) -> None:
    """The package as setuptools builds it (build_py: what goes into the
    wheel) ships py.typed, so mypy --strict on a user's module sees flows'
    annotations: a correct module passes, a wrong one is caught."""
    src, lib, user = tmp_path / "src", tmp_path / "lib", tmp_path / "user"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for package in ("flows",):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    build = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
         "--build-lib", str(lib)], cwd=src, capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (lib / "flows" / "py.typed").exists(), "setuptools did not ship flows/py.typed"

    user.mkdir()
    (user / "shop.py").write_text(USER_MODULE)
    (user / "wrong.py").write_text(WRONG_USE)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "shop.py", "wrong.py"],
        cwd=user, env={**os.environ, "PYTHONPATH": str(lib)}, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert errors == ['wrong.py:6: error: Incompatible return value type (got "UUID", expected "int")  [return-value]'], \
        out.stdout + out.stderr


def test_the_readme_blocks_type_check_from_a_folder_of_their_own(tmp_path: Path) -> None:
    """As a reader would check their copy of "Writing a workflow", outside the
    checkout: the venv's flows (an editable install ./dev made) is visible to
    mypy, and the README's code is --strict clean."""
    from tests.integration.test_readme import readme_blocks

    names = []
    for number, block in enumerate(readme_blocks((ROOT / "README.md").read_text()), 1):
        if "no-run" not in block.tags:
            names.append(block.name or f"readme_block_{number}.py")
            (tmp_path / names[-1]).write_text(block.code)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".cache"), *names],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
