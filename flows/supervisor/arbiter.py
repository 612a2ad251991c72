"""The supervisor's loop: keep one worker process per shard group alive.

Signal handlers only record (Python writes each signal's number to a
wake-up pipe); the loop reads the pipe and acts. Each turn it reaps every
dead child, has a dead worker's leases released at once (it knows the owner
and shards each worker announced), restarts what is missing, with a growing
back-off for a worker that keeps dying at start-up, and now and then has
the leases of workers elsewhere whose heartbeats went stale released.

The loop itself never touches the database: that work goes to a helper
thread (``database.Helper``) whose answers wake the loop on a pipe it
selects on with the others, each job under a deadline.

Workers come in generations: SIGHUP (new code), SIGTTIN and SIGTTOU (a new
split of the shards) start a new generation beside the old one, and the old
workers are told to stop gracefully only once every new one has booted, so
no shard goes unserved and no activity in flight is dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass

from flows import metrics, sharding
from flows.supervisor import child as childproc
from flows.supervisor.child import Ready, WorkerSpec
from flows.supervisor.database import Answer, Helper, Job, ready_to_start
from flows.supervisor.exits import EXIT_BOOT_ERROR, EXIT_DATABASE, EXIT_OK, ChildExit, classify, signal_name

log = logging.getLogger("supervisor")

KILL_MARGIN_SECONDS = 5.0  # after a worker's own graceful timeout, before SIGKILL
IMMEDIATE_KILL_SECONDS = 5.0  # SIGQUIT, then SIGKILL after this long
BOOT_BACKOFF_INITIAL_SECONDS = 0.5  # doubled for each consecutive start-up failure
BOOT_BACKOFF_MAX_SECONDS = 30.0
MIN_UPTIME_SECONDS = 5.0  # a worker that exits with an error sooner crashed at start-up
STARTUP_DB_WAIT_SECONDS = float(os.environ.get("FLOWS_STARTUP_DB_WAIT_SECONDS", "10"))
RELEASE_RETRY_SECONDS = 1.0
DRAIN_SECONDS = 5.0  # at exit, how long the releases of the last workers' leases may take


@dataclass(frozen=True)
class FleetConfig:
    app: str
    dsn: str
    workers: int
    shards: int
    concurrency: int
    graceful_timeout: float
    stale_seconds: float  # a worker this long without a heartbeat is taken for dead


@dataclass(eq=False)
class Child:
    pid: int
    slot: int  # index of its shard group in the layout of its generation
    generation: int
    spec: WorkerSpec
    sock: socket.socket | None
    started: float
    buffer: bytes = b""
    ready: Ready | None = None
    retiring: bool = False  # told to stop
    kill_at: float | None = None  # SIGKILL it if still alive then


@dataclass
class _Generation:
    number: int
    layout: list[tuple[int, ...]]  # the shard groups, one worker each


@dataclass
class _Slot:
    failures: int = 0  # consecutive start-up failures
    spawn_at: float = 0.0


class Arbiter:
    """Forks and watches the workers of one fleet. ``run()`` returns the exit code."""

    SIGNALS = (
        signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
    )

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._generations = itertools.count(1)
        self.current = self._layout(config.workers)
        self.stable: _Generation | None = None  # the generation to fall back on while a new one boots
        self.children: dict[int, Child] = {}
        self.slots: dict[int, _Slot] = {}
        self.stopping: str | None = None  # "graceful" or "immediate"
        self.exit_code = EXIT_OK
        self._pending_release: list[Ready] = []
        self._release_at = 0.0
        self._sweep_seconds = max(1.0, config.stale_seconds / 2)
        self._sweep_at = 0.0
        self._sweeping = False  # a probe or sweep job is queued or in flight
        self._db = Helper(config.dsn, self.SIGNALS)
        self._db_ok_since: float | None = None
        self._wake_r = self._wake_w = -1

    def _layout(self, workers: int) -> _Generation:
        groups = sharding.split_groups(list(range(self.config.shards)), workers)
        return _Generation(next(self._generations), [tuple(g) for g in groups])

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        if not self._check_database():
            self._db.stop()
            return EXIT_DATABASE
        self._install_signals()
        log.info(
            "supervisor-start app=%s workers=%s shards=%s groups=%s concurrency=%s",
            self.config.app, len(self.current.layout), self.config.shards,
            " ".join(",".join(map(str, g)) for g in self.current.layout), self.config.concurrency,
        )
        try:
            while True:
                self._manage_workers()
                if self.stopping and not self.children:
                    break
                ready = self._sleep(self._next_wakeup())
                self._handle_signals()
                self._read_children(ready)
                self._read_database(ready)
                self._reap_workers()
                self._release_dead()
                self._sweep_stale()
                self._murder_overdue()
                self._database_jobs()
            self._drain_database()
        except BaseException:
            log.exception("supervisor-crashed: killing the workers")
            for c in list(self.children.values()):
                self._kill(c, signal.SIGKILL)
            raise
        finally:
            self._db.stop()
            self._restore_signals()
        log.info("supervisor-stop exit_code=%s", self.exit_code)
        return self.exit_code

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, _record)

    def _restore_signals(self) -> None:
        if self._wake_w < 0:
            return
        signal.set_wakeup_fd(-1)
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        times = [now + self._sweep_seconds]
        if not self.stopping:
            times.append(self._sweep_at)
        if self._pending_release:
            times.append(self._release_at)
        job_deadline = self._db.deadline()
        if job_deadline is not None:
            times.append(job_deadline)
        times += [c.kill_at for c in self.children.values() if c.kill_at is not None]
        if not self.stopping:
            times += [self.slots[s].spawn_at for s in self._missing_slots() if s in self.slots]
        return max(0.0, min(times) - now)

    def _sleep(self, timeout: float) -> list[int]:
        fds = [self._wake_r] + [c.sock.fileno() for c in self.children.values() if c.sock is not None]
        fds.append(self._db.fileno())
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return []
        return ready

    def _handle_signals(self) -> None:
        while True:
            try:
                data = os.read(self._wake_r, 512)
            except BlockingIOError:
                return
            for signum in data:  # Python writes each signal's number as one byte
                handler = getattr(self, f"handle_{signal_name(signum)[3:].lower()}", None)
                if handler is not None:
                    handler()

    # -- signals -------------------------------------------------------------

    def handle_chld(self) -> None:
        pass  # the loop reaps every turn

    def handle_term(self) -> None:
        self._begin_stop(graceful=True, why="SIGTERM")

    def handle_int(self) -> None:
        # A second Ctrl-C does not wait for the activities in flight.
        self._begin_stop(graceful=self.stopping is None, why="SIGINT")

    def handle_quit(self) -> None:
        self._begin_stop(graceful=False, why="SIGQUIT")

    def handle_hup(self) -> None:
        if self.stopping:
            return
        log.info("reload: starting a new generation of workers (new code); the old ones stop once it is up")
        self._roll_to(self._layout(len(self.current.layout)))

    def handle_ttin(self) -> None:
        self._resize(len(self.current.layout) + 1, "SIGTTIN")

    def handle_ttou(self) -> None:
        self._resize(len(self.current.layout) - 1, "SIGTTOU")

    def _resize(self, workers: int, why: str) -> None:
        if self.stopping:
            return
        if not 1 <= workers <= self.config.shards:
            log.warning("resize-ignored signal=%s workers=%s: a worker serves at least one of the %s shards",
                        why, len(self.current.layout), self.config.shards)
            return
        log.info("resize signal=%s workers=%s->%s", why, len(self.current.layout), workers)
        self._roll_to(self._layout(workers))

    def _roll_to(self, generation: _Generation) -> None:
        if self.stable is None:
            self.stable = self.current
        self.current = generation
        self.slots.clear()

    # -- workers -------------------------------------------------------------

    def _missing_slots(self) -> list[int]:
        have = {c.slot for c in self.children.values() if c.generation == self.current.number and not c.retiring}
        return [s for s in range(len(self.current.layout)) if s not in have]

    def _manage_workers(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self._missing_slots():
            if now >= self.slots.setdefault(slot, _Slot()).spawn_at:
                self._spawn(slot)
        current = [c for c in self.children.values() if c.generation == self.current.number and not c.retiring]
        if len(current) == len(self.current.layout) and all(c.ready for c in current):
            old = [c for c in self.children.values() if c.generation != self.current.number and not c.retiring]
            if self.stable is not None or old:
                log.info("generation-up generation=%s workers=%s: stopping %s old worker(s)",
                         self.current.number, len(current), len(old))
            self.stable = None
            for c in old:
                self._retire(c)

    def _spawn(self, slot: int) -> None:
        cfg = self.config
        spec = WorkerSpec(cfg.app, cfg.dsn, cfg.shards, self.current.layout[slot], cfg.concurrency,
                          cfg.graceful_timeout)
        try:
            pid, sock = childproc.fork_worker(spec, self.SIGNALS, self._inherited())
        except OSError as exc:  # out of processes or memory: try again later
            state = self.slots.setdefault(slot, _Slot())
            state.spawn_at = time.monotonic() + BOOT_BACKOFF_MAX_SECONDS / 10
            log.error("worker-fork-failed group=%s error=%s", spec.label, exc)
            return
        self.children[pid] = Child(pid, slot, self.current.number, spec, sock, time.monotonic())
        log.info("worker-spawn pid=%s group=%s generation=%s", pid, spec.label, self.current.number)

    def _retire(self, c: Child, sig: int = signal.SIGTERM, within: float | None = None) -> None:
        """Ask a worker to stop (SIGTERM: graceful; SIGQUIT: at once); SIGKILL it if it overstays."""
        within = self.config.graceful_timeout + KILL_MARGIN_SECONDS if within is None else within
        c.retiring = True
        deadline = time.monotonic() + within
        c.kill_at = deadline if c.kill_at is None else min(c.kill_at, deadline)
        self._kill(c, sig)

    def _kill(self, c: Child, sig: int) -> None:
        try:
            os.kill(c.pid, sig)
        except ProcessLookupError:
            pass  # already dead; reaped next

    def _murder_overdue(self) -> None:
        now = time.monotonic()
        for c in list(self.children.values()):
            if c.kill_at is not None and now >= c.kill_at:
                log.error("worker-overdue pid=%s group=%s: sending SIGKILL", c.pid, c.spec.label)
                c.kill_at = None
                self._kill(c, signal.SIGKILL)

    def _read_children(self, ready_fds: list[int]) -> None:
        for c in list(self.children.values()):
            if c.sock is None or c.sock.fileno() not in ready_fds:
                continue
            try:
                data = c.sock.recv(4096)
            except OSError:
                data = b""
            if not data:  # it closed its end (it is exiting); waitpid tells how
                c.sock.close()
                c.sock = None
                continue
            c.buffer += data
            while b"\n" in c.buffer:
                line, c.buffer = c.buffer.split(b"\n", 1)
                try:
                    c.ready = Ready.decode(line)
                except (ValueError, KeyError, TypeError):
                    log.error("worker-garbled pid=%s line=%r", c.pid, line[:200])
                    continue
                log.info("worker-ready pid=%s group=%s generation=%s owner=%s", c.pid, c.spec.label, c.generation,
                         c.ready.owner)

    def _reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no children at all
                return
            if pid == 0:
                return
            c = self.children.pop(pid, None)
            if c is not None:
                self._on_exit(c, classify(status))

    def _on_exit(self, c: Child, how: ChildExit) -> None:
        if c.sock is not None:
            c.sock.close()
        uptime = time.monotonic() - c.started
        expected = c.retiring and (how.clean or how.signal in (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL))
        level = logging.INFO if expected else logging.WARNING if how.clean else logging.ERROR
        log.log(level, "worker-exit pid=%s group=%s generation=%s %s uptime=%.1fs", c.pid, c.spec.label,
                c.generation, how.describe(), uptime)
        metrics.worker_exited(c.pid, "stopped" if c.retiring or self.stopping else
                              "killed" if how.signal is not None else "crashed")
        if c.ready is not None:
            self._pending_release.append(c.ready)
            self._release_at = 0.0
        if self.stopping or c.retiring or c.generation != self.current.number:
            return  # meant to stop, or replaced already (or being replaced)
        if how.cannot_boot:
            if self.stable is not None:  # new code that cannot boot: keep the old workers
                log.error("reload-failed generation=%s cannot boot; keeping generation %s",
                          self.current.number, self.stable.number)
                self.current, self.stable = self.stable, None
                self.slots.clear()
                return
            log.error("worker-cannot-boot group=%s: stopping the supervisor rather than respawning forever",
                      c.spec.label)
            self.exit_code = EXIT_BOOT_ERROR
            self._begin_stop(graceful=True, why="a worker cannot boot")
            return
        slot = self.slots.setdefault(c.slot, _Slot())
        crashed_early = c.ready is None or (how.code not in (None, EXIT_OK) and uptime < MIN_UPTIME_SECONDS)
        if crashed_early:
            slot.failures += 1
            delay = min(BOOT_BACKOFF_MAX_SECONDS, BOOT_BACKOFF_INITIAL_SECONDS * 2 ** (slot.failures - 1))
            slot.spawn_at = time.monotonic() + delay
            log.warning("worker-restart-backoff group=%s failures=%s delay=%.1fs", c.spec.label, slot.failures, delay)
        else:
            slot.failures = 0
            slot.spawn_at = 0.0

    def _begin_stop(self, graceful: bool, why: str) -> None:
        if self.stopping == "immediate" or (self.stopping == "graceful" and graceful):
            return
        self.stopping = "graceful" if graceful else "immediate"
        log.info("supervisor-stopping mode=%s reason=%s workers=%s", self.stopping, why, len(self.children))
        for c in list(self.children.values()):
            if graceful:
                self._retire(c, signal.SIGTERM)
            else:
                self._retire(c, signal.SIGQUIT, IMMEDIATE_KILL_SECONDS)

    # -- the database: jobs for the helper, never I/O of the loop's own ---------

    def _inherited(self) -> list[int]:
        """The descriptors a forked worker must close: the wake-up pipe, the
        other workers' sockets, the database helper's pipe and connection."""
        return ([self._wake_r, self._wake_w] + [c.sock.fileno() for c in self.children.values() if c.sock]
                + self._db.fds())

    def _check_database(self) -> bool:
        if not ready_to_start(self._db, STARTUP_DB_WAIT_SECONDS):
            return False
        self._db_ok_since = time.monotonic()
        return True

    def _database_jobs(self) -> None:
        """Send the helper its next job; give up on one past its deadline."""
        self._answered(self._db.overdue(time.monotonic()))
        self._answered(self._db.pump())

    def _read_database(self, ready_fds: list[int]) -> None:
        if self._db.fileno() in ready_fds:
            self._answered(self._db.read())

    def _answered(self, answers: list[Answer]) -> None:
        now = time.monotonic()
        for a in answers:
            if a.ok:
                self._db_ok_since = self._db_ok_since or now
            else:
                log.warning("database-unavailable during=%s error=%s", a.job.kind, a.error)
                self._db_ok_since = None
            if a.job.kind == "release":
                self._released(a)
            elif a.job.kind == "sweep":
                self._sweeping = False
                for owner, released in a.value or []:
                    log.warning("stale-worker-released owner=%s leases=%s", owner, released)
                    metrics.leases_released(released, "stale")
            elif a.job.kind == "probe":
                self._sweeping = False

    def _released(self, a: Answer) -> None:
        dead: Ready = a.job.context
        if not a.ok:  # retried while the database is away (the leases would run out anyway)
            self._pending_release.append(dead)
            self._release_at = time.monotonic() + RELEASE_RETRY_SECONDS
        elif a.value:
            log.warning("leases-released owner=%s count=%s", dead.owner, a.value)
            metrics.leases_released(a.value, "exited")

    def _release_dead(self) -> None:
        """Have the tasks leased by dead workers made due at once."""
        if not self._pending_release or time.monotonic() < self._release_at:
            return
        for dead in self._pending_release:
            self._db.submit(Job("release", (dead.owner, dead.shards), context=dead))
        self._pending_release.clear()

    def _sweep_stale(self) -> None:
        """Have the leases of workers elsewhere whose heartbeats stopped released.

        Only judged after this supervisor has itself reached the database for
        a full stale period: after an outage everyone's last beat is old."""
        now = time.monotonic()
        if self.stopping or now < self._sweep_at or self._sweeping:
            return
        self._sweep_at = now + self._sweep_seconds
        if self._db_ok_since is None:
            self._db.submit(Job("probe"))
        elif now - self._db_ok_since >= self.config.stale_seconds:
            alive = [c.ready.owner for c in self.children.values() if c.ready is not None]
            self._db.submit(Job("sweep", (self.config.stale_seconds, alive)))
        else:
            return
        self._sweeping = True

    def _drain_database(self) -> None:
        """The last workers are gone: give the releases of their leases (and
        any retried) up to DRAIN_SECONDS, then leave what is left to the
        leases' own expiry."""
        self._release_at = 0.0
        self._release_dead()
        deadline = time.monotonic() + DRAIN_SECONDS
        while len(self._db) and time.monotonic() < deadline:
            self._database_jobs()
            wait = min(deadline, self._db.deadline() or deadline) - time.monotonic()
            ready, _, _ = select.select([self._db.fileno()], [], [], max(0.0, wait))
            self._read_database(ready)
            if self._pending_release:  # a release failed: no more retries now
                break
        unanswered = ([self._db.in_flight] if self._db.in_flight else []) + self._db.queue
        for dead in self._pending_release + [j.context for j in unanswered if j.kind == "release"]:
            log.warning("leases-not-released owner=%s: they are due again when they run out", dead.owner)


def _record(signum: int, frame: object) -> None:
    """Nothing to do: Python has written the signal number to the wake-up pipe."""
