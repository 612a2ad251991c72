"""flows as a user installs it: the sdist and the wheel built from this
checkout, installed into a fresh virtualenv outside it, driving a small app
of the user's own from a scratch folder.

The wheel is built from the unpacked sdist (as ``python -m build`` does), so
a file the sdist forgets fails here. The new virtualenv reuses the core
dependencies already installed beside the tests (linked, not downloaded),
and only those: an import of an optional extra's package by the engine, the
worker, the supervisor or the CLI fails this test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CORE_REQUIREMENTS = {"psycopg", "psycopg-pool", "uuid6", "msgspec"}

THEIR_APP = '''
import flows


@flows.activity("greet")
def greet(ctx: flows.ActivityContext, name: str) -> str:
    return f"hello {name}"


@flows.workflow("welcome")
def welcome(ctx: flows.WorkflowContext, name: str) -> dict[str, object]:
    greeting = ctx.activity(greet, name)
    ctx.sleep(0.2)
    return {"greeting": greeting, "lucky": ctx.random(1)[0] >= 0}
'''

DRIVE = '''
import json
import os

import flows

import their_app

print("flows-from", flows.__file__)
with flows.Engine(os.environ["DATABASE_URL"]) as engine:
    run = engine.start(their_app.welcome, "ann")
    print("result", json.dumps(engine.result(run.workflow_name, run.workflow_id, timeout=60), sort_keys=True))
'''


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """The sdist from a copy of the checkout, then the wheel from the sdist."""
    src, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".pgdata*", "__pycache__", "results", "*.egg-info", "build", "dist"))
    backend = "from setuptools import build_meta as b; import sys; print(getattr(b, sys.argv[1])(sys.argv[2]))"

    def run(hook: str, cwd: Path) -> Path:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", backend, hook, str(dist)], cwd=cwd,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        return dist / out.stdout.strip().splitlines()[-1]

    sdist = run("build_sdist", src)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    return sdist, run("build_wheel", unpacked)


def _closure(requirements: set[str]) -> list[metadata.Distribution]:
    """The installed distributions these requirements pull in (with their
    extras' requirements, e.g. psycopg[binary]), transitively."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        name, _, extras = re.match(r"([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", todo.pop()).groups()  # type: ignore[union-attr]
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = found[key] = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        for req in dist.requires or []:
            marker = req.partition(";")[2]
            wanted = re.findall(r"""extra\s*==\s*["']([^"']+)""", marker)
            if not wanted or set(wanted) & set((extras or "").split(",")):
                todo.append(req.partition(";")[0].strip())
    return list(found.values())


def _venv(tmp_path: Path, wheel: Path) -> Path:
    """A fresh virtualenv with the wheel installed and the core
    dependencies (already installed here) linked into it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)], check=True, timeout=120)
    deps = tmp_path / "core-deps"
    deps.mkdir()
    for dist in _closure(CORE_REQUIREMENTS):
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (deps / top).exists():
                (deps / top).symlink_to(Path(str(dist.locate_file(top))))
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "core-deps.pth").write_text(f"{deps}\n")
    return venv


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build(tmp_path_factory.mktemp("build"))


def test_the_wheel_installs_one_name_and_runs_a_users_app_outside_the_checkout(
    built: tuple[Path, Path], tmp_path: Path, blank_url: str
) -> None:
    sdist, wheel = built

    with tarfile.open(sdist) as tar:  # the sdist carries the SQL it must build from
        assert any(n.endswith("/flows/migrations/001_init.sql") for n in tar.getnames())
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        meta = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"flows"}
    assert "flows/migrations/001_init.sql" in names and "flows/supervisor/arbiter.py" in names
    assert "flows/console/templates/flows_console/base.html" in names
    assert re.search(r"^Name: flows-pg$", meta, re.MULTILINE)
    core = {re.match(r"[\w.-]+", r).group(0) for r in re.findall(r"^Requires-Dist: (.+)$", meta, re.MULTILINE)
            if "extra ==" not in r}
    assert core == CORE_REQUIREMENTS

    venv = _venv(tmp_path, wheel)
    app = tmp_path / "their-project"
    app.mkdir()
    (app / "their_app.py").write_text(THEIR_APP)
    (app / "drive.py").write_text(DRIVE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLOWS_", "VIRTUAL_ENV"))}
    env.update(DATABASE_URL=blank_url, FLOWS_SHARDS="2", FLOWS_HEARTBEAT_SECONDS="1",
               PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")

    def flows(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "flows"), *args], cwd=app, env=env, capture_output=True,
                              text=True, timeout=120, **kwargs)  # type: ignore[call-overload]

    version = flows("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"flows {wheel.name.split('-')[1]}"
    migrated = flows("migrate")
    assert migrated.returncode == 0 and "001_init.sql" in migrated.stdout, migrated.stdout + migrated.stderr

    fleet = subprocess.Popen([str(venv / "bin" / "flows"), "supervise", "--app", "their_app", "--workers", "2"],
                             cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        drive = subprocess.run([str(venv / "bin" / "python"), "drive.py"], cwd=app, env=env, capture_output=True,
                               text=True, timeout=120)
        assert drive.returncode == 0, drive.stdout + drive.stderr
        assert 'result {"greeting": "hello ann", "lucky": true}' in drive.stdout
        assert f"flows-from {venv}/lib/" in drive.stdout  # the installed package, not the checkout
    finally:
        fleet.send_signal(signal.SIGTERM)
        _, err = fleet.communicate(timeout=60)
    assert fleet.returncode == 0, err

    # What the venv holds: the one top-level name, and no repository package.
    listed = subprocess.run([str(venv / "bin" / "python"), "-c", "\n".join([
        "from importlib import metadata, util",
        "files = metadata.distribution('flows-pg').files",
        "print(sorted({f.parts[0] for f in files if f.parts[0] != '..' and not f.parts[0].endswith('.dist-info')}))",
        "print([m for m in ('supervisor', 'webapp', 'loadtest') if util.find_spec(m)])",
    ])], cwd=app, env=env, capture_output=True, text=True, timeout=60)
    assert listed.stdout.splitlines() == ["['flows']", "[]"], listed.stdout + listed.stderr


def test_a_missing_extra_names_the_extra_to_install(built: tuple[Path, Path], tmp_path: Path) -> None:
    venv = _venv(tmp_path, built[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLOWS_", "DATABASE_URL"))}
    env["FLOWS_PGDATA"] = str(tmp_path / "pgdata")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    console = run("python", "-c", "import flows.console")
    assert console.returncode == 1 and "pip install 'flows-pg[console]'" in console.stderr
    assert "flows.errors.MissingExtra" in console.stderr
    schedule = run("python", "-c", "import flows\nfrom flows import schedules\nschedules.next_tick('* * * * *', 'UTC', "
                   "__import__('datetime').datetime.now(__import__('datetime').UTC))")
    assert "pip install 'flows-pg[schedules]'" in schedule.stderr
    devdb = run("flows", "status")  # no DATABASE_URL and no embedded server to fall back on
    assert devdb.returncode == 1 and devdb.stderr.startswith("error: ") and "flows-pg[dev]" in devdb.stderr
    metrics = run("flows", "supervise", "--app", "nothing", "--metrics-port", "9999")
    assert metrics.returncode == 2 and "flows-pg[metrics]" in metrics.stderr
    assert "Traceback" not in devdb.stderr + metrics.stderr
