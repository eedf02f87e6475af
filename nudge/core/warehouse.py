"""One way into the warehouse (DuckDB, Postgres or Spark) and the state store (DuckDB or
Postgres), for ingestion and the email jobs.

SQL passed to `Warehouse.execute` uses `?` placeholders and portable SQL; for Postgres the
placeholders become `%s`. DuckDB allows one writing process per file, so every connection to a
DuckDB warehouse holds an exclusive file lock (`<file>.lock`) for its lifetime: other processes
wait for it instead of failing.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from nudge.core.settings import ConfigError, Settings, WarehouseUrl

log = logging.getLogger(__name__)


class Warehouse:
    """A connection to the warehouse with a small portable API."""

    def __init__(self, url: WarehouseUrl, conn: Any, memory_limit: str | None = None) -> None:
        self.url = url
        self.kind = url.kind
        self.conn = conn

    # -- portable execution -------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        if self.kind == "postgres":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        if self.kind == "duckdb":
            return self.conn.execute(sql, params or [])
        if self.kind == "spark":
            return _SparkCursor(
                self.conn.sql(sql, args=list(params)) if params else self.conn.sql(sql)
            )
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), tuple(params or ()))
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.kind == "duckdb":
            self.conn.executemany(sql, rows)
        elif self.kind == "spark":
            raise NotImplementedError("row-by-row writes to Spark: write a DataFrame instead")
        else:
            from psycopg2.extras import execute_batch

            with self.conn.cursor() as cur:
                execute_batch(cur, self._sql(sql), rows, page_size=500)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert many rows into `table`: on DuckDB through a scanned frame (its executemany runs
        one statement a row, ~100x slower); batched executemany on Postgres."""
        if self.kind != "duckdb":
            marks = ", ".join("?" for _ in columns)
            self.executemany(f"insert into {table} ({', '.join(columns)}) values ({marks})", rows)
            return
        if not rows:
            return
        import pandas as pd

        # Object columns: DuckDB casts each value to the table's type (no float NaN for an
        # integer column with nulls).
        frame = pd.DataFrame(list(rows), columns=list(columns), dtype=object)
        name = f"_nudge_rows_{id(frame)}"
        self.conn.register(name, frame)
        try:
            self.conn.execute(f"insert into {table} ({', '.join(columns)}) select * from {name}")
        finally:
            self.conn.unregister(name)

    def fetchall(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        return self.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] | None = None) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def fetchdicts(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def commit(self) -> None:
        if self.kind == "postgres":
            self.conn.commit()

    def rollback(self) -> None:
        if self.kind == "postgres":
            self.conn.rollback()

    @contextmanager
    def transaction(self) -> Iterator[Warehouse]:
        """A committed unit of work: all of it lands, or none of it (DuckDB, Postgres; Spark
        has no transactions, and its writes are idempotent overwrites instead)."""
        if self.kind == "spark":
            yield self
        elif self.kind == "duckdb":
            self.conn.execute("begin transaction")
            try:
                yield self
            except BaseException:
                self.conn.execute("rollback")
                raise
            self.conn.execute("commit")
        else:
            try:
                yield self
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()

    def table_exists(self, schema: str, table: str) -> bool:
        if self.kind == "spark":
            return bool(self.conn.catalog.tableExists(f"{schema}.{table}"))
        row = self.fetchone(
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [schema, table],
        )
        return bool(row and row[0])

    def relation(self, relation_name: str) -> str:
        """A dbt `relation_name` ("db"."schema"."table") usable on this connection."""
        # DuckDB attaches its file under its own name, and Spark's relation names carry no
        # database: schema.table resolves on every engine, a renamed warehouse file included.
        parts = relation_name.split(".")[-2:]
        if self.kind == "spark":
            # The manifest may have been parsed for another target ("db"."schema"."table").
            name = ".".join(p.strip('`"') for p in parts)
            # A session keeps the files of a table it read; dbt (its own session) may have
            # rewritten them since, and reading the old ones fails (FILE_NOT_EXIST).
            if self.conn.catalog.tableExists(name):
                self.conn.catalog.refreshTable(name)
            return name
        return ".".join(parts)


class _SparkCursor:
    """A DB-API-like view of a Spark DataFrame: rows are collected when first fetched."""

    def __init__(self, df: Any) -> None:
        self._df = df
        self._rows: list[tuple] | None = None
        self.description = [(name,) for name in df.columns]

    def _all(self) -> list[tuple]:
        if self._rows is None:
            self._rows = [tuple(r) for r in self._df.collect()]
        return self._rows

    def fetchall(self) -> list[tuple]:
        rows, self._rows = self._all(), []
        return rows

    def fetchone(self) -> tuple | None:
        rows = self._all()
        return rows.pop(0) if rows else None


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextmanager
def duckdb_file_lock(path: Path, timeout_s: float = 3600) -> Iterator[None]:
    """Hold the warehouse's writer lock; waits for other Nudge processes to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = _lock_path(path).open("a+")
    deadline = time.monotonic() + timeout_s
    waited = False
    try:
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another Nudge process to release %s", path)
                    waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"warehouse {path} stayed locked for {timeout_s:.0f}s")
                time.sleep(0.2)
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()


@contextmanager
def connect(settings: Settings, *, read_only: bool = False) -> Iterator[Warehouse]:
    """Open the configured warehouse (holding the DuckDB writer lock while open)."""
    with _open(settings.warehouse_url, settings) as wh:
        yield wh


@contextmanager
def connect_state(settings: Settings) -> Iterator[Warehouse]:
    """Open the state store (the nudge.* tables): NUDGE_STATE_STORE, else the warehouse."""
    with _open(settings.state_store_url, settings) as wh:
        yield wh


@contextmanager
def connect_both(settings: Settings) -> Iterator[tuple[Warehouse, Warehouse]]:
    """(warehouse, state store): one connection for both when one database holds both roles
    (a second connection to the same DuckDB file would wait for the first's writer lock)."""
    with connect(settings) as wh:
        if settings.state_is_warehouse:
            yield wh, wh
            return
        with connect_state(settings) as state:
            yield wh, state


@contextmanager
def _open(url: WarehouseUrl, settings: Settings) -> Iterator[Warehouse]:
    if url.kind == "spark":
        from nudge.core.spark import spark_session

        # The session is the process's, shared and reused; closing this handle keeps it.
        yield Warehouse(url, spark_session(settings))
    elif url.kind == "duckdb":
        import duckdb

        with duckdb_file_lock(url.path):
            conn = duckdb.connect(
                str(url.path),
                config={
                    "memory_limit": settings.duckdb_memory_limit,
                    "preserve_insertion_order": False,
                },
            )
            try:
                yield Warehouse(url, conn)
            finally:
                conn.close()
    else:
        import psycopg2

        try:
            conn = psycopg2.connect(
                host=url.host,
                port=url.port,
                user=url.user,
                password=url.password or None,
                dbname=url.database,
                connect_timeout=10,
            )
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ConfigError(
                f"{url.env}: cannot reach Postgres at {url.host}:{url.port}/{url.database} "
                f"({first}); check that the server runs and the URL is right"
            ) from None
        try:
            yield Warehouse(url, conn)
        finally:
            conn.close()


@contextmanager
def writer_lock(settings: Settings) -> Iterator[None]:
    """Serialize writers of a DuckDB warehouse (one writing process per file); no-op on Postgres.

    Held around work that opens the file from another process, such as a dbt invocation.
    """
    urls = {settings.warehouse_url.url: settings.warehouse_url}
    urls[settings.state_store_url.url] = settings.state_store_url
    paths = sorted({u.path for u in urls.values() if u.kind == "duckdb"})
    with ExitStack() as stack:
        for path in paths:  # in one order, so that two writers cannot deadlock
            stack.enter_context(duckdb_file_lock(path))
        yield
