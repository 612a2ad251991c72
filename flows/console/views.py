"""The console's pages and actions (see ``flows.console``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable
from urllib.parse import quote
from uuid import UUID

from markupsafe import Markup, escape
from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from flows import codec, sharding
from flows.engine import Engine
from flows.errors import (
    DatabaseError,
    InvalidInput,
    WorkflowNotFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows.explain import span, why
from flows.ids import ANY_TENANT, parse_uuid
from flows.ops.detail import WorkflowDetail
from flows.ops.workflows import STATUSES, WorkflowPage, check_time, decode_json
from flows.console.session import COOKIE_NAME, MAX_AGE_SECONDS, ConsoleSession, CookieCodec

PAGE_SIZES = (50, 200, 1000)
COUNT_CAP = 10_000  # the list's counts per status stop there ("10,000+")
RATE_WINDOW_SECONDS = 600
RATE_BUCKET_SECONDS = 10
WAIT_KINDS = ("signal", "activity", "timer")
_QUOTED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Access:
    """Who may use the console.

    ``tenant_for(key)`` maps a tenant's API key to its tenant id (None for
    an unknown key); ``admin_key`` sees every tenant. Keys are asked for
    when ``keys_required()`` says so (default: when ``tenant_for`` is
    given) or an admin key is set; otherwise everyone sees everything."""

    tenant_for: Callable[[str], UUID | None] | None = None
    keys_required: Callable[[], bool] | None = None
    admin_key: str | None = None

    def required(self) -> bool:
        if self.admin_key:
            return True
        if self.keys_required is not None:
            return bool(self.keys_required())
        return self.tenant_for is not None


@dataclass(frozen=True)
class Viewer:
    """Who is looking: one tenant, or every tenant (``tenant`` None)."""

    tenant: UUID | None
    label: str

    @property
    def admin(self) -> bool:
        return self.tenant is None

    @property
    def scope(self) -> Any:
        return ANY_TENANT if self.tenant is None else self.tenant


# -- formatting for the templates ----------------------------------------------------


class Fmt:
    """Formatting helpers handed to the templates as ``fmt``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def time(self, at: datetime | None) -> str:
        return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

    def clock(self, at: datetime | None) -> str:
        return "" if at is None else at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]

    def ago(self, at: datetime | None) -> str:
        if at is None:
            return ""
        seconds = (self.now - at).total_seconds()
        return f"in {span(seconds)}" if seconds < 0 else f"{span(seconds)} ago"

    def span(self, seconds: float | None) -> str:
        return "" if seconds is None else span(seconds)

    def json(self, value: Any, limit: int | None = None) -> str:
        text = json.dumps(value, indent=None if limit else 2, ensure_ascii=False, default=str)
        return text if limit is None or len(text) <= limit else text[:limit] + "…"

    def short(self, wid: UUID | str) -> str:
        return str(wid)[-12:]

    def sentence(self, text: str) -> Markup:
        """The why sentence, its `quoted` names set as code."""
        return Markup(_QUOTED.sub(r"<code>\1</code>", str(escape(text))))


def _list_rows(page: WorkflowPage, root: str) -> list[tuple[str, ...]]:
    """The list's cells as ready strings (a page holds up to 1,000 rows:
    url_for and the helpers per cell would cost most of the page's time)."""
    now = datetime.now(UTC)
    rows: list[tuple[str, ...]] = []
    for w in page.workflows:
        base = sharding.base_name(w.name)
        note = w.waiting_for or w.error or ""
        rows.append((base, w.name[len(base) + 1:], f"{root}workflows/{quote(base)}/{w.id}", str(w.id), w.status,
                     note, "err" if w.error and not w.waiting_for else "", str(w.tenant_id)[-12:],
                     w.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                     w.updated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                     span((now - w.updated_at).total_seconds()) + " ago"))
    return rows


def _gaps(detail: WorkflowDetail) -> list[float | None]:
    previous: datetime | None = None
    out: list[float | None] = []
    for e in detail.history:
        out.append(None if previous is None else (e.created_at - previous).total_seconds())
        previous = e.created_at
    return out


# -- the blueprint ----------------------------------------------------------------------


def console_blueprint(
    engine: Engine | Callable[[], Engine],
    access: Access | None = None,
    *,
    secret_key: str | bytes | None = None,
    stale_seconds: float | None = None,
    name: str = "flows_console",
) -> Blueprint:
    """The console as a blueprint; mount it with ``url_prefix``.

    ``engine`` is an Engine or a callable returning one (called per request,
    so an app can make its engine lazily). ``secret_key`` signs the
    console's cookie (default: the app's SECRET_KEY, else one derived from
    the admin key and the database URL: set one when the API keys are the
    only secret). ``stale_seconds``: a worker silent that long is not live
    (default FLOWS_STALE_SECONDS or 30)."""
    access = access or Access()
    bp = Blueprint(name, __name__, template_folder="templates", static_folder="static",
                   static_url_path="/static")

    def get_engine() -> Engine:
        return engine if isinstance(engine, Engine) else engine()

    def codec_for() -> CookieCodec:
        secret = secret_key or current_app.secret_key
        if not secret:
            material = f"flows-console:{access.admin_key or ''}:{get_engine().dsn}".encode()
            secret = hashlib.sha256(material).hexdigest()
        return CookieCodec(secret)

    def stale() -> float:
        import os

        return stale_seconds if stale_seconds is not None else float(os.environ.get("FLOWS_STALE_SECONDS", "30"))

    def viewer_for(key: str | None) -> Viewer | None:
        if not access.required():
            return Viewer(None, "every tenant (no keys configured)")
        if not key:
            return None
        if access.admin_key and hmac.compare_digest(access.admin_key.encode(), key.encode()):
            return Viewer(None, "admin: every tenant")
        tenant = access.tenant_for(key) if access.tenant_for is not None else None
        return None if tenant is None else Viewer(tenant, f"tenant {tenant}")

    @bp.before_request
    def load() -> Any:
        g.console_session = session = codec_for().load(request.cookies.get(COOKIE_NAME))
        if request.method == "POST" and not session.check_csrf(request.form.get("csrf_token")):
            abort(400, description="the form's CSRF token is missing or stale: reload the page and try again")
        g.console_viewer = viewer = viewer_for(session.key)
        if viewer is None and request.endpoint not in (f"{name}.login", f"{name}.static"):
            return redirect(url_for(".login", next=request.full_path if request.method == "GET" else None))
        return None

    @bp.after_request
    def save(response: Response) -> Response:
        session: ConsoleSession | None = g.get("console_session")
        if session is not None and session.changed:
            response.set_cookie(COOKIE_NAME, codec_for().dump(session), max_age=MAX_AGE_SECONDS,
                                path=url_for(".index").rstrip("/") or "/", httponly=True, samesite="Lax",
                                secure=request.is_secure)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @bp.context_processor
    def helpers() -> dict[str, Any]:
        session: ConsoleSession | None = g.get("console_session")
        return {"fmt": g.get("console_fmt") or Fmt(datetime.now(UTC)), "viewer": g.get("console_viewer"),
                "csrf_token": session.csrf if session else "", "keys_required": access.required(),
                "flash": session.pop_flash() if session else None}

    def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
        return render_template(f"flows_console/{template}", **context), status

    def problem(status: int, title: str, detail: str) -> tuple[str, int]:
        return page("problem.html", status, title=title, detail=detail)

    @bp.errorhandler(InvalidInput)
    def invalid(exc: InvalidInput) -> tuple[str, int]:
        return problem(400, "Invalid input", str(exc))

    @bp.errorhandler(WorkflowNotFound)
    def not_found(exc: WorkflowNotFound) -> tuple[str, int]:
        return problem(404, "Workflow not found", str(exc))

    @bp.errorhandler(DatabaseError)
    def database(exc: DatabaseError) -> tuple[str, int]:
        current_app.logger.error("console-database-error path=%s error=%s", request.path, exc)
        return problem(503, "Database unavailable", "the database did not answer; retry later (details in the log)")

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        return problem(exc.code or 500, exc.name, exc.description or exc.name)

    def viewer() -> Viewer:
        return g.console_viewer  # type: ignore[no-any-return]

    def flash(level: str, text: str) -> None:
        g.console_session.say(level, text)

    # -- access ---------------------------------------------------------------

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        target = request.values.get("next") or url_for(".index")
        if not target.startswith(url_for(".index")) or target.startswith("//"):
            target = url_for(".index")  # never send anyone elsewhere
        if not access.required():
            return redirect(target)
        error = None
        if request.method == "POST":
            key = request.form.get("key", "").strip()
            if viewer_for(key) is not None:
                g.console_session.key = key
                g.console_session.changed = True
                return redirect(target)
            error = "That key is not valid here."
        return page("login.html", 401 if error else 200, error=error, next=target)

    @bp.post("/logout")
    def logout() -> Any:
        g.console_session.key = None
        g.console_session.changed = True
        return redirect(url_for(".login"))

    # -- workflows --------------------------------------------------------------

    @bp.get("/")
    def index() -> Any:
        args = request.args
        eng = get_engine()
        name = args.get("name") or None
        status = args.get("status") or None
        waiting = args.get("waiting_for") or None
        created_from = check_time(args.get("from"), "from")
        created_to = check_time(args.get("to"), "to")
        try:
            limit = int(args.get("limit") or PAGE_SIZES[0])
        except ValueError:
            raise InvalidInput(f"limit must be one of {PAGE_SIZES}, got {args.get('limit')!r}") from None
        if limit not in PAGE_SIZES:
            raise InvalidInput(f"limit must be one of {PAGE_SIZES}, got {limit}")
        scope = viewer().scope
        if viewer().admin and args.get("tenant"):
            scope = parse_uuid(args["tenant"], "tenant")
        result = eng.list_workflows(name, status=status, tenant_id=scope, waiting_for=waiting,
                                    created_from=created_from, created_to=created_to, after=args.get("after") or None,
                                    limit=limit)
        counts = eng.count_workflows(name, tenant_id=scope, waiting_for=waiting, created_from=created_from,
                                     created_to=created_to, cap=COUNT_CAP)
        names = eng.workflow_names()
        filters = {k: v for k, v in args.items() if k != "after" and v}
        total = sum(counts.values())
        shown = {s: f"{n:,}+" if n >= COUNT_CAP else f"{n:,}" for s, n in counts.items()}
        return page("workflows.html", rows=_list_rows(result, url_for(".index")), next_cursor=result.next_cursor,
                    counts=shown, names=names, statuses=STATUSES, filters=filters, wait_kinds=WAIT_KINDS,
                    page_sizes=PAGE_SIZES, limit=limit,
                    total=f"{total:,}+" if any(n >= COUNT_CAP for n in counts.values()) else f"{total:,}")

    def detail_of(workflow_name: str, workflow_id: str) -> WorkflowDetail:
        detail = get_engine().describe(workflow_name, workflow_id, tenant_id=viewer().scope)
        g.console_fmt = Fmt(detail.now)
        return detail

    @bp.get("/workflows/<workflow_name>/<workflow_id>")
    def workflow(workflow_name: str, workflow_id: str) -> Any:
        detail = detail_of(workflow_name, workflow_id)
        return page("workflow.html", d=detail, sentence=why(detail, stale_seconds=stale()), gaps=_gaps(detail),
                    live=detail.status not in ("completed", "failed", "cancelled"))

    @bp.post("/workflows/<workflow_name>/<workflow_id>/signal")
    def signal(workflow_name: str, workflow_id: str) -> Any:
        detail = detail_of(workflow_name, workflow_id)
        signal_name = request.form.get("signal", "").strip()
        body = request.form.get("payload", "").strip()
        payload = decode_json(body, "payload") if body else None
        try:
            signal_id = get_engine().send_signal(detail.name, detail.id, signal_name, payload,
                                                 tenant_id=detail.tenant_id)
        except (InvalidInput, WorkflowNotRunning) as exc:
            flash("error", f"Signal not sent: {exc}")
        else:
            flash("ok", f"Signal {signal_name} sent ({signal_id}).")
        return redirect(url_for(".workflow", workflow_name=detail.name, workflow_id=detail.id))

    @bp.post("/workflows/<workflow_name>/<workflow_id>/cancel")
    def cancel(workflow_name: str, workflow_id: str) -> Any:
        detail = detail_of(workflow_name, workflow_id)
        if get_engine().cancel(detail.name, detail.id, tenant_id=detail.tenant_id):
            flash("ok", "Workflow cancelled.")
        else:
            flash("error", f"Not cancelled: the workflow had already ended ({detail.status}).")
        return redirect(url_for(".workflow", workflow_name=detail.name, workflow_id=detail.id))

    @bp.post("/workflows/<workflow_name>/<workflow_id>/retry")
    def retry(workflow_name: str, workflow_id: str) -> Any:
        try:
            result = get_engine().retry(workflow_name, workflow_id, tenant_id=viewer().scope)
        except WorkflowNotFailed as exc:
            flash("error", f"Not retried: {exc}")
        else:
            flash("ok", f"Retried: {result.reason}.")
        if request.form.get("next") == "dead-letters":
            return redirect(url_for(".dead_letters"))
        return redirect(url_for(".workflow", workflow_name=sharding.base_name(workflow_name),
                                workflow_id=workflow_id))

    # -- dead letters -------------------------------------------------------------

    @bp.get("/dead-letters")
    def dead_letters() -> Any:
        args = request.args
        include = args.get("retried") == "1"
        rows = get_engine().dead_letters(args.get("name") or None, tenant_id=viewer().scope,
                                         after=args.get("after") or None, limit=PAGE_SIZES[0] + 1,
                                         include_retried=include)
        more = len(rows) > PAGE_SIZES[0]
        rows = rows[:PAGE_SIZES[0]]
        return page("dead_letters.html", rows=rows, include_retried=include,
                    next_after=str(rows[-1].id) if more else None, base_name=sharding.base_name)

    # -- the fleet ------------------------------------------------------------------

    def admin_only() -> None:
        if not viewer().admin:
            abort(403, description="the fleet is shared by every tenant: it is shown to the admin key only")

    @bp.get("/fleet")
    def fleet() -> Any:
        admin_only()
        state = get_engine().fleet(stale())
        g.console_fmt = Fmt(state.now)
        return page("fleet.html", fleet=state, window=RATE_WINDOW_SECONDS)

    @bp.get("/fleet/rates.json")
    def rates() -> Any:
        admin_only()
        rows = get_engine().event_rates(RATE_WINDOW_SECONDS, RATE_BUCKET_SECONDS)
        now = datetime.now(UTC).timestamp()
        end = int(now) - int(now) % RATE_BUCKET_SECONDS
        times = [end - RATE_WINDOW_SECONDS + RATE_BUCKET_SECONDS * (i + 1) for i in range(
            RATE_WINDOW_SECONDS // RATE_BUCKET_SECONDS)]
        index = {t: i for i, t in enumerate(times)}
        series: dict[str, list[float]] = {}
        for shard, t, n in rows:
            values = series.setdefault(shard, [0.0] * len(times))
            if int(t) in index:
                values[index[int(t)]] = n / RATE_BUCKET_SECONDS
        body = {"t": times, "series": [{"label": s, "values": v} for s, v in sorted(series.items())],
                "bucket_seconds": RATE_BUCKET_SECONDS}
        return Response(codec.encode(body), mimetype="application/json")

    return bp
