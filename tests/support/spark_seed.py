"""Raw and state tables seeded in a Spark warehouse with DataFrames, for the dbt tests on Spark.

The columns come from the DuckDB/Postgres DDL itself (nudge/ingest/schema.py for `raw.*`,
email_jobs/store.py for `nudge.*`), so a column added there reaches Spark's tables too.
`raw.events` is a Parquet table partitioned by `dt`, as Spark ingestion writes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from email_jobs.store import DDL as STATE_DDL
from nudge.ingest.schema import DDL as RAW_DDL

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

PARTITIONS = {"raw.events": "dt"}

_CREATE = re.compile(r"create table if not exists (\w+\.\w+) \((.*)\)\s*$", re.I | re.S)
_ADD = re.compile(r"alter table (\w+\.\w+) add column if not exists (\w+) (\w+)", re.I)
_COLUMN = re.compile(r"^\s*(\w+)\s+(varchar|text|timestamp|integer|bigint|date|double)\b", re.I)


def ddl_columns(ddl: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, portable type)]} from `create table` and `add column` statements."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for stmt in ddl:
        if created := _CREATE.search(stmt.strip()):
            columns = [_COLUMN.match(line) for line in created.group(2).splitlines()]
            tables[created.group(1).lower()] = [
                (c.group(1).lower(), c.group(2).lower()) for c in columns if c
            ]
        elif added := _ADD.search(stmt):
            table, column = added.group(1).lower(), added.group(2).lower()
            if column not in {name for name, _ in tables[table]}:
                tables[table].append((column, added.group(3).lower()))
    return tables


TABLES = {**ddl_columns(RAW_DDL), **ddl_columns(STATE_DDL)}


def spark_schema(table: str) -> StructType:
    from pyspark.sql import types as t

    types = {
        "varchar": t.StringType(),
        "text": t.StringType(),
        "timestamp": t.TimestampType(),
        "integer": t.IntegerType(),
        "bigint": t.LongType(),
        "date": t.DateType(),
        "double": t.DoubleType(),
    }
    return t.StructType([t.StructField(name, types[kind]) for name, kind in TABLES[table]])


def write_rows(
    spark: SparkSession,
    table: str,
    rows: Sequence[Mapping[str, Any]] = (),
    *,
    mode: str = "append",
) -> None:
    """Append `rows` (dicts; absent columns are null) to `table`, creating it when missing."""
    schema = spark_schema(table)
    names = schema.fieldNames()
    unknown = {key for row in rows for key in row} - set(names)
    if unknown:
        raise ValueError(f"{table}: no column(s) {sorted(unknown)}")
    spark.sql(f"create database if not exists {table.split('.')[0]}")
    frame = spark.createDataFrame([tuple(row.get(n) for n in names) for row in rows], schema)
    writer = frame.write.format("parquet").mode(mode)
    if table in PARTITIONS:
        writer = writer.partitionBy(PARTITIONS[table])
    writer.saveAsTable(table)


def create_tables(spark: SparkSession, tables: Iterable[str]) -> None:
    """Empty tables (the ones missing) with the DDL's columns."""
    for table in tables:
        if not spark.catalog.tableExists(table):
            write_rows(spark, table)


def create_raw_tables(spark: SparkSession) -> None:
    create_tables(spark, [name for name in TABLES if name.startswith("raw.")])


def create_state_tables(spark: SparkSession) -> None:
    """The `nudge.*` tables, empty: what the outcome models read from the state store's copy."""
    create_tables(spark, [name for name in TABLES if name.startswith("nudge.")])
