"""flows: migrate, run workers, and see and steer workflows.

The database is DATABASE_URL, or the embedded development server when it
is unset. `flows COMMAND --help` shows each command's options and examples.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, Callable

from flows import __version__, codec, embedded
from flows.engine import Engine
from flows.errors import FlowsError, InvalidInput
from flows.explain import span, why
from flows.ids import ANY_TENANT
from flows.ops import detail as detail_ops
from flows.ops import fleet as fleet_ops
from flows.ops.detail import WorkflowDetail
from flows.ops.workflows import STATUSES, parse_duration

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def _default_logging() -> None:
    """Log INFO and up (``FLOWS_LOG_LEVEL``) to stderr in LOG_FORMAT, unless
    logging is configured already (by the app module ``flows worker`` imports)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("FLOWS_LOG_LEVEL", "INFO"), format=LOG_FORMAT, stream=sys.stderr)


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(embedded.database_url(), shards=args.shards)


def _print(value: Any) -> None:
    print(json.dumps(codec.to_builtins(value), indent=2, default=str))


def _scope(args: argparse.Namespace) -> Any:
    """``--tenant`` for the operator's commands: every tenant unless given."""
    return ANY_TENANT if args.tenant is None else args.tenant


def _time(at: Any) -> str:
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# -- commands ------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        applied = engine.migrate()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from flows.worker import Worker

    importlib.import_module(args.app)
    _default_logging()  # after the app, which may configure logging its own way
    shards = [int(k) for k in args.shard_indices.split(",")] if args.shard_indices else None
    with _engine(args) as engine:
        # An unreachable database fails here, named, instead of being retried for ever.
        fleet_ops.reachable(engine.dsn)
        Worker(engine, shards=shards, concurrency=args.concurrency).run()
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    from flows.supervisor.__main__ import main as supervise

    if any(a in ("-h", "--help") for a in args.rest):
        print(SUPERVISE_HELP)
    return int(supervise(args.rest) or 0)


def cmd_status(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        _print(fleet_ops.counts(engine))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        page = engine.list_workflows(args.name, status=args.status, tenant_id=_scope(args),
                                     waiting_for=args.waiting_for, created_from=args.created_from,
                                     created_to=args.created_to, after=args.after, limit=args.limit)
        counts = None if args.json else engine.count_workflows(
            args.name, tenant_id=_scope(args), waiting_for=args.waiting_for, created_from=args.created_from,
            created_to=args.created_to)
    if args.json:
        _print({"workflows": page.workflows, "next_cursor": page.next_cursor})
        return 0
    if not page.workflows:
        print("no workflow matches")
        return 0
    rows = [[w.name, str(w.id), w.status, (w.waiting_for or w.error or "")[:60], _time(w.created_at),
             _time(w.updated_at)] for w in page.workflows]
    _table(rows, ["SHARD", "ID", "STATUS", "WAITING FOR / ERROR", "CREATED (UTC)", "UPDATED (UTC)"])
    print("\n" + ", ".join(f"{s}: {n}" for s, n in sorted((counts or {}).items())))
    if page.next_cursor:
        print(f"more: --after {page.next_cursor}")
    return 0


def _show_text(d: WorkflowDetail, sentence: str) -> None:
    print(f"{d.name} {d.id}")
    print(f"  shard {d.shard}, tenant {d.tenant_id}, version {d.version}")
    print(f"  status   {d.status}" + (f", waiting for {d.waiting_for}" if d.waiting_for else ""))
    print(f"  why      {sentence}")
    print(f"  started  {_time(d.created_at)} UTC; last step {_time(d.updated_at)} UTC"
          + (f"; ended {_time(d.completed_at)} UTC" if d.completed_at else ""))
    print(f"  input    {json.dumps(d.input, default=str)}")
    if d.status == "completed":
        print(f"  output   {json.dumps(d.output, default=str)}")
    if d.error:
        print(f"  error    {d.error}")
    print("\nhistory")
    previous = None
    rows = []
    for e in d.history:
        gap = "" if previous is None else "+" + span((e.created_at - previous).total_seconds())
        previous = e.created_at
        data = json.dumps(e.data, default=str)
        rows.append([str(e.seq), str(e.step), e.created_at.strftime("%H:%M:%S.%f")[:-3], gap, e.type,
                     data if len(data) <= 90 else data[:89] + "…"])
    _table(rows, ["#", "STEP", "TIME (UTC)", "GAP", "EVENT", "DATA"], indent="  ")
    if d.activities:
        print("\nactivities")
        for a in d.activities:
            print(f"  step {a.seq} {a.name}: {a.status}, {len(a.attempts)} attempt(s) of {a.max_attempts}")
            for t in a.attempts:
                line = f"    attempt {t.number}: {t.outcome}"
                if t.started_at:
                    line += f", from {t.started_at.strftime('%H:%M:%S.%f')[:-3]}"
                if t.ended_at:
                    line += f" to {t.ended_at.strftime('%H:%M:%S.%f')[:-3]}"
                if t.error:
                    line += f": {t.error}"
                if t.retry_at:
                    line += f" (next try {t.retry_at.strftime('%H:%M:%S.%f')[:-3]})"
                print(line)
            for k, v in a.extra.items():
                if v is not None:
                    print(f"    {k}: {json.dumps(v, default=str)}")
    if d.signals:
        print("\nsignals")
        for s in d.signals:
            state = f"received at step {s.consumed_seq}" if s.consumed else "PENDING"
            print(f"  {_time(s.created_at)} {s.name}: {state}; {json.dumps(s.payload, default=str)[:80]}")
    if d.timers:
        print("\ntimers")
        for timer in d.timers:
            fired = f"fired {_time(timer.fired_at)}" if timer.fired else "not fired"
            print(f"  step {timer.seq}: fires at {_time(timer.fire_at)} UTC, {fired}")
    if d.tasks:
        print("\nqueued tasks")
        for q in d.tasks:
            due = f"due {span(q.due_in_seconds)} ago" if q.due_in_seconds <= 0 else f"due in {span(q.due_in_seconds)}"
            print(f"  {q.type}: {due}" + (f", leased to {q.lease_owner}" if q.lease_owner else ""))


def cmd_show(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        detail = engine.describe(args.name, args.id, tenant_id=_scope(args))
        if args.json:  # the JSON of earlier releases, unchanged
            status = engine.query(detail.name, detail.id, tenant_id=detail.tenant_id)
            events = detail_ops.recorded_events(engine, status.name, status.id)
            _print({"workflow": status, "history": [{"seq": s, "type": t, "data": d} for s, t, d in events]})
            return 0
        stale = fleet_ops.stale_seconds()
    _show_text(detail, why(detail, stale_seconds=stale))
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload) if args.payload else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"PAYLOAD is not JSON: {exc}") from None
    with _engine(args) as engine:
        signal_id = engine.send_signal(args.name, args.id, args.signal, payload, tenant_id=args.tenant)
    print(signal_id)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        print("cancelled" if engine.cancel(args.name, args.id, tenant_id=args.tenant) else "already ended")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        result = engine.retry(args.name, args.id, tenant_id=_scope(args))
    print(f"retried {result.workflow_name}/{result.workflow_id}: {result.reason}")
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        rows = engine.dead_letters(args.name, tenant_id=_scope(args), limit=args.limit,
                                   include_retried=args.retried, after=args.after)
    if args.json:
        _print(rows)
        return 0
    if not rows:
        print("no dead letters")
        return 0
    _table([[_time(r.created_at), r.workflow_name, str(r.workflow_id), r.status or "gone",
             _time(r.retried_at), r.error[:80]] for r in rows],
           ["FAILED AT (UTC)", "SHARD", "WORKFLOW ID", "NOW", "RETRIED AT", "ERROR"])
    return 0


def cmd_dlq_retry(args: argparse.Namespace) -> int:
    if args.all == bool(args.target):
        raise InvalidInput("give NAME ID, or --all (with --name to retry one workflow type's dead letters)")
    retried = failed = 0
    with _engine(args) as engine:
        if args.target:
            if len(args.target) != 2:
                raise InvalidInput("dlq retry takes NAME ID (or --all)")
            targets = [(args.target[0], args.target[1])]
        else:
            targets = []
            after = None
            while True:  # every dead letter not retried yet, a page at a time
                page = engine.dead_letters(args.name, tenant_id=_scope(args), limit=500, after=after)
                targets += [(r.workflow_name, str(r.workflow_id)) for r in page if r.status == "failed"]
                if len(page) < 500:
                    break
                after = page[-1].id
        for name, wid in targets:
            try:
                result = engine.retry(name, wid, tenant_id=_scope(args))
            except FlowsError as exc:
                print(f"not retried {name}/{wid}: {exc}", file=sys.stderr)
                failed += 1
            else:
                print(f"retried {result.workflow_name}/{result.workflow_id}: {result.reason}")
                retried += 1
    if args.all:
        print(f"{retried} retried, {failed} not")
    return 1 if failed else 0


def cmd_prune(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        n = engine.prune(args.older_than, name=args.name, batch_size=args.batch)
    print(f"pruned {n} workflow(s) that ended more than {span(args.older_than)} ago")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        document = engine.export(args.name, args.id, tenant_id=_scope(args))
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from flows.replayer import replay_export

    if os.getcwd() not in sys.path:  # find the app from the current folder, as `python -m` would
        sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(args.app)
    except ImportError as exc:
        raise InvalidInput(f"--app {args.app!r} cannot be imported: {exc}") from None
    diverged = 0
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path} is not JSON: {exc}") from None
        try:
            report = replay_export(document)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc}") from None
        print(f"{path}: {report.describe()}")
        diverged += not report.ok
    return 1 if diverged else 0


def cmd_schedules(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        if args.action == "list":
            _print(engine.list_schedules())
        elif args.schedule_id is None:
            raise InvalidInput(f"flows schedules {args.action} needs a SCHEDULE_ID")
        elif args.action == "pause":
            _print(engine.pause_schedule(args.schedule_id))
        elif args.action == "resume":
            _print(engine.resume_schedule(args.schedule_id))
        elif args.action == "delete":
            print("deleted" if engine.delete_schedule(args.schedule_id) else "no such schedule")
        else:
            _print(engine.trigger_schedule(args.schedule_id))
    return 0


def cmd_devdb(args: argparse.Namespace) -> int:
    if args.action == "start":
        print(embedded.start())
    elif args.action == "status":
        running = embedded.is_running()
        print("running" if running else "stopped")
        return 0 if running else 1
    else:
        embedded.stop()
    return 0


# -- the parser -----------------------------------------------------------------------

SUPERVISE_HELP = """\
flows supervise: the worker fleet (the same as python -m flows.supervisor); its options follow.

example:
  flows supervise --app webapp.loans --workers 2
"""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be within 1..1000, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--shards", type=int, default=None, help="shard count (default FLOWS_SHARDS or 3)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], summary: str, examples: str,
                detail: str = "", **kwargs: Any) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary, description=summary + (f": {detail}" if detail else ""),
                           epilog="examples:\n" + examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        c.set_defaults(fn=fn)
        return c

    def target(c: argparse.ArgumentParser, tenant_help: str) -> None:
        c.add_argument("name", metavar="NAME", help="the workflow's base name (e.g. loan-application)")
        c.add_argument("id", metavar="ID", help="the workflow id (a UUID)")
        c.add_argument("--tenant", default=None, metavar="UUID", help=tenant_help)

    ANY = "only this tenant's workflow (default: any tenant)"
    DEFAULT = "the workflow's tenant (default: the default tenant)"

    command("migrate", cmd_migrate, "apply pending migrations (safe to run from several processes)",
            "  flows migrate\n  DATABASE_URL=postgresql://app@db/flows flows migrate\n")

    w = command("worker", cmd_worker, "run one worker process in the foreground (the fleet: flows supervise)",
                "  flows worker --app webapp.loans\n  flows worker --app webapp.loans --shard-indices 0,2 --concurrency 4\n")
    w.add_argument("--app", default=os.environ.get("FLOWS_APP"), required="FLOWS_APP" not in os.environ,
                   help="module that defines the workflows and activities (FLOWS_APP)")
    w.add_argument("--shard-indices", default=None, help="comma-separated shard indices (default: all)")
    w.add_argument("--concurrency", type=int, default=int(os.environ.get("FLOWS_ACTIVITY_CONCURRENCY", "8")),
                   help="activity attempts at once (FLOWS_ACTIVITY_CONCURRENCY, 8)")

    s = sub.add_parser("supervise", help="run the worker fleet (python -m flows.supervisor); --help lists its options",
                       add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_supervise)

    command("status", cmd_status, "workflow and task counts per shard, as JSON", "  flows status\n")

    ls = command("list", cmd_list, "list workflows, newest first, with the console's filters",
                 "  flows list\n  flows list --name loan-application --status running --waiting-for signal\n"
                 "  flows list --status failed --from 2024-05-01T00:00 --limit 200\n"
                 "  flows list --after 2024-05-01T10:00:00+00:00_0190...  # the next page, as printed\n")
    ls.add_argument("--name", help="base workflow name")
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--waiting-for", metavar="WHAT",
                    help="signal, activity, timer, or one of them by name: signal:document-income")
    ls.add_argument("--tenant", default=None, metavar="UUID", help="one tenant's workflows (default: every tenant)")
    ls.add_argument("--from", dest="created_from", metavar="TIME", help="created at or after (ISO 8601; UTC if no offset)")
    ls.add_argument("--to", dest="created_to", metavar="TIME", help="created before (ISO 8601)")
    ls.add_argument("--limit", type=_limit, default=50, help="rows, 1..1000 (default 50)")
    ls.add_argument("--after", metavar="CURSOR", help="the cursor printed after the previous page")
    ls.add_argument("--json", action="store_true", help="print JSON")

    sh = command("show", cmd_show, "one workflow: status, why it is not moving, history with times, activities,"
                 " signals, timers", "  flows show loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e\n"
                 "  flows show loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e --json\n")
    target(sh, ANY)
    sh.add_argument("--json", action="store_true", help="the status and history as JSON (the earlier output)")

    sg = command("signal", cmd_signal, "send a signal (with an optional JSON payload) to a running workflow",
                 "  flows signal loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e document-income \\\n"
                 "      '{\"document_type\": \"income\", \"document_id\": \"PAY-2024-1\","
                 " \"uploaded_at\": \"2024-05-01T10:00:00Z\"}'\n")
    target(sg, DEFAULT)
    sg.add_argument("signal", metavar="SIGNAL", help="the signal's name")
    sg.add_argument("payload", metavar="PAYLOAD", nargs="?", help="JSON (default: null)")

    cn = command("cancel", cmd_cancel, "cancel a running workflow (its pending work is dropped)",
                 "  flows cancel loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e\n")
    target(cn, DEFAULT)

    rt = command("retry", cmd_retry, "run a failed workflow again from its last good step",
                 "  flows retry loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e\n",
                 "a failed activity runs again with fresh attempts; after an exception or a NonDeterminismError"
                 " the recorded history is replayed by the code deployed now")
    target(rt, ANY)

    dlq = sub.add_parser("dlq", help="the dead-letter queue: list | retry", description="the dead-letter queue",
                         epilog="examples:\n  flows dlq list\n  flows dlq retry loan-application 0190f3c2-...\n"
                                "  flows dlq retry --all --name loan-application\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="list|retry")
    dl = dsub.add_parser("list", help="failed workflows and why, newest first", description="failed workflows"
                         " and why, newest first", epilog="examples:\n  flows dlq list\n"
                         "  flows dlq list --name loan-application --retried --json\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dl.add_argument("--name", help="base workflow name")
    dl.add_argument("--tenant", default=None, metavar="UUID", help="one tenant's (default: every tenant)")
    dl.add_argument("--limit", type=_limit, default=50, help="rows, 1..1000 (default 50)")
    dl.add_argument("--after", metavar="ID", help="the last dead letter id of the previous page")
    dl.add_argument("--retried", action="store_true", help="include dead letters already retried")
    dl.add_argument("--json", action="store_true", help="print JSON")
    dl.set_defaults(fn=cmd_dlq_list)
    dr = dsub.add_parser("retry", help="retry a dead-lettered workflow, or all of them",
                         description="retry a dead-lettered workflow (as flows retry), or every one not retried yet",
                         epilog="examples:\n  flows dlq retry loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e\n"
                                "  flows dlq retry --all --name loan-application\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dr.add_argument("target", nargs="*", metavar="NAME ID", help="the workflow's base name and id")
    dr.add_argument("--all", action="store_true", help="every dead letter not retried yet")
    dr.add_argument("--name", help="with --all: only this workflow type's")
    dr.add_argument("--tenant", default=None, metavar="UUID", help="only this tenant's (default: any tenant)")
    dr.set_defaults(fn=cmd_dlq_retry)

    pr = command("prune", cmd_prune, "delete workflows that ended long ago, with all their rows, in batches"
                 " (running workflows are never touched)",
                 "  flows prune --older-than 30d\n  flows prune --older-than 12h --name loan-application --batch 200\n")
    pr.add_argument("--older-than", type=_duration, required=True, metavar="AGE",
                    help="ended more than this long ago: 30d, 12h, 90m, 2w")
    pr.add_argument("--name", help="only this workflow type")
    pr.add_argument("--batch", type=_positive, default=500, help="workflows per transaction (default 500)")

    ex = command("export", cmd_export, "a run as JSON (workflow row, history, activities, signals, timers)"
                 " for flows replay", "  flows export loan-application 0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e > run.json\n")
    target(ex, ANY)
    ex.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of the standard output")

    rp = command("replay", cmd_replay, "replay exported runs against the code at hand, with no database, and"
                 " report the first divergence (exit 1 if any run diverges)",
                 "  flows replay run.json --app webapp.loans\n  flows replay runs/*.json --app myapp.workflows\n")
    rp.add_argument("files", nargs="+", metavar="FILE", help="files written by flows export")
    rp.add_argument("--app", required=True, help="module that defines the workflows")

    sc = command("schedules", cmd_schedules, "list, pause, resume, delete or trigger (start a run now) schedules",
                 "  flows schedules list\n  flows schedules pause nightly-report\n"
                 "  flows schedules trigger nightly-report\n")
    sc.add_argument("action", choices=["list", "pause", "resume", "delete", "trigger"])
    sc.add_argument("schedule_id", nargs="?", default=None, metavar="SCHEDULE_ID")

    d = command("devdb", cmd_devdb, "start, stop or check the embedded PostgreSQL (under FLOWS_PGDATA or ./.pgdata)",
                "  flows devdb start    # prints its DATABASE_URL\n  flows devdb status\n  flows devdb stop\n")
    d.add_argument("action", choices=["start", "stop", "status"])
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser().parse_known_args(argv)
    if args.command not in ("worker", "supervise"):  # those set up logging once the app is imported
        _default_logging()
    if args.command == "supervise":  # everything after the word is the supervisor's (REMAINDER drops options)
        args.rest = argv[argv.index("supervise") + 1:]
        if args.shards is not None:
            args.rest = ["--shards", str(args.shards), *args.rest]
    elif unknown:
        parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.fn(args))
    except FlowsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
