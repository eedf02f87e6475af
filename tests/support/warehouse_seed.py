"""Raw tables seeded directly, for tests of what comes after ingestion (evaluation, guards)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta

from nudge.core.warehouse import Warehouse
from nudge.ingest.schema import DDL as RAW_DDL


def seed_events(wh: Warehouse, start: datetime, stop: datetime, every_hours: float = 6) -> None:
    with wh.transaction():
        for stmt in RAW_DDL:
            wh.execute(stmt)
    rows, t, i = [], start, 0
    while t < stop:
        rows.append((f"e{uuid.uuid4().hex}", t, "u1", "f.jsonl", i, t))
        t += timedelta(hours=every_hours)
        i += 1
    with wh.transaction():  # one multi-row insert: much faster than executemany on DuckDB
        wh.execute(
            "insert into raw.events (event_key, request_time, user_id, source_file, source_line, "
            f"ingested_at) values {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(rows))}",
            [v for row in rows for v in row],
        )


def ingested_dt(wh: Warehouse, dt: date, at: datetime = datetime(2026, 1, 1)) -> None:
    with wh.transaction():
        wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, ingested_at) "
            "values ('events', ?, ?, 1, 0, 'h', 1, 1, 0, 0, ?)",
            [f"events/dt={dt}/a.jsonl", dt, at],
        )
