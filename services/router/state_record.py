"""Reading the run snapshot out of a router-state changelog record, fast (the restore's per-record cost).

A restore reads every record of its partitions, so the Avro decode of the ``RouterState``
envelope is paid per run: fastavro's generic reader (a ``BytesIO`` and a schema walk) costs
about twice what the common case needs (``tests/unit/router/test_state_record.py``;
``python -m benchmarks.router_restore``). :func:`snapshot_of` reads the current schema's layout —
``run_id``, ``tenant``, ``snapshot_json`` (strings), ``updated_at`` (long) — by hand when the run id
and tenant are ASCII and shorter than 64 bytes (every run id the engine makes, and tenant ids),
and returns the snapshot's UTF-8 bytes without making a ``str`` of them (orjson reads bytes).
Anything else — another schema id, a schema whose fields are not exactly that layout, longer or
non-ASCII ids, a body that does not end where the layout says — goes through
:func:`services.contracts.records.decode_router_state`, which also gives errors their usual words.
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


def snapshot_of(value: bytes) -> bytes | str:
    """The ``snapshot_json`` of a ``RouterState`` record (raises what :func:`decode_router_state`
    raises for a record it refuses)."""
    if _HEADER is not None and value.startswith(_HEADER):
        try:
            # run_id and tenant: lengths below 64 are one even byte (zigzag); not kept (the key
            # names the run), but they must be UTF-8 as for fastavro (ASCII is, and cheaper to tell).
            size = value[_START]
            tenant_at = _START + 1 + (size >> 1)
            tenant_size = value[tenant_at]
            start = tenant_at + 1 + (tenant_size >> 1)
            if size & 0x81 or tenant_size & 0x81 or not value[_START:start].isascii():
                raise ValueError("not the common layout")
            size, start = _varint(value, start)
            end = start + size
            _, last = _varint(value, end)  # updated_at; IndexError if the string ran past the end
            if size >= 0 and last == len(value):
                return value[start:end]
        except (IndexError, ValueError):
            pass  # not the layout after all, or a rarer one: the full decoder reads it
    return decode_router_state(value)["snapshot_json"]
