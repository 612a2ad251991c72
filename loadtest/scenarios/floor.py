"""``floor``: the row writes of a step, alone, run by pgbench: what the
server can do for the schema's steps with no engine at all.

A step of ``lt-three-steps`` (an activity ends, the next one starts) must
leave in the tables what the loan spec describes after each step: the
ended activity ``completed``, the next activity's row and its
``task_queue`` entry, two history events, and the workflow row updated;
and the ended activity's task gone. This scenario runs exactly those
statements, plain SQL by key and prepared (pgbench --protocol prepared),
with a lock of the workflow row first. The ended activity and task are
the ones the step itself inserts, so the tables keep the engine's shape:
one more activity per step, none more in the queue. ``--steps-per-xact``
steps go in each transaction (2: the engine's 0.5 transactions per
step), in a migrated flows database of 2,000 workflows over 8 shards. Nothing reads a history, no PL/pgSQL, no JSON
document, no Python: a step costs no less than this on this server.

The figures sit beside the throughput scenario's: the same pgbench
baseline, the floor's steps/s against it, and the CPU each side spends
per step and per baseline transaction (the server's processes, and
pgbench's own client time).
"""

from __future__ import annotations

import argparse
import resource
from dataclasses import dataclass
from typing import Callable

import psycopg

from loadtest import fleet, pgbench
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "a step's row writes alone, as plain SQL under pgbench: the server's floor for the schema"
WORKFLOWS = 2000
SHARDS = 8
TENANT = "00000000-0000-0000-0000-000000000000"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=int, default=pgbench.BASELINE_SECONDS, help="each pgbench run's length")
    p.add_argument("--steps-per-xact", type=int, default=2, help="steps in each transaction (default %(default)s)")


def targets(args: argparse.Namespace) -> list[Target]:
    return []


def _setup(dsn: str) -> str:
    """Create the workflows; return the server's UUID function (uuidv7
    from PostgreSQL 18, as the engine's ids are time-ordered)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workflows (name, id, tenant_id, version, status, input)"
            " SELECT 'lt-floor-shard-' || (n %% %s), md5(n::text)::uuid, %s, 1, 'running', '1'"
            " FROM generate_series(1, %s) n", (SHARDS, TENANT, WORKFLOWS))
        conn.execute("VACUUM ANALYZE workflows")
        version = conn.info.server_version
    return "uuidv7" if version >= 180000 else "gen_random_uuid"


def step_script(steps: int, new_id: str) -> str:
    """One transaction of ``steps`` steps, each on a workflow of its own
    range of ids (locked in the same order by every client: no deadlock)."""
    per = WORKFLOWS // steps
    lines = []
    for j in range(steps):
        lines += [f"\\set w{j} random({j * per + 1}, {(j + 1) * per})", f"\\set s{j} random(1, 2000000000)"]
    lines.append("BEGIN;")
    for j in range(steps):
        shard, wid, seq = f":n{j}", f":i{j}", f":s{j}"
        lines += [
            f"SELECT 'lt-floor-shard-' || (:w{j} % {SHARDS}) AS n{j}, md5(:w{j}::text)::uuid AS i{j},"
            f" {new_id}() AS a{j}, {new_id}() AS t{j}, {new_id}() AS e{j}, {new_id}() AS f{j} \\gset",
            f"SELECT last_event FROM workflows WHERE name = {shard} AND id = {wid} FOR UPDATE;",
            f"INSERT INTO activities (workflow_name, id, workflow_id, tenant_id, name, sequence_num, input,"
            f" max_attempts, status, started_at) VALUES ({shard}, :a{j}, {wid}, '{TENANT}', 'lt-step', {seq},"
            f" '2', 3, 'running', now());",
            f"INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id,"
            f" activity_name, lease_seconds, lease_owner, deliveries, visibility_timeout) VALUES ({shard},"
            f" :t{j}, {wid}, '{TENANT}', 'activity', :a{j}, 'lt-step', 305, 'floor', 1,"
            f" now() + interval '305 seconds');",
            f"UPDATE activities SET status = 'completed', output = '2', attempt = 1, updated_at = now(),"
            f" completed_at = now() WHERE workflow_name = {shard} AND workflow_id = {wid} AND sequence_num = {seq}"
            f" AND id = :a{j};",
            f"DELETE FROM task_queue WHERE workflow_name = {shard} AND id = :t{j};",
            f"INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step,"
            f" event_type, event_data) VALUES ({shard}, :e{j}, {wid}, '{TENANT}', {seq}, {seq},"
            f" 'ActivityCompleted', '{{\"result\": 2}}');",
            f"INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step,"
            f" event_type, event_data) VALUES ({shard}, :f{j}, {wid}, '{TENANT}', {seq} + 1, {seq} + 1,"
            f" 'ActivityScheduled', '{{\"name\": \"lt-step\", \"input\": 2}}');",
            f"UPDATE workflows SET sequence_num = sequence_num + 1, updated_at = now(), last_event = last_event + 2"
            f" WHERE name = {shard} AND id = {wid};",
        ]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


@dataclass
class Cost:
    tps: float
    command: str
    server_cpu_s: float
    client_cpu_s: float


def _costed(dsn: str, bench: Callable[[], pgbench.Baseline]) -> Cost:
    """Run ``bench`` (a pgbench run on ``dsn``) and take the CPU of the
    server's processes and of pgbench meanwhile."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = fleet.server_cpu_seconds(dsn)
    result = bench()
    server = fleet.server_cpu_seconds(dsn) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Cost(result.tps, result.command, server, client)


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    metrics: dict[str, float | int | None] = {}
    m = Measurement(metrics, series_title="", latency_title="")
    timeout = max(1.0, run.remaining())
    k = args.steps_per_xact
    with run.database(migrated=False) as dsn:
        base = _costed(dsn, lambda: pgbench.run_baseline(dsn, seconds=args.seconds, timeout=timeout))
    with run.database() as dsn:
        script = step_script(k, _setup(dsn))
        floor = _costed(dsn, lambda: pgbench.run_script(dsn, script, f"<script: {k} steps' writes>",
                                                        seconds=args.seconds, timeout=timeout, protocol="prepared"))
    base_xacts = base.tps * args.seconds
    steps = floor.tps * k * args.seconds
    metrics["pgbench_tps"] = base.tps
    metrics["floor_steps_per_s"] = floor.tps * k
    metrics["floor_steps_per_s_vs_pgbench"] = floor.tps * k / base.tps
    metrics["pgbench_server_cpu_ms_per_xact"] = 1000.0 * base.server_cpu_s / base_xacts
    metrics["pgbench_client_cpu_ms_per_xact"] = 1000.0 * base.client_cpu_s / base_xacts
    metrics["floor_server_cpu_ms_per_step"] = 1000.0 * floor.server_cpu_s / steps
    metrics["floor_client_cpu_ms_per_step"] = 1000.0 * floor.client_cpu_s / steps
    run.note(f"baseline: {base.command}")
    run.note(f"floor: {floor.command}")
    return m
