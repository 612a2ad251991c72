import random
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from flows import sharding


def test_shard_of_an_id_is_the_same_in_another_process() -> None:
    ids = [str(uuid.UUID(int=i * 7919)) for i in range(50)]
    here = [sharding.shard_index(i, 3) for i in ids]
    code = "import sys; from flows import sharding; print([sharding.shard_index(i, 3) for i in sys.argv[1:]])"
    there = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=sharding.__file__.rsplit("/flows/", 1)[0])
    assert there.stdout.strip() == str(here)


@pytest.mark.parametrize("shards", [3, 5, 10])
def test_each_shard_owns_its_share_of_the_ring_within_five_percent(shards: int) -> None:
    shares = sharding.ring(shards).arc_shares()
    assert max(abs(share * shards - 1) for share in shares) <= 0.05, shares


@pytest.mark.parametrize("shards", [3, 5, 10])
def test_ten_thousand_ids_spread_within_fifteen_percent_of_the_mean(shards: int) -> None:
    seeded = random.Random(shards)  # fixed ids: the spread is a property of the ring, not of luck
    counts = Counter(sharding.shard_index(uuid.UUID(int=seeded.getrandbits(128), version=4), shards)
                     for _ in range(10_000))
    mean = 10_000 / shards
    assert set(counts) == set(range(shards))
    assert max(abs(n - mean) / mean for n in counts.values()) <= 0.15, counts


def test_adding_a_shard_moves_about_one_in_n_ids() -> None:
    ids = [uuid.uuid4() for _ in range(5_000)]
    moved = sum(sharding.shard_index(i, 3) != sharding.shard_index(i, 4) for i in ids)
    assert moved / len(ids) < 0.35  # a modulo hash would move ~75%


def test_names_and_channels() -> None:
    assert sharding.shard_name("loan-application", 1) == "loan-application-shard-1"
    assert sharding.base_name("loan-application-shard-1") == "loan-application"
    assert sharding.all_shard_names("x", 2) == ["x-shard-0", "x-shard-1"]
    long = sharding.channel("w" * 100 + "-shard-1")
    assert len(long.encode()) <= 63 and long != sharding.channel("w" * 100 + "-shard-2")
    assert sharding.channel("a-shard-0") != sharding.channel("a-shard-0", "flows-done")


def test_split_groups_covers_every_shard_once() -> None:
    assert sharding.split_groups([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert sharding.split_groups([0, 1], 8) == [[0], [1]]


def test_split_sharded_tells_a_sharded_name_from_a_base_name() -> None:
    assert sharding.split_sharded("loan-application-shard-12") == ("loan-application", 12)
    assert sharding.split_sharded("loan-application") == ("loan-application", None)
    assert sharding.split_sharded("x-shard-") == ("x-shard-", None)
    assert sharding.split_sharded("-shard-1") == ("-shard-1", None)
    assert sharding.split_sharded("x-shard-a") == ("x-shard-a", None)
