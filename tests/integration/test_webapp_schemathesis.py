"""schemathesis against the running app: every check (``--checks all``: no
5xx, every status, header, content type and body as documented, schema-valid
data accepted and invalid data refused, authentication enforced), all four
phases, bounded and seeded so that a run is the same each time."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any, Iterator

import psycopg
import pytest
from werkzeug.serving import make_server

from tests.webapp_support import make_app
from webapp.extension import client as flows_client

KEY, TENANT = "schemathesis-key-0123456789", "0190a4c2-0000-7000-8000-00000000a11c"
MAX_EXAMPLES = 10  # per operation and phase
SEED = 20240515


@pytest.fixture(params=["keyed"])
def served(request: pytest.FixtureRequest, db_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The app on a local port, without API keys or with one."""
    keyed = request.param == "keyed"
    app = make_app(db_url, **({"API_KEYS": f"{KEY}:{TENANT}"} if keyed else {}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", {"Authorization": f"Bearer {KEY}"} if keyed else {}
    finally:
        server.shutdown()
        thread.join(10)
        flows_client.close(app)


def test_schemathesis_finds_no_failure(
    served: tuple[str, dict[str, str]], db: psycopg.Connection[Any], tmp_path: Any
) -> None:
    base, headers = served
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json", "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--generation-database", "none", "--no-color", "--request-timeout", "20",
    ]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failure" not in run.stdout.split("SUMMARY")[-1], run.stdout[-4000:]
    # It reached the API's logic: loans were started, and each was started whole.
    started = db.execute("SELECT count(*) FROM workflows").fetchone()[0]  # type: ignore[index]
    assert started > 0
    assert db.execute("SELECT count(*) FROM task_queue").fetchone() == (started,)  # one first task each
