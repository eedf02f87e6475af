"""Failed runs, recorded where `nudge status` shows them (the Dagster UI keeps the details)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nudge.core.warehouse import Warehouse

DDL = (
    "create schema if not exists nudge",
    """
    create table if not exists nudge.run_failures (
        run_id     varchar not null,
        job        varchar not null,
        failed_at  timestamp not null,
        message    varchar
    )
    """,
)


def record_failure(wh: Warehouse, run_id: str, job: str, message: str) -> None:
    with wh.transaction():
        for ddl in DDL:
            wh.execute(ddl)
        wh.execute(
            "insert into nudge.run_failures (run_id, job, failed_at, message) values (?, ?, ?, ?)",
            [run_id, job, datetime.now(UTC).replace(tzinfo=None), message[:4000]],
        )


def latest_failure(wh: Warehouse) -> dict[str, Any] | None:
    if not wh.table_exists("nudge", "run_failures"):
        return None
    rows = wh.fetchdicts(
        "select run_id, job, failed_at, message from nudge.run_failures "
        "order by failed_at desc limit 1"
    )
    if not rows:
        return None
    row = rows[0]
    row["failed_at"] = row["failed_at"].isoformat() + "Z"
    return row
