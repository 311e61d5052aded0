"""Reading the run snapshot out of a router-state changelog record, fast (the restore's per-record cost).

A restore reads every record of its partitions, so the Avro decode of the ``RouterState``
envelope is paid per run: fastavro's generic reader costs several times what the four fields
need. :func:`snapshot_of` reads the current schema's layout — ``run_id``, ``tenant``,
``snapshot_json`` (strings), ``updated_at`` (long) — by hand and returns the snapshot's UTF-8
bytes without making a ``str`` of it (orjson reads bytes). Anything else — another schema id, a
schema whose fields are not exactly that layout, a body that does not parse to the last byte —
goes through :func:`services.contracts.records.decode_router_state`, which also gives the
errors their usual words.
"""

from __future__ import annotations

from services.contracts import serde
from services.contracts.catalog import catalog
from services.contracts.records import decode_router_state

#: The ``RouterState`` layout the fast path reads (name, Avro type), in order.
LAYOUT = [("run_id", "string"), ("tenant", "string"), ("snapshot_json", "string"), ("updated_at", "long")]


def _fast_header() -> bytes | None:
    """The framing header of the current ``RouterState`` schema, if its fields are :data:`LAYOUT`."""
    current = catalog().current["RouterState"]
    fields = [(f.get("name"), f.get("type")) for f in current.raw.get("fields", [])]
    if fields != LAYOUT:
        return None
    return serde._HEADER.pack(serde.MAGIC, current.schema_id)


_HEADER = _fast_header()
_START = serde._HEADER.size


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro (zigzag) long at ``pos``: its value and the position after it (IndexError past the end)."""
    byte = data[pos]
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift > 63:
            raise ValueError("varint longer than 64 bits")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _string(data: bytes, pos: int) -> tuple[int, int]:
    """Where the Avro string at ``pos`` starts and ends (ValueError, IndexError: it does not fit)."""
    byte = data[pos]
    if byte < 0x80:  # a length below 64 (run ids, tenants): one byte, even (zigzag of a positive)
        if byte & 1:
            raise ValueError("negative string length")
        return pos + 1, pos + 1 + (byte >> 1)
    size, start = _varint(data, pos)
    if size < 0:
        raise ValueError("negative string length")
    return start, start + size


def snapshot_of(value: bytes) -> bytes | str:
    """The ``snapshot_json`` of a ``RouterState`` record (raises what :func:`decode_router_state`
    raises for a record it refuses)."""
    if _HEADER is not None and value.startswith(_HEADER):
        try:
            # run_id, tenant: not kept (the key names the run), but UTF-8 as fastavro requires
            # (UnicodeDecodeError is a ValueError); ASCII is UTF-8 and cheaper to tell.
            start, end = _string(value, _START)
            run_id = value[start:end]
            start, end = _string(value, end)
            tenant = value[start:end]
            if not (run_id.isascii() and tenant.isascii()):
                run_id.decode()
                tenant.decode()
            start, end = _string(value, end)
            _, last = _varint(value, end)  # updated_at; IndexError if a string ran past the end
            if last == len(value):
                return value[start:end]
        except (IndexError, ValueError):
            pass  # not the layout after all: the full decoder says why
    return decode_router_state(value)["snapshot_json"]
