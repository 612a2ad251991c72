"""Parked workflows (flows.continuation): each holds a thread, started on a
small stack whatever other threads do meanwhile, and counted in the memory
budget of the workflows a worker keeps."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from flows import codec, context
from flows.continuation import PARKED_STACK_BYTES, Memory, Parked, ReplayCache
from flows.definitions import WorkflowDefinition

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.pthread_self.restype = ctypes.c_ulong
_libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
_libc.pthread_attr_getstack.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                        ctypes.POINTER(ctypes.c_size_t)]
_libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]


def this_threads_stack_bytes() -> int:
    attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on x86-64 glibc
    assert _libc.pthread_getattr_np(_libc.pthread_self(), attr) == 0
    address, size = ctypes.c_void_p(), ctypes.c_size_t()
    _libc.pthread_attr_getstack(attr, ctypes.byref(address), ctypes.byref(size))
    _libc.pthread_attr_destroy(attr)
    return size.value


class _NoBudget:
    seconds = 0.0

    def arm(self) -> None:
        pass

    def disarm(self) -> None:
        pass


seen_stacks: list[int] = []


def _probe(ctx: context.WorkflowContext, inp: Any) -> Any:
    seen_stacks.append(this_threads_stack_bytes())
    return ctx.wait_for_signal("never")  # parks here


PROBE = WorkflowDefinition("stack-probe", _probe, 1, Any, Any)


def _parked() -> Parked:
    ctx = context.new_context(workflow_id=uuid.uuid4(), workflow_name="stack-probe-shard-0", tenant_id=uuid.uuid4(),
                              events=[], signals=[], db_now=datetime.now(UTC))
    return Parked(PROBE, ctx, codec.encode(None, "input"), _NoBudget())


def test_parked_workflows_get_their_small_stack_when_started_from_many_threads_at_once() -> None:
    seen_stacks.clear()
    parked: list[Parked] = []
    lock = threading.Lock()

    def park_some() -> None:
        for _ in range(20):
            p = _parked()
            assert p.start().status == "running"
            with lock:
                parked.append(p)

    starters = [threading.Thread(target=park_some) for _ in range(4)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(30)
    try:
        assert len(seen_stacks) == 80
        assert set(seen_stacks) == {PARKED_STACK_BYTES}
        assert threading.stack_size() == 0  # the process's default is left as it was
        other: list[int] = []
        t = threading.Thread(target=lambda: other.append(this_threads_stack_bytes()))
        t.start()
        t.join()
        assert other[0] > PARKED_STACK_BYTES  # a thread started afterwards has the default stack
    finally:
        for p in parked:
            p.abandon()


def test_the_memory_budget_counts_each_parked_thread() -> None:
    cache = ReplayCache(max_bytes=10 * PARKED_STACK_BYTES, max_entries=1000)
    parked = []
    for i in range(25):
        p = _parked()
        p.start()
        parked.append(p)
        cache.put(("stack-probe-shard-0", i), Memory((datetime.now(UTC), i), 0, parked=p, size=100))
    assert len(cache) < 10  # history bytes alone (2.5 KB) would have kept all 25
    alive = sum(p.alive for p in parked)
    assert alive == len(cache)  # those the budget pushed out have ended their threads
    cache.clear()
