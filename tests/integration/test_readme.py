"""The README's Python blocks run as a reader would paste them.

Every fenced ``python`` block, in order, is written to a file in one folder
(named by its first-line comment, ``# orders.py``, else ``readme_block_N.py``)
and run there in its own process, against a fresh database (DATABASE_URL),
bounded in time. Tags after ``python`` on the fence line:

- ``background``: started and left running while the later blocks run (a
  worker); it must still be running when they end, and exit 0 on SIGINT.
- ``no-run``: not run (a fragment that cannot run alone; use sparingly).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.conftest import ROOT

BLOCK_SECONDS = 60.0  # the most one block may take, and a background block to stop
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_NAME = re.compile(r"#\s*([A-Za-z_]\w*\.py)\s*$")
TAGS = {"background", "no-run"}


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    tags: frozenset[str]
    name: str | None
    code: str


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        tags = frozenset(match.group(1).split())
        line = text.count("\n", 0, match.start()) + 1
        assert tags <= TAGS, f"README line {line}: unknown tag(s) {sorted(tags - TAGS)}; known: {sorted(TAGS)}"
        code = match.group(2)
        first = FILE_NAME.match(code.split("\n", 1)[0])
        blocks.append(Block(line, tags, first.group(1) if first else None, code))
    return blocks


def test_the_block_parser_reads_tags_names_and_code() -> None:
    text = "intro\n```python\n# a.py\nx = 1\n```\n\n```python background\nimport a\n```\n```bash\nls\n```\n" \
           "```python no-run\nfragment(\n```\n"
    blocks = readme_blocks(text)
    assert [(b.line, sorted(b.tags), b.name, b.code) for b in blocks] == [
        (2, [], "a.py", "# a.py\nx = 1\n"),
        (7, ["background"], None, "import a\n"),
        (13, ["no-run"], None, "fragment(\n"),
    ]


@dataclass
class _Background:
    block: Block
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    path: Path

    def output(self) -> str:
        return self.path.read_text(errors="replace")  # what the process wrote to its log


def test_every_python_block_of_the_readme_runs(db_url: str, tmp_path: Path) -> None:
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README lost its Python blocks"
    env = {**os.environ, "DATABASE_URL": db_url, "PYTHONUNBUFFERED": "1"}
    outputs: dict[str, str] = {}
    running: list[_Background] = []

    def others() -> str:
        return "".join(f"\n--- background block at line {b.block.line}:\n{b.output()[-3000:]}" for b in running)

    try:
        for number, block in enumerate(blocks, 1):
            if "no-run" in block.tags:
                continue
            path = tmp_path / (block.name or f"readme_block_{number}.py")
            path.write_text(block.code)
            if "background" in block.tags:
                log_path = tmp_path / f"{path.stem}.log"
                log = open(log_path, "wb")
                proc = subprocess.Popen([sys.executable, path.name], cwd=tmp_path, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
                running.append(_Background(block, proc, log, log_path))
                continue
            try:
                out = subprocess.run([sys.executable, path.name], cwd=tmp_path, env=env, capture_output=True,
                                     text=True, timeout=BLOCK_SECONDS)
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"README block at line {block.line} ({path.name}) still running after "
                                     f"{BLOCK_SECONDS}s:\n{exc.stdout!r}\n{exc.stderr!r}{others()}") from None
            assert out.returncode == 0, (f"README block at line {block.line} ({path.name}) exited with "
                                         f"{out.returncode}:\n{out.stdout}{out.stderr}{others()}")
            outputs[path.name] = out.stdout
            for b in running:
                assert b.proc.poll() is None, f"background block at line {b.block.line} ended early:{others()}"
    finally:
        for b in running:
            if b.proc.poll() is None:
                b.proc.send_signal(signal.SIGINT)  # Ctrl-C
        for b in running:
            try:
                b.proc.wait(BLOCK_SECONDS)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait()
            b.log.close()
    for b in running:
        assert b.proc.returncode == 0, f"background block at line {b.block.line} did not stop cleanly:{others()}"

    # "Writing a workflow": the drive script saw the order through, the worker logged its steps.
    assert "'by': 'alice'" in outputs["drive.py"] and "'charged': 42" in outputs["drive.py"], outputs["drive.py"]
    assert outputs["drive.py"].startswith("running\n"), outputs["drive.py"]
    assert "INFO flows.worker: worker-start" in running[0].output()
