"""A fixed set of threads running calls from a queue.

What ``ThreadPoolExecutor.submit`` does for the worker's activity slots and
replay threads, without the Future, the semaphore and the condition it makes
for every call: their locks were a tenth of a worker's CPU per step.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("flows.worker")

# threading.stack_size is process-wide and read when a thread *starts*: the
# threads flows starts with a stack of their own size set it, start, and
# restore it under this lock, so they never see each other's size.
_STACK_SIZE_LOCK = threading.Lock()


def start_thread(target: Callable[[], Any], name: str, stack_bytes: int = 0) -> threading.Thread:
    """Start a daemon thread running ``target``, with a stack of
    ``stack_bytes`` (0: the process's default)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    if not stack_bytes:
        thread.start()
        return thread
    with _STACK_SIZE_LOCK:
        old = threading.stack_size(stack_bytes)
        try:
            thread.start()
        finally:
            threading.stack_size(old)
    return thread


class Threads:
    """``count`` daemon threads named ``name-N``, started at once, each
    running submitted calls one after the other; an exception a call
    raises is logged (the callers here catch their own)."""

    def __init__(self, count: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on one of the threads; RuntimeError once shut down."""
        if self._closed:
            raise RuntimeError("threads shut down")
        self._queue.put((fn, args))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a thread of the pool never dies of a call
                log.exception("thread-call-failed fn=%s", getattr(fn, "__qualname__", fn))

    def shutdown(self, wait: bool) -> None:
        """Take no more calls, drop those not started, and end the threads
        once their current call returns (waiting for that with ``wait``)."""
        self._closed = True
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
