"""A worker process: ``fork()``, its hygiene, and what runs until ``os._exit()``.

The child imports the app itself, after the fork, so that a worker started
after a deploy (SIGHUP) runs the new code. It tells the supervisor it has
booted with one line on a socket pair, naming its lease owner and shards:
the supervisor releases exactly those leases if the child dies. The child
watches the same socket: end-of-file means the supervisor is gone, and a
worker must not run on unsupervised.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import random
import signal
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from flows.supervisor import logs
from flows.supervisor.exits import EXIT_BOOT_ERROR, EXIT_ERROR, EXIT_OK

log = logging.getLogger("supervisor.child")

# The supervisor's own controls: a worker ignores them, so a signal sent to
# the whole process group (a terminal's hangup, `kill -HUP -PGID`) does not
# take the fleet down. SIGTERM/SIGINT/SIGQUIT are the worker's own (Worker.run).
SUPERVISOR_ONLY = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs."""

    app: str
    dsn: str
    shards: int  # the shard count
    group: tuple[int, ...]  # the shard indices this worker serves
    concurrency: int
    graceful_timeout: float

    @property
    def label(self) -> str:
        return ",".join(map(str, self.group))


@dataclass(frozen=True)
class Ready:
    """A booted worker's announcement."""

    owner: str
    shards: list[str]

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "shards": self.shards}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Ready:
        data: Any = json.loads(line)
        return cls(str(data["owner"]), [str(s) for s in data["shards"]])


def fork_worker(spec: WorkerSpec, handled: Iterable[signal.Signals], close_in_child: Iterable[int]) -> tuple[int, socket.socket]:
    """Fork a worker; return its pid and the supervisor's end of its socket.

    Handled signals are blocked across the fork, so none reaches the child
    before its handlers are reset; the child never returns from here."""
    ours, theirs = socket.socketpair()
    master_pid = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(handled))
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        ours.close()
        theirs.close()
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        theirs.close()
        return pid, ours

    code = EXIT_ERROR
    try:
        ours.close()
        for fd in close_in_child:  # the supervisor's pipe and its other children's sockets
            try:
                os.close(fd)
            except OSError:
                pass
        signal.set_wakeup_fd(-1)
        for sig in handled:
            signal.signal(sig, signal.SIG_DFL)
        for sig in SUPERVISOR_ONLY:
            signal.signal(sig, signal.SIG_IGN)
        _die_with(master_pid)
        random.seed()  # never share the parent's random sequence (retry jitter)
        logs.set_role(f"group={spec.label}")
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        code = _serve(spec, theirs)
    except BaseException:  # noqa: BLE001 - report, then leave without unwinding into the supervisor
        log.exception("worker-crashed group=%s", spec.label)
        code = EXIT_ERROR
    finally:
        logs.flush()
        os._exit(code)


def _die_with(master_pid: int) -> None:
    """On Linux, have the kernel send us SIGTERM (graceful) when the
    supervisor dies, even while the loop is too busy to look at the socket."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the socket's end-of-file does it
        return
    if os.getppid() != master_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _serve(spec: WorkerSpec, sock: socket.socket) -> int:
    from flows.engine import Engine
    from flows.worker import Worker

    try:
        with logs.unless_app_configures():
            importlib.import_module(spec.app)
        engine = Engine(spec.dsn, shards=spec.shards)
        worker = Worker(
            engine, shards=spec.group, concurrency=spec.concurrency, graceful_timeout=spec.graceful_timeout,
            watch_fd=sock.fileno(),
        )
    except Exception as exc:  # noqa: BLE001 - whatever stops the app loading, it will not load next time
        log.error("worker-boot-failed app=%s error=%s: %s", spec.app, type(exc).__name__, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        return EXIT_BOOT_ERROR
    try:
        sock.sendall(Ready(worker.owner, worker.shards).encode())
    except OSError:  # the supervisor is gone: the worker notices at once and stops
        pass
    worker.run()
    return EXIT_OK
