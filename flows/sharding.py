"""Shard choice: a consistent-hash ring with virtual nodes over workflow ids.

The hash is blake2b, never Python's ``hash()``, which differs per process.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from functools import lru_cache

DEFAULT_SHARDS = 3
VIRTUAL_NODES_PER_SHARD = 4096  # arcs within ~3% of even for up to 10 shards
_CHANNEL_MAX_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class Ring:
    """Maps a key to one of ``shards`` buckets; adding a shard moves ~1/n keys."""

    def __init__(self, shards: int, vnodes: int = VIRTUAL_NODES_PER_SHARD) -> None:
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self.shards = shards
        pairs = sorted((_point(f"shard-{k}#{v}"), k) for k in range(shards) for v in range(vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [k for _, k in pairs]

    def arc_shares(self) -> list[float]:
        """The fraction of the hash space each shard owns (1/shards when even)."""
        shares = [0.0] * self.shards
        previous = self._points[-1] - 2**64
        for point, owner in zip(self._points, self._owners):
            shares[owner] += (point - previous) / 2**64
            previous = point
        return shares

    def shard_of(self, key: str) -> int:
        i = bisect.bisect(self._points, _point(key)) % len(self._points)
        return self._owners[i]


@lru_cache(maxsize=16)
def ring(shards: int) -> Ring:
    return Ring(shards)


def shard_index(workflow_id: object, shards: int) -> int:
    return ring(shards).shard_of(str(workflow_id))


def shard_name(base: str, index: int) -> str:
    return f"{base}-shard-{index}"


def sharded_name(base: str, workflow_id: object, shards: int) -> str:
    return shard_name(base, shard_index(workflow_id, shards))


def all_shard_names(base: str, shards: int) -> list[str]:
    return [shard_name(base, k) for k in range(shards)]


def base_name(sharded: str) -> str:
    return sharded.rsplit("-shard-", 1)[0]


def split_sharded(name: str) -> tuple[str, int | None]:
    """``("order", 2)`` for ``order-shard-2``; ``(name, None)`` for a base
    name (definitions may not contain ``-shard-``, so the two never clash)."""
    base, sep, index = name.rpartition("-shard-")
    if sep and base and index.isdigit():
        return base, int(index)
    return name, None


def channel(shard: str, kind: str = "flows") -> str:
    """The LISTEN/NOTIFY channel of one shard: ``flows`` wakes its workers,
    ``flows-done`` announces workflows that ended (for ``Engine.result``)."""
    name = f"{kind}:{shard}"
    if len(name.encode()) > _CHANNEL_MAX_BYTES:
        name = f"{kind}:{shard.encode()[:40].decode(errors='ignore')}:{zlib.crc32(shard.encode()):08x}"
    return name


def split_groups(items: list[int], groups: int) -> list[list[int]]:
    """Split shard indices into ``groups`` near-equal, non-empty groups."""
    groups = max(1, min(groups, len(items)))
    return [items[g::groups] for g in range(groups)]
