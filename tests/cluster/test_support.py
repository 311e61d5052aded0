"""The coordinator placement rule of tests/cluster/support.py, against values Java computes (no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.cluster.support import coordinator_partition, java_hash


def test_java_hash_matches_string_hashcode() -> None:
    assert java_hash("") == 0
    assert java_hash("hello") == 99162322
    assert java_hash("Aa") == java_hash("BB") == 2112
    assert java_hash("\u00e9") == 233
    assert java_hash("\U0001f600") == 0xD83D * 31 + 0xDE00  # a surrogate pair: two code units
    assert java_hash("polygenelubricants") == -(1 << 31)  # Integer.MIN_VALUE


def test_min_value_hash_lands_on_partition_zero() -> None:
    assert coordinator_partition("polygenelubricants", 10) == 0  # Utils.abs(MIN_VALUE) is 0


@given(st.text(max_size=40), st.integers(min_value=1, max_value=200))
def test_partition_in_range_and_stable(key: str, partitions: int) -> None:
    first = coordinator_partition(key, partitions)
    assert 0 <= first < partitions
    assert coordinator_partition(key, partitions) == first
    assert -(1 << 31) <= java_hash(key) < 1 << 31
