"""The state tables the outcome models read, copied into the warehouse's `nudge` schema.

The outcome models (dbt tag nudge_outcomes) read `source('nudge', ...)` in the warehouse. When
the state store is another database (NUDGE_STATE_STORE; always with Spark), each build of the
outcomes first replaces these tables in the warehouse with the state store's rows: a full copy
(they are small beside the events: a row per evaluation, entry, delivery event, suppression).
When one database holds both roles there is nothing to copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from email_jobs.store import ensure_schema
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

# The dbt sources of dbt_project/models/outcomes/_nudge__sources.yml.
OUTCOME_SOURCES = (
    "send_ledger",
    "cohort_membership",
    "evaluations",
    "email_events",
    "suppressions",
)

# A state column's type (DuckDB's or Postgres' information_schema name) -> (SQL, Spark) type.
_TYPES = (
    ("timestamp", "timestamp", "timestamp"),
    ("bigint", "bigint", "bigint"),
    ("int8", "bigint", "bigint"),
    ("int", "integer", "int"),
    ("double", "double precision", "double"),
    ("float", "double precision", "double"),
    ("real", "double precision", "double"),
    ("numeric", "double precision", "double"),
    ("decimal", "double precision", "double"),
    ("bool", "boolean", "boolean"),
    ("date", "date", "date"),
)


def column_types(data_type: str) -> tuple[str, str]:
    """(portable SQL type, Spark type) of a column the state store reports as `data_type`."""
    lowered = data_type.lower()
    for prefix, sql, spark in _TYPES:
        if lowered.startswith(prefix):
            return sql, spark
    return "varchar", "string"


def state_columns(state: Warehouse, table: str) -> list[tuple[str, str]]:
    """[(column, information_schema data type)] of nudge.`table` in the state store, in order."""
    return [
        (str(name), str(kind))
        for name, kind in state.fetchall(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'nudge' and table_name = ? order by ordinal_position",
            [table],
        )
    ]


def copy_state(
    state: Warehouse, wh: Warehouse, tables: Sequence[str] = OUTCOME_SOURCES
) -> dict[str, int]:
    """Replace each of `tables` in the warehouse `wh`'s nudge schema with the state store's rows:
    {table: rows copied}. Nothing when `state` is `wh` (one database holds both roles)."""
    if state is wh:
        return {}
    ensure_schema(state)  # the sources exist before any evaluation
    copied: dict[str, int] = {}
    for table in tables:
        columns = state_columns(state, table)
        names = ", ".join(name for name, _ in columns)
        rows = state.fetchall(f"select {names} from nudge.{table}")
        if wh.kind == "spark":
            _write_spark(wh, table, columns, rows)
        else:
            _write_sql(wh, table, columns, rows)
        copied[table] = len(rows)
    log.info("state copied into the warehouse: %s", copied)
    return copied


def _write_sql(
    wh: Warehouse, table: str, columns: list[tuple[str, str]], rows: list[tuple]
) -> None:
    """Drop and recreate (a state table that gained a column is copied whole), in one
    transaction: dbt never reads a half-copied table."""
    ddl = ", ".join(f"{name} {column_types(kind)[0]}" for name, kind in columns)
    with wh.transaction():
        wh.execute("create schema if not exists nudge")
        wh.execute(f"drop table if exists nudge.{table}")
        wh.execute(f"create table nudge.{table} ({ddl})")
        wh.insert_rows(f"nudge.{table}", [name for name, _ in columns], rows)


def _write_spark(
    wh: Warehouse, table: str, columns: list[tuple[str, str]], rows: list[tuple]
) -> None:
    schema = ", ".join(f"{name} {column_types(kind)[1]}" for name, kind in columns)
    # The state's timestamps are naive UTC: made aware, Spark reads them as UTC whatever this
    # machine's zone is.
    data = [tuple(_spark_value(v) for v in row) for row in rows]
    frame = wh.conn.createDataFrame(data, schema)
    frame.write.mode("overwrite").format("parquet").saveAsTable(f"nudge.{table}")


def _spark_value(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
