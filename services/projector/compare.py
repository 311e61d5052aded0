"""Compare two copies of the projection (live schema vs a rebuilt schema), table by table, in SQL.

Each row is reduced to ``md5(jsonb_build_array(<compared columns>)::text)``; per table and side
the report gives the row count and an order-independent checksum (the sum of the first 64 bits of
the row hashes), and when they differ, counts and a sample of primary keys of rows only live, only
rebuilt, or different — all computed by PostgreSQL (a full outer join between the two schemas of
the same database), so nothing big is loaded into Python.

What is compared, and why (see also :mod:`.rebuild`):

- ``runs``, ``steps``, ``attempts``, ``run_events``, ``control_commands``, ``dead_letters``: every
  column. They are functions of the log alone: timestamps such as ``runs.updated_at`` are event
  times, not server clocks, and ``kafka_*`` coordinates are where a record was *first* read, which
  both sides read in the same per-partition order (read_committed, duplicates keep the first).
- ``projector_rejects``: every column except ``consumer`` (the consumer name differs by design)
  and ``rejected_at`` (the server's clock at write time).
- Not compared: ``consumer_offsets`` (positions, not history; they gate the comparison instead)
  and ``tenants`` (mirrored from the tenants registry, not from these topics).

Scope: only rows that follow from records below the captured end offsets. Rows keyed by
coordinates (events, dead letters, control decisions, rejects) must lie below those ends; rows of
a run (``runs``, ``steps``, ``attempts``, ``run_events``) are skipped for every run with a live
event at or beyond them (that run moved on after the capture; ``skipped_runs`` counts them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.sql.elements import ColumnElement

from services.projector.models import Base
from services.projector.writer import PartitionKey

RUN_SCOPED = ("runs", "steps", "attempts", "run_events")
COMPARED_TABLES = (*RUN_SCOPED, "control_commands", "dead_letters", "projector_rejects")
EXCLUDED_COLUMNS: dict[str, frozenset[str]] = {"projector_rejects": frozenset({"consumer", "rejected_at"})}
KAFKA_COORDINATES = ("kafka_topic", "kafka_partition", "kafka_offset")
COORDINATES: dict[str, tuple[str, str, str]] = {
    "run_events": KAFKA_COORDINATES,
    "control_commands": KAFKA_COORDINATES,
    "dead_letters": KAFKA_COORDINATES,
    "projector_rejects": ("topic", "partition", "offset"),
}


@dataclass(frozen=True)
class TableSpec:
    """A compared table: its primary key, compared columns, and how it is scoped."""

    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    coordinates: tuple[str, str, str] | None
    run_scoped: bool


def table_specs() -> list[TableSpec]:
    """The compared tables, from the models (so a new column is compared without a change here)."""
    specs = []
    for name in COMPARED_TABLES:
        table = Base.metadata.tables[name]
        excluded = EXCLUDED_COLUMNS.get(name, frozenset())
        specs.append(
            TableSpec(
                name=name,
                key=tuple(c.name for c in table.primary_key.columns),
                columns=tuple(c.name for c in table.columns if c.name not in excluded),
                coordinates=COORDINATES.get(name),
                run_scoped=name in RUN_SCOPED,
            )
        )
    return specs


@dataclass
class TableDiff:
    """One table compared: counts, checksums and (when different) what differs."""

    table: str
    live_rows: int
    rebuilt_rows: int
    live_checksum: str
    rebuilt_checksum: str
    only_live: int = 0
    only_rebuilt: int = 0
    different: int = 0
    samples: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.live_rows == self.rebuilt_rows and self.live_checksum == self.rebuilt_checksum

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "equal": self.equal,
            "live_rows": self.live_rows,
            "rebuilt_rows": self.rebuilt_rows,
            "live_checksum": self.live_checksum,
            "rebuilt_checksum": self.rebuilt_checksum,
            "only_live": self.only_live,
            "only_rebuilt": self.only_rebuilt,
            "different": self.different,
            "samples": [{"kind": kind, "key": key} for kind, key in self.samples],
        }


@dataclass
class AuditReport:
    """The comparison of every compared table."""

    tables: list[TableDiff]
    skipped_runs: int

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "skipped_runs": self.skipped_runs,
            "tables": [t.as_dict() for t in self.tables],
        }


def _within(
    table: sa.TableClause, coordinates: tuple[str, str, str], ends: dict[PartitionKey, int]
) -> ColumnElement[bool]:
    topic, partition, offset = (table.c[c] for c in coordinates)
    clauses = [sa.and_(topic == t, partition == p, offset < end) for (t, p), end in sorted(ends.items())]
    return sa.or_(*clauses) if clauses else sa.false()


def _touched_runs(live_schema: str, ends: dict[PartitionKey, int]) -> sa.Select[Any]:
    """Run ids with a live event at or beyond the captured ends (or on an uncaptured partition)."""
    events = sa.table(
        "run_events", *(sa.column(c) for c in ("run_id", *KAFKA_COORDINATES)), schema=live_schema
    )
    return sa.select(events.c.run_id).where(sa.not_(_within(events, KAFKA_COORDINATES, ends))).distinct()


def _side(spec: TableSpec, schema: str, live_schema: str, ends: dict[PartitionKey, int]) -> sa.Subquery:
    columns = tuple(dict.fromkeys((*spec.key, *spec.columns, *(spec.coordinates or ()))))
    if spec.run_scoped:
        columns = tuple(dict.fromkeys((*columns, "run_id")))
    table = sa.table(spec.name, *(sa.column(c) for c in columns), schema=schema)
    conditions: list[ColumnElement[bool]] = []
    if spec.coordinates is not None:
        conditions.append(_within(table, spec.coordinates, ends))
    if spec.run_scoped:
        conditions.append(table.c.run_id.not_in(_touched_runs(live_schema, ends)))
    row_hash = sa.func.md5(sa.cast(sa.func.jsonb_build_array(*(table.c[c] for c in spec.columns)), sa.Text))
    return (
        sa.select(*(table.c[k].label(k) for k in spec.key), row_hash.label("h")).where(*conditions).subquery()
    )


def _summary(conn: sa.Connection, side: sa.Subquery) -> tuple[int, str]:
    prefix = sa.cast(sa.cast(sa.func.concat("x", sa.func.substr(side.c.h, 1, 16)), BIT(64)), sa.BigInteger)
    total = sa.func.coalesce(sa.func.sum(sa.cast(prefix, sa.Numeric)), 0)
    count, checksum = conn.execute(sa.select(sa.func.count(), total).select_from(side)).one()
    return int(count), f"{int(checksum) % (1 << 64):016x}"


def compare_table(
    conn: sa.Connection,
    spec: TableSpec,
    live_schema: str,
    rebuilt_schema: str,
    ends: dict[PartitionKey, int],
    sample: int = 10,
) -> TableDiff:
    """Compare one table between the two schemas (rows in scope only)."""
    live = _side(spec, live_schema, live_schema, ends)
    rebuilt = _side(spec, rebuilt_schema, live_schema, ends)
    live_rows, live_sum = _summary(conn, live)
    rebuilt_rows, rebuilt_sum = _summary(conn, rebuilt)
    diff = TableDiff(spec.name, live_rows, rebuilt_rows, live_sum, rebuilt_sum)
    if diff.equal:
        return diff
    first = spec.key[0]
    kind = sa.case(
        (rebuilt.c[first].is_(None), "only_live"),
        (live.c[first].is_(None), "only_rebuilt"),
        else_="different",
    ).label("kind")
    joined = live.join(rebuilt, sa.and_(*(live.c[k] == rebuilt.c[k] for k in spec.key)), full=True)
    keys = [sa.func.coalesce(live.c[k], rebuilt.c[k]).label(k) for k in spec.key]
    differing = sa.select(kind, *keys).select_from(joined).where(live.c.h.is_distinct_from(rebuilt.c.h))
    found = differing.subquery()
    counts: dict[str, int] = {
        str(kind): int(n)
        for kind, n in conn.execute(sa.select(found.c.kind, sa.func.count()).group_by(found.c.kind))
    }
    diff.only_live = int(counts.get("only_live", 0))
    diff.only_rebuilt = int(counts.get("only_rebuilt", 0))
    diff.different = int(counts.get("different", 0))
    rows = conn.execute(
        sa.select(found).order_by(found.c.kind, *(found.c[k] for k in spec.key)).limit(sample)
    )
    diff.samples = [(row.kind, {k: row._mapping[k] for k in spec.key}) for row in rows]
    return diff


def compare_schemas(
    engine: sa.Engine,
    live_schema: str,
    rebuilt_schema: str,
    ends: dict[PartitionKey, int],
    sample: int = 10,
) -> AuditReport:
    """Compare every table of :func:`table_specs` between ``live_schema`` and ``rebuilt_schema``."""
    with engine.connect() as conn:
        skipped = conn.execute(
            sa.select(sa.func.count()).select_from(_touched_runs(live_schema, ends).subquery())
        ).scalar_one()
        tables = [
            compare_table(conn, spec, live_schema, rebuilt_schema, ends, sample) for spec in table_specs()
        ]
    return AuditReport(tables, int(skipped))


def current_schema(engine: sa.Engine) -> str:
    """The schema unqualified names resolve to on ``engine`` (where the live projection is)."""
    with engine.connect() as conn:
        return str(conn.execute(sa.text("select current_schema()")).scalar_one())
