"""One worker process: listen, claim, run, commit.

NOTIFY is a hint and the claim is the truth: the loop waits for a
notification, a shard's next due time (``Wakeups``), or a stop, then claims
where work is due. Workflow and timer tasks are replayed in the claiming
transaction (``StepWriter``), on the loop's thread or a few replay threads;
activities run on a bounded pool of threads (``ActivityRunner``); a thread
keeps the worker's heartbeat (``Heartbeat``).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from flows import children, codec, continuation, metrics, sharding, store
from flows.activity_runner import ActivityRunner
from flows.continuation import ReplayCache
from flows.definitions import ActivityDefinition, WorkflowDefinition, registered_activities, registered_workflows
from flows.engine import Engine
from flows.errors import ConfigurationError, ReplayOverBudget
from flows.heartbeat import HEARTBEAT_SECONDS, HOST, STALE_SECONDS, Heartbeat
from flows.schedules import Scheduler
from flows.steps import News, Prepared, ReplayBudget, StepWriter
from flows.store import carry as carry_store
from flows.store import leases as lease_store
from flows.store import schedules as schedule_store
from flows.store import steps as step_store
from flows.threads import Threads
from flows.wakeups import ACTIVITY, NEVER, REPLAY, Dispatcher, Ticket, Wake, Waker

log = logging.getLogger("flows.worker")

# Longest the loop sleeps without news when heartbeats are off (then it asks
# every shard when its next task is due); with them on, each beat asks
# whether a task of ours is due and wakes the loop if so.
SAFETY_POLL_SECONDS = float(os.environ.get("FLOWS_SAFETY_POLL_SECONDS", "30"))
DUE_MARGIN_SECONDS = 0.001  # wake this long after a task falls due, never just before it
# The longest wait between two tries while the database is away: a connection
# refused costs nothing, and the fleet must be back soon after the server is.
RECONNECT_MAX_SECONDS = 1.0
GRACEFUL_TIMEOUT_SECONDS = float(os.environ.get("FLOWS_GRACEFUL_TIMEOUT", "30"))
# Threads claiming and replaying workflow and timer tasks: replays mostly wait
# on the database, so a few overlap well even under the GIL.
REPLAY_THREADS = int(os.environ.get("FLOWS_REPLAY_THREADS", "3"))
# How long a busy thread may keep the GIL from one that woke (Python's
# default is 5 ms): the loop woken by a notification or a due timer, or a
# replay thread whose answer arrived, waits that long at worst.
GIL_SWITCH_SECONDS = 0.0005
# A step's transaction holds its workflow's row: bound how long. A replay
# running longer than its budget is abandoned; the server cancels a statement
# running longer than the statement timeout, and ends a session idle inside a
# transaction for longer than the idle timeout (a replay stuck in C).
REPLAY_BUDGET_SECONDS = float(os.environ.get("FLOWS_REPLAY_BUDGET_SECONDS", "30"))
STATEMENT_TIMEOUT_SECONDS = float(os.environ.get("FLOWS_STATEMENT_TIMEOUT_SECONDS", "30"))
IDLE_IN_TRANSACTION_SECONDS = float(os.environ.get("FLOWS_IDLE_IN_TRANSACTION_SECONDS", "60"))
# A step that fails this many times in a row for one workflow, with an error
# that is not the database being away, fails that workflow (the database
# refusing what the step holds fails it at once).
STEP_FAILURES_BEFORE_FAILING = 2
# Due workflow tasks one transaction claims and commits together while a
# shard has a backlog (1: one at a time, always).
CLAIM_BATCH = int(os.environ.get("FLOWS_CLAIM_BATCH", "8"))


class Worker:
    """Runs the given workflows' and activities' tasks for some shards.

    ``workflows`` may hold several versions of one workflow: the worker
    claims only tasks of the (name, version) pairs and the activities it
    has; others stay queued for a worker that has them. ``shards=None``
    serves every shard; otherwise the shard indices listed. ``concurrency``
    bounds the activity attempts running at once. With ``schedules`` the
    worker also fires the schedules that fall due (any worker may: each
    tick starts one run however many fire it)."""

    def __init__(
        self,
        engine: Engine,
        workflows: Iterable[WorkflowDefinition[Any, Any]] | None = None,
        activities: Iterable[ActivityDefinition[Any, Any]] | None = None,
        shards: Iterable[int] | None = None,
        concurrency: int = 8,
        *,
        worker_id: str | None = None,
        graceful_timeout: float = GRACEFUL_TIMEOUT_SECONDS,
        watch_fd: int | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_seconds: float = STALE_SECONDS,
        schedules: bool = True,
    ) -> None:
        self.engine = engine
        wfs = list(registered_workflows() if workflows is None else workflows)
        acts = list(registered_activities() if activities is None else activities)
        if not wfs:
            raise ConfigurationError("a worker needs at least one workflow")
        self.workflows = {(w.name, w.version): w for w in wfs}
        self.activities = {a.name: a for a in acts}
        indices = list(range(engine.shards)) if shards is None else sorted(set(shards))
        bad = [k for k in indices if not (isinstance(k, int) and 0 <= k < engine.shards)]
        if bad or not indices:
            raise ConfigurationError(f"shard indices must be within 0..{engine.shards - 1}, got {indices}")
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        self.shard_indices = indices
        names = sorted({name for name, _ in self.workflows})
        self.shards = [sharding.shard_name(n, k) for n in names for k in indices]
        self._versions = {
            s: sorted(v for n, v in self.workflows if n == sharding.base_name(s)) for s in self.shards
        }
        self.serves = lease_store.Serves(
            tuple(self.shards), tuple(tuple(self._versions[s]) for s in self.shards), tuple(sorted(self.activities)),
        )
        self.concurrency = concurrency
        self.graceful_timeout = graceful_timeout
        self.watch_fd = watch_fd  # readable (EOF) = our supervisor is gone: stop
        # Unique even where hostname and pid repeat (containers): leases carry it.
        self.owner = worker_id or f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stopping = threading.Event()
        self._immediate = False
        self._channels = {sharding.channel(s): s for s in self.shards}
        self.waker = Waker()
        self.wakeups = Dispatcher(
            self.shards, claim_batch=CLAIM_BATCH, notify=self.waker.wake,
            survey_every=SAFETY_POLL_SECONDS if heartbeat_seconds <= 0 else NEVER,
        )
        self.budget = ReplayBudget(REPLAY_BUDGET_SECONDS)
        self.heartbeat = Heartbeat(
            owner=self.owner, serves=self.serves, shard_group=",".join(map(str, indices)),
            seconds=heartbeat_seconds, stale_seconds=stale_seconds, on_due=self._beat_found_due,
        )
        self.replay_cache = ReplayCache()
        self.steps = StepWriter(self.workflows, self.activities, self._alone, self.budget, self.replay_cache,
                                continuation.PARK_MIN_EVENTS, engine.shards)
        self.runner = ActivityRunner(
            self.activities, owner=self.owner, concurrency=concurrency, steps=self.steps, wakeups=self.wakeups,
            lease_to=lambda: None if self._stopping.is_set() else self.owner, on_news=self._announce,
        )
        self.scheduler = Scheduler(engine.shards, self.owner) if schedules else None
        self._replayers = 0
        self._replay_failures = 0
        self._step_failures: dict[tuple[str, Any], int] = {}
        self._lock = threading.Lock()
        self._pool: Any = None
        self._listener: Any = None
        self._replay_executor: Threads | None = None

    # -- control ------------------------------------------------------------

    def stop(self, graceful: bool = True) -> None:
        """Stop claiming; with ``graceful`` let running activities finish
        (within ``graceful_timeout``), otherwise leave them to their leases."""
        self._immediate = self._immediate or not graceful
        self.runner.immediate = self._immediate
        self._stopping.set()
        self.wakeups.wake(Wake.SIGNAL)

    def _install_signal_handlers(self) -> None:
        # Handlers only record; the loop acts (a byte on the wake pipe wakes it).
        if threading.current_thread() is not threading.main_thread():
            return
        signal.set_wakeup_fd(self.waker.wake_fd)

        def graceful(signum: int, frame: object) -> None:
            self._stopping.set()

        def immediate(signum: int, frame: object) -> None:
            self._immediate = self.runner.immediate = True
            self._stopping.set()

        signal.signal(signal.SIGTERM, graceful)
        signal.signal(signal.SIGINT, graceful)
        signal.signal(signal.SIGQUIT, immediate)

    def _alone(self) -> bool:
        return self.heartbeat.alone and not self._stopping.is_set()

    def _announce(self, news: News | None) -> None:
        """A step of ours made work due where no other worker serves the
        shard: our own wake-up stands in for the NOTIFY."""
        if news is None:
            return
        if news.activities:
            self.wakeups.announce(ACTIVITY, [news.shard])
        if news.replay_now:
            self.wakeups.announce(REPLAY, [news.shard])
        for seconds in news.retries_in:
            self.wakeups.announce(ACTIVITY, [news.shard], seconds)
        for seconds in news.timers_in:
            self.wakeups.announce(REPLAY, [news.shard], seconds)
        self.wakeups.wake(Wake.NEWS)

    def _beat_found_due(self) -> None:
        self.wakeups.announce(REPLAY)
        self.wakeups.announce(ACTIVITY)
        self.wakeups.wake(Wake.NEWS)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stop()`` or SIGTERM/SIGINT (graceful) or SIGQUIT."""
        self._install_signal_handlers()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._pool = store.open_pool(
            self.engine.dsn, min_size=1, max_size=self.concurrency + REPLAY_THREADS + 2, name="flows-worker",
            statement_timeout=STATEMENT_TIMEOUT_SECONDS, idle_in_transaction_timeout=IDLE_IN_TRANSACTION_SECONDS,
        )
        self._replay_executor = Threads(REPLAY_THREADS, "flows-replay")
        self.runner.start(self._pool)
        self.heartbeat.start(self.engine.dsn)
        if self.scheduler is not None:
            self.scheduler.start(self._pool)
        metrics.enable()
        metrics.worker_running(+1)
        log.info("worker-start owner=%s shards=%s versions=%s activities=%s concurrency=%s", self.owner,
                 ",".join(self.shards), ",".join(f"{n}@{v}" for n, v in sorted(self.workflows)),
                 ",".join(self.serves.activities), self.concurrency)
        backoff = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if self._listener is None:
                        self._connect_listener()
                        if backoff:  # the server is back: drop the pooled connections it closed meanwhile
                            self._pool.check()
                        self._survey()  # at once: notifications sent meanwhile are lost
                        if self.scheduler is not None:
                            self.scheduler.poke()
                    timeout = self._drain()
                    backoff = 0.0
                except store.TRANSIENT_ERRORS as exc:
                    backoff = min(RECONNECT_MAX_SECONDS, backoff * 2 or 0.1)
                    log.warning("database-unavailable owner=%s error=%s retry_in=%.1fs", self.owner,
                                type(exc).__name__, backoff)
                    self._close_listener()
                    timeout = backoff
                self._wait(timeout)
        finally:
            self._shutdown()

    def _connect_listener(self) -> None:
        conn = store.connect(self.engine.dsn, autocommit=True)
        try:
            store.listen(conn, [*self._channels, *([schedule_store.SCHEDULES_CHANNEL] if self.scheduler else [])])
        except BaseException:
            conn.close()
            raise
        self._listener = conn

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
            self._listener = None

    def _survey(self) -> None:
        """Learn every shard's next due times in one statement."""
        survey = self.wakeups.survey()
        with self._pool.connection() as conn:
            rows = lease_store.due_times(conn, self.serves)
        for kind in (REPLAY, ACTIVITY):
            self.wakeups.learn_survey(survey, kind, {shard: due for shard, k, due in rows if k == kind})

    def _wait(self, timeout: float) -> None:
        """Sleep until a notification, a wake-up or ``timeout``; mark the
        shards the notifications name."""
        fds = [fd for fd in (self._listener and self._listener.fileno(), self.watch_fd) if fd is not None]
        woken, ready = self.waker.wait(timeout, fds)
        if self.watch_fd is not None and self.watch_fd in ready:
            log.warning("supervisor-gone owner=%s: stopping", self.owner)
            self.watch_fd = None
            self.stop(graceful=True)
        if self._listener is not None and self._listener.fileno() in ready:
            try:
                for note in self._listener.notifies(timeout=0):
                    shard = self._channels.get(note.channel)
                    if shard is None:
                        if note.channel == schedule_store.SCHEDULES_CHANNEL and self.scheduler is not None:
                            self.scheduler.poke()
                        continue
                    if note.payload != store.ACTIVITY_WORK:
                        self.wakeups.announce(REPLAY, [shard])
                    if note.payload != store.REPLAY_WORK:
                        self.wakeups.announce(ACTIVITY, [shard])
            except store.TRANSIENT_ERRORS as exc:
                log.warning("listen-connection-lost owner=%s error=%s", self.owner, type(exc).__name__)
                self._close_listener()

    def _drain(self) -> float:
        """Claim what is due: workflow and timer tasks on the replay threads,
        activities up to the free slots here. Return how long to sleep."""
        if self.wakeups.survey_due():
            self._survey()
        if self.wakeups.due_now(REPLAY):
            self._start_replayer(here=True)  # first: a signal's replay is what someone waits for
        if self.activities:
            while self.runner.free_slots() and (ticket := self.wakeups.take(ACTIVITY)) is not None:
                self.runner.claim(ticket)
        kinds = [] if self._replayers else [REPLAY]  # the last replay thread to run dry wakes the loop
        if self.activities and self.runner.free_slots():  # else a freed slot wakes it
            kinds.append(ACTIVITY)
        return self.wakeups.sleep_seconds(kinds, margin=DUE_MARGIN_SECONDS)

    # -- replays --------------------------------------------------------------

    def _start_replayer(self, here: bool = False) -> None:
        """One more replayer, up to REPLAY_THREADS: they ramp up while they
        find work and wind down as they run dry. With ``here`` and none
        running, the loop's own thread claims the first task and hands on to
        a replay thread only if another is due: the task a wake-up announced
        starts at once, without waking a thread and passing it the GIL."""
        with self._lock:
            if self._replayers >= REPLAY_THREADS or self._stopping.is_set():
                return
            self._replayers += 1
            here = here and self._replayers == 1
        if here:
            self._replay_until_dry(once=True)
            return
        try:
            assert self._replay_executor is not None
            self._replay_executor.submit(self._replay_until_dry)
        except RuntimeError:  # shut down meanwhile: we are stopping
            with self._lock:
                self._replayers -= 1

    def _replay_until_dry(self, once: bool = False) -> None:
        """Claim and replay while a shard has a task due; with ``once`` (the
        loop's thread) one task, leaving the rest to a replay thread."""
        try:
            while not self._stopping.is_set():
                ticket = self.wakeups.take(REPLAY)
                if ticket is None:
                    break
                self._run_workflow_task(ticket)
                self._replay_failures = 0
                if self.wakeups.due_now(REPLAY):
                    self._start_replayer()
                if once:
                    break
        except (Exception, ReplayOverBudget) as exc:  # noqa: BLE001 - the database went away, or a bug: back off
            self._replay_failures += 1
            transient = isinstance(exc, store.TRANSIENT_ERRORS)
            if transient:
                log.warning("replay-failed owner=%s error=%s", self.owner, type(exc).__name__)
            else:
                store.log_error(log, logging.ERROR, "replay-failed", exc, owner=self.owner)
            self._stopping.wait(min(RECONNECT_MAX_SECONDS, 0.05 * 2 ** self._replay_failures))
        finally:
            with self._lock:
                self._replayers -= 1
                last = self._replayers == 0
            if last and not once:  # the loop looks for the next due task itself after running once
                self.wakeups.wake(Wake.DRY)

    def _run_workflow_task(self, ticket: Ticket) -> bool:
        """Claim one workflow, timer or timeout task of the ticket's shard and
        replay its workflow, all in one transaction; or, while the shard has a
        backlog, several (``_run_batch``); or a task to carry to another
        shard (``children.carry``). With a slot free, one activity the replay
        schedules is leased to this worker and started here at once (the
        others stay queued for any worker). Returns whether a task was
        claimed."""
        with self._claiming(ticket.shard):
            if self.wakeups.batch_size(ticket.shard) > 1:
                return self._run_batch(ticket)
            return self._run_one(ticket)

    @contextmanager
    def _claiming(self, shard: str) -> Iterator[None]:
        self.wakeups.claim_started(shard)
        try:
            yield
        finally:
            self.wakeups.claim_ended(shard)

    def _run_one(self, ticket: Ticket) -> bool:
        slot = 0 if self._stopping.is_set() or not self.activities else self.runner.reserve(1)
        leased: list[lease_store.ActivityTask] = []
        try:
            with self._pool.connection() as conn:
                state: step_store.ReplayState | None = None
                try:
                    with store.StepTransaction(conn) as tx:
                        claimed = step_store.claim_replay(tx, ticket.shard, self._versions[ticket.shard],
                                                     self.steps.whole_below, self.owner)
                        due = claimed.next_due
                        took = claimed.state is not None or claimed.carry is not None
                        if not took and due is not None and due <= 0:
                            due = self.wakeups.held_elsewhere(ticket.shard)
                        self.wakeups.learn(ticket, due, claimed=took)  # another due already: a backlog
                        state = claimed.state
                        if state is not None:
                            if state.workflow.status != "running":
                                return True
                            if state.task is not None and state.task[1] == "timeout":
                                self.steps.time_out(tx, state)
                                return True
                            leased, news = self.steps.advance(tx, state, self.owner if slot else None, slots=slot)
                    if claimed.carry is not None:  # after the claim's commit: the lease holds meanwhile
                        children.carry(conn, claimed.carry)
                        return True
                    if state is None:
                        return False
                except (Exception, ReplayOverBudget) as exc:
                    if state is None or isinstance(exc, store.TRANSIENT_ERRORS):
                        raise
                    leased = []
                    self._step_failed(conn, state, exc)
                    return True
            self._step_failures.pop((state.workflow.name, state.workflow.id), None)
            self._announce(news)
            self.runner.run(leased)
            return True
        finally:
            self.runner.release(slot - len(leased))

    def _run_batch(self, ticket: Ticket) -> bool:
        """Claim up to CLAIM_BATCH due tasks of a shard with a backlog, replay
        each, and write them in one transaction: one claim and one commit
        for them all. When anything goes wrong the transaction rolls back
        and the shard goes back to one task at a time, where a step that
        cannot be written fails its own workflow alone."""
        slots = 0 if self._stopping.is_set() or not self.activities else self.runner.reserve(CLAIM_BATCH)
        leased: list[lease_store.ActivityTask] = []
        prepared: list[Prepared] = []
        carry: carry_store.Carry | None = None
        try:
            with self._pool.connection() as conn:
                try:
                    with store.StepTransaction(conn) as tx:
                        states, due, carry = step_store.claim_replays(
                            tx, ticket.shard, self._versions[ticket.shard], self.steps.whole_below,
                            self.wakeups.batch_size(ticket.shard), self.owner)
                        took = bool(states) or carry is not None
                        if not took and due is not None and due <= 0:
                            due = self.wakeups.held_elsewhere(ticket.shard)
                        self.wakeups.learn(ticket, due, claimed=took)
                        for state in states:
                            if state.workflow.status != "running":
                                continue
                            if state.task is not None and state.task[1] == "timeout":
                                prepared.append(self.steps.prepare_time_out(state))
                            else:
                                lease_to = self.owner if len(prepared) < slots else None
                                prepared.append(self.steps.prepare(tx, state, lease_to))
                        stamps = step_store.record_steps(tx, [p.step for p in prepared]) if prepared else []
                        log.debug("claimed-batch shard=%s tasks=%s", ticket.shard, len(states))
                except (Exception, ReplayOverBudget) as exc:
                    for p in prepared:
                        self.steps.abort(p)
                    self.wakeups.leave_backlog(ticket.shard)
                    if isinstance(exc, store.TRANSIENT_ERRORS):
                        raise
                    log.warning("claim-batch-failed shard=%s error=%s: one task at a time", ticket.shard,
                                type(exc).__name__)
                    self.wakeups.announce(REPLAY, [ticket.shard])
                    return True
                if carry is not None:  # leased by the committed claim: carried after it
                    children.carry(conn, carry)
            for p, stamp in zip(prepared, stamps):
                got, news = self.steps.finish(p, stamp)
                leased += got
                self._announce(news)
            self.runner.run(leased)
            return bool(states) or carry is not None
        finally:
            self.runner.release(slots - len(leased))

    def _step_failed(self, conn: Any, state: step_store.ReplayState, exc: BaseException) -> None:
        """A step could not be recorded and was rolled back. The database
        refusing what it holds fails the workflow at once; another error
        (a replay over its budget, a bug) fails it when it repeats. Either
        way the workflow fails alone, never stalling its shard."""
        wf = state.workflow
        key = (wf.name, wf.id)
        if store.refused_by_database(exc):  # its primary message goes to the workflow's error, not to the log
            diag = getattr(exc, "diag", None)
            why = (f"the database refused this step: {type(exc).__name__} ({getattr(exc, 'sqlstate', '')}):"
                   f" {diag.message_primary if diag is not None else ''}")
            failures = STEP_FAILURES_BEFORE_FAILING
        elif isinstance(exc, ReplayOverBudget):
            why = f"the replay ran past its budget of {REPLAY_BUDGET_SECONDS:g}s (FLOWS_REPLAY_BUDGET_SECONDS)"
            failures = self._step_failures.get(key, 0) + 1
        else:
            why = f"recording this step failed: {type(exc).__name__}: {exc}"
            failures = self._step_failures.get(key, 0) + 1
        if isinstance(exc, ReplayOverBudget):
            log.error("step-failed shard=%s id=%s failures=%s error=ReplayOverBudget", wf.name, wf.id, failures)
        else:
            store.log_error(log, logging.ERROR, "step-failed", exc, shard=wf.name, id=wf.id, failures=failures)
        if failures < STEP_FAILURES_BEFORE_FAILING:
            self._step_failures[key] = failures
            return
        self._step_failures.pop(key, None)
        if self.steps.fail(conn, wf.name, wf.id, codec.text(why)):
            log.warning("workflow-failed-by-step shard=%s id=%s error=%s", wf.name, wf.id,
                        store.describe(exc) if not isinstance(exc, ReplayOverBudget) else "ReplayOverBudget")

    # -- shutdown ---------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._replay_executor is not None:
            self._replay_executor.shutdown(wait=not self._immediate)
        if self.runner.shutdown(0.0 if self._immediate else self.graceful_timeout):
            try:  # attempts still running: let others redo them now
                with self._pool.connection() as conn, conn.transaction():
                    released = lease_store.release_leases(conn, self.shards, self.owner)
                log.warning("worker-released-leases owner=%s count=%s", self.owner, released)
            except Exception as exc:  # noqa: BLE001 - best effort; leases expire anyway
                log.warning("worker-release-failed owner=%s error=%s", self.owner, type(exc).__name__)
        if self.heartbeat.was_alone:  # work we announced only to ourselves may be unclaimed: tell who serves these shards now
            try:
                with self._pool.connection(timeout=5.0) as conn:
                    store.notify(conn, self.shards)
            except Exception as exc:  # noqa: BLE001 - best effort; a worker claims all it finds at start
                log.warning("worker-handover-failed owner=%s error=%s", self.owner, type(exc).__name__)
        if self.scheduler is not None:
            self.scheduler.stop()
        self.heartbeat.stop()
        self.replay_cache.clear()
        self.budget.stop()
        self._close_listener()
        self._pool.close()
        metrics.worker_running(-1)
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
        log.info("worker-stop owner=%s", self.owner)
