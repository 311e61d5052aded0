"""Reading a response body with a hard cap on what is held in memory, compressed bodies included.

httpx decodes ``gzip``/``deflate`` a network chunk at a time, and one 64 KiB chunk of a gzip bomb
inflates to some 64 MiB at once, whatever the reader does with it afterwards. Here the raw bytes
are inflated with ``zlib``'s ``max_length``, so no step produces more than the room left under
the cap. One content coding is decoded (``gzip``, ``x-gzip``, ``deflate``; ``identity`` and codings
we do not know pass through as they are, as httpx does); stacked codings are refused.
"""

from __future__ import annotations

import zlib

import httpx

#: What ``http.request`` offers to decode (httpx would offer brotli/zstd when they are installed).
ACCEPT_ENCODING = "gzip, deflate"


class UnsupportedEncoding(Exception):
    """The response stacks several content codings."""


class _Passthrough:
    def decode(self, data: bytes, room: int) -> bytes:
        return data

    def flush(self, room: int) -> bytes:
        return b""


class _Inflate:
    """Bounded ``zlib`` inflation; gzip members that follow one another are decoded in turn, and a
    ``deflate`` body may be zlib-wrapped or raw (servers send both)."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._members = bool(wbits & 16)  # gzip
        self._raw_fallback = not self._members
        self._started = False
        self._z = zlib.decompressobj(wbits)

    def decode(self, data: bytes, room: int) -> bytes:
        try:
            out = self._z.decompress(data, max(room, 1))
        except zlib.error:
            if not (self._raw_fallback and not self._started):
                raise
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header
            out = self._z.decompress(data, max(room, 1))
        self._started = True
        # Short of the room means the input was used up; a gzip member that ended leaves the next.
        while self._members and self._z.eof and self._z.unused_data and len(out) < room:
            rest = self._z.unused_data
            self._z = zlib.decompressobj(self._wbits)
            out += self._z.decompress(rest, room - len(out))
        return out

    def flush(self, room: int) -> bytes:
        return self._z.flush(max(room, 1))[: max(room, 1)]


def _decoder(response: httpx.Response) -> _Passthrough | _Inflate:
    codings = [
        c.strip().lower() for c in response.headers.get("content-encoding", "").split(",") if c.strip()
    ]
    codings = [c for c in codings if c != "identity"]
    if len(codings) > 1:
        raise UnsupportedEncoding(f"stacked content codings are not decoded: {', '.join(codings)}")
    if codings and codings[0] in ("gzip", "x-gzip"):
        return _Inflate(zlib.MAX_WBITS | 16)
    if codings and codings[0] == "deflate":
        return _Inflate(zlib.MAX_WBITS)
    return _Passthrough()


async def read_bounded(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """(body, complete): the decoded body, at most ``limit`` bytes; ``complete`` is False when it
    was longer (reading stops there: what was read is enough for an error message)."""
    if response.is_stream_consumed:  # built in memory (httpx.Response(content=...)): decoded already
        held = response.content
        return held[:limit], len(held) <= limit
    decoder = _decoder(response)
    body = bytearray()
    try:
        async for raw in response.aiter_raw():
            body += decoder.decode(raw, limit + 1 - len(body))
            if len(body) > limit:
                return bytes(body[:limit]), False
        body += decoder.flush(limit + 1 - len(body))
    except zlib.error as exc:
        coding = response.headers.get("content-encoding")
        raise httpx.DecodingError(f"the response body is not valid {coding}: {exc}") from exc
    if len(body) > limit:
        return bytes(body[:limit]), False
    return bytes(body), True
