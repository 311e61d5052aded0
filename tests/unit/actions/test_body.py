"""Bounded body reading (services.actions.body): a compressed body never inflates past the cap."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.actions.body import UnsupportedEncoding, read_bounded

LIMIT = 512 * 1024


class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def split(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def read(
    data: bytes, coding: str | None, limit: int = LIMIT, size: int = 65536
) -> tuple[bytes, bool, Chunks]:
    stream = Chunks(split(data, size))
    headers = {"content-encoding": coding} if coding else {}
    response = httpx.Response(200, headers=headers, stream=stream)
    body, complete = asyncio.run(read_bounded(response, limit))
    return body, complete, stream


def bomb(mebibytes: int) -> bytes:
    zeros = b"\0" * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    return first + block * (mebibytes - 1)


def test_a_gzip_bomb_stops_at_the_cap_without_inflating_further() -> None:
    data = bomb(256)  # 256 MiB inflated, ~256 KiB on the wire
    tracemalloc.start()
    try:
        body, complete, stream = read(data, "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(body), complete) == (LIMIT, False)
    assert body == b"\0" * LIMIT
    assert stream.pulled == 1  # the first 64 KiB already hold more than the cap
    assert peak < 8 * 2**20, f"peak {peak} bytes"  # httpx's own decoder makes ~64 MiB at once here


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "GZIP", "identity, gzip"])
def test_gzip_bodies_are_decoded(coding: str) -> None:
    data = b"hello " * 1000
    assert read(gzip.compress(data), coding)[:2] == (data, True)


def test_gzip_members_one_after_another_are_decoded() -> None:
    assert read(gzip.compress(b"one ") + gzip.compress(b"two"), "gzip", size=7)[:2] == (b"one two", True)


def test_deflate_bodies_zlib_wrapped_or_raw() -> None:
    data = b"deflated " * 500
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert read(zlib.compress(data), "deflate")[:2] == (data, True)
    assert read(raw.compress(data) + raw.flush(), "deflate")[:2] == (data, True)


@pytest.mark.parametrize("coding", [None, "identity", "br", "compress"])
def test_other_codings_pass_through(coding: str | None) -> None:
    assert read(b"as sent", coding)[:2] == (b"as sent", True)


def test_a_plain_body_over_the_cap_stops_reading() -> None:
    body, complete, stream = read(b"x" * (LIMIT * 4), None)
    assert (len(body), complete, stream.pulled) == (LIMIT, False, LIMIT // 65536 + 1)


def test_stacked_codings_are_refused() -> None:
    with pytest.raises(UnsupportedEncoding):
        read(gzip.compress(gzip.compress(b"x")), "gzip, gzip")


def test_a_corrupt_body_is_a_decoding_error() -> None:
    with pytest.raises(httpx.DecodingError):
        read(b"\x1f\x8bnot gzip at all", "gzip")


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=3000), st.integers(1, 2500), st.integers(1, 700), st.sampled_from(["gzip", "deflate"])
)
def test_any_body_reads_as_its_first_limit_bytes(data: bytes, limit: int, size: int, coding: str) -> None:
    encoded = gzip.compress(data) if coding == "gzip" else zlib.compress(data)
    body, complete, _ = read(encoded, coding, limit=limit, size=size)
    assert body == data[:limit]
    assert complete == (len(data) <= limit)


def test_a_response_built_in_memory_is_read_as_it_is() -> None:
    """httpx.Response(content=...) (mock transports) holds its body already."""
    assert asyncio.run(read_bounded(httpx.Response(503, content=b"e" * 10), 4)) == (b"eeee", False)
    assert asyncio.run(read_bounded(httpx.Response(200, content=b"ok"), 4)) == (b"ok", True)
