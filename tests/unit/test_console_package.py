"""The console's templates and static files ship in the package: every one
is matched by pyproject.toml's package-data (setuptools copies only those
into a wheel; an editable install would hide the omission)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "flows" / "console"


def test_every_template_and_static_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["flows.console"]
    files = [p.relative_to(CONSOLE).as_posix() for d in ("templates", "static") for p in (CONSOLE / d).rglob("*")
             if p.is_file()]
    assert any(f.endswith(".html") for f in files) and "static/htmx-2.0.11.min.js" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []
    assert "flows.*" in config["tool"]["setuptools"]["packages"]["find"]["include"]  # flows.console is found
