"""Move one staged file into the warehouse's raw tables, in one transaction with its ledger row.

On a DuckDB warehouse the staging tables live in the warehouse connection itself. On Postgres
they live in an in-memory DuckDB; the rows to keep are written by DuckDB as CSV and bulk-loaded
with COPY into session temp tables, and the same portable SQL then moves them into `raw`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from nudge.ingest.landing import LandingFile
from nudge.ingest.report import FileResult, Kind
from nudge.ingest.schema import DDL
from nudge.ingest.staging import COLUMNS, STAGED, StageCounts
from nudge.warehouse import Warehouse

log = logging.getLogger(__name__)

GOOD = "_nudge_good"  # the file's good rows, deduplicated within the file
REJ = "_nudge_rej"  # the file's rejected lines
_SEEN = "_nudge_seen"  # DuckDB: rowid and key of stored events the file holds again

# Event columns whose difference makes a duplicate transaction_id a conflict.
_CONFLICT_COLUMNS = ("request_time", "user_id", "company_id", "verb", "uri", "status")
# A profile version is identified by its whole content: re-reading a changed profile file
# must not store the versions it already held a second time.
_PROFILE_IDENTITY: dict[Kind, tuple[str, ...]] = {
    "users": ("user_id", "company_id", "modified_time", "metadata"),
    "companies": ("company_id", "company_domain", "modified_time", "metadata"),
}
_NOT_TEXT = frozenset(
    {"request_time", "response_time", "status", "weight", "modified_time", "created", "source_line"}
)
_RAW_TABLE: dict[Kind, str] = {
    "events": "raw.events",
    "users": "raw.users",
    "companies": "raw.companies",
}


def ensure_schema(wh: Warehouse) -> None:
    """Create the raw tables if missing (plus, on Postgres, the indexes deduplication uses)."""
    for ddl in DDL:
        wh.execute(ddl)
    if wh.kind == "postgres":
        # DuckDB deduplicates with a hash anti-join; Postgres needs the index to stay fast.
        wh.execute(
            "create unique index if not exists raw_events_event_key_uq on raw.events (event_key)"
        )
        wh.execute(
            "create index if not exists raw_ingested_files_path on raw.ingested_files (path)"
        )
        for kind in ("users", "companies"):
            key = _PROFILE_IDENTITY[kind][0]  # type: ignore[index]
            wh.execute(f"create index if not exists raw_{kind}_{key} on raw.{kind} ({key})")
    wh.commit()


# DuckDB checkpoints when its WAL passes checkpoint_threshold (16MB by default): after nearly
# every file, each time recompressing the table's open row group, which cost more than the
# parsing itself. Ingestion checkpoints once at the end instead (and whenever this much WAL
# builds up; committed rows not yet checkpointed can spill to DuckDB's temp directory).
INGEST_CHECKPOINT_THRESHOLD = "1GB"


@contextmanager
def few_checkpoints(wh: Warehouse) -> Iterator[None]:
    """DuckDB: checkpoint rarely while files load, and once when they are all in."""
    if wh.kind != "duckdb":
        yield
        return
    row = wh.fetchone("select current_setting('checkpoint_threshold')")
    previous = str(row[0]) if row else "16MiB"
    wh.execute(f"set checkpoint_threshold = '{INGEST_CHECKPOINT_THRESHOLD}'")
    try:
        yield
    finally:
        wh.execute(f"set checkpoint_threshold = '{previous}'")
        wh.execute("checkpoint")


@dataclass
class FileIdentity:
    size: int
    mtime: float
    content_hash: str


class Loader:
    """Loads staged files into one warehouse; `parser` is the DuckDB connection that staged them."""

    def __init__(self, wh: Warehouse, parser: duckdb.DuckDBPyConnection) -> None:
        self.wh = wh
        self.parser = parser
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if wh.kind == "postgres":
            self._tmp = tempfile.TemporaryDirectory(prefix="nudge-ingest-")
            for kind in COLUMNS:
                wh.execute(f"drop table if exists {GOOD}_{kind}")
                wh.execute(
                    f"create temp table {GOOD}_{kind} as select {', '.join(COLUMNS[kind])}, "
                    f"source_line from {_RAW_TABLE[kind]} where 1 = 0"
                )
            wh.execute(f"drop table if exists {REJ}")
            wh.execute(
                f"create temp table {REJ} as select source_line, raw_text, reason "
                "from raw.rejected where 1 = 0"
            )
            wh.commit()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        if self.wh.kind == "duckdb":
            self.wh.execute(f"drop table if exists {_SEEN}")

    # -- one file ---------------------------------------------------------------------------
    def load(
        self,
        lf: LandingFile,
        counts: StageCounts,
        ident: FileIdentity,
        run_id: str,
        now: datetime,
    ) -> FileResult:
        kind = lf.kind
        cols = COLUMNS[kind]
        if kind == "events":
            in_file_dups, in_file_conflicts = self._in_file_event_duplicates()
            partition = "event_key"
        else:
            in_file_dups, in_file_conflicts = 0, 0
            partition = ", ".join(_PROFILE_IDENTITY[kind])
        good_sql = (
            f"select {', '.join(cols)}, line_no as source_line from {STAGED} where reason is null"
        )
        if kind != "events" or in_file_dups:
            # First copy in the file wins (profiles: identical copies collapse).
            good_sql += (
                f" qualify row_number() over (partition by {partition} order by line_no) = 1"
            )
        rej_sql = (
            f"select line_no as source_line, raw_text, reason from {STAGED} where reason <> ''"
        )

        good_rel, rej_rel = self._publish(kind, good_sql, rej_sql)
        result = FileResult(kind=kind, path=lf.rel, status="loaded", dt=lf.dt)
        result.lines_read, result.rejected = counts.lines_read, counts.rejected
        with self.wh.transaction() as wh:
            if kind == "events":
                conflicts = self._existing_event_conflicts(good_rel)
                result.conflicts = in_file_conflicts + conflicts
                result.loaded = self._insert_events(good_rel, lf, run_id, now)
            else:
                result.loaded = self._insert_profiles(kind, good_rel, lf, now)
            result.duplicates = counts.good - result.loaded
            wh.execute(
                "insert into raw.rejected (kind, source_file, source_line, raw_text, reason, "
                "run_id, rejected_at) select ?, ?, source_line, raw_text, reason, ?, ? "
                f"from {rej_rel}",
                [kind, lf.rel, run_id, now],
            )
            self._record_file(result, ident, run_id, now)
        return result

    def record_unreadable(
        self, lf: LandingFile, ident: FileIdentity, reason: str, run_id: str, now: datetime
    ) -> FileResult:
        """A file no line of which can be read (corrupt gzip, ...): one rejected entry for it,
        counted as one line read, so the broken-export guard sees it; retried once it changes."""
        result = FileResult(
            kind=lf.kind,
            path=lf.rel,
            status="loaded",
            dt=lf.dt,
            lines_read=1,
            rejected=1,
            note=reason,
        )
        with self.wh.transaction() as wh:
            wh.execute(
                "insert into raw.rejected (kind, source_file, source_line, raw_text, reason, "
                "run_id, rejected_at) values (?, ?, null, null, ?, ?, ?)",
                [lf.kind, lf.rel, reason, run_id, now],
            )
            self._record_file(result, ident, run_id, now)
        return result

    # -- pieces -----------------------------------------------------------------------------
    def _in_file_event_duplicates(self) -> tuple[int, int]:
        row = self.parser.execute(
            f"select count(*) - count(distinct event_key) from {STAGED} where reason is null"
        ).fetchone()
        dups = int(row[0]) if row else 0
        if not dups:
            return 0, 0
        content = ", ".join(_CONFLICT_COLUMNS)
        row = self.parser.execute(
            f"""select coalesce(sum(versions - 1), 0) from (
                    select count(distinct ({content})) as versions from {STAGED}
                    where reason is null group by event_key having count(*) > 1)"""
        ).fetchone()
        return dups, int(row[0]) if row else 0

    def _publish(self, kind: Kind, good_sql: str, rej_sql: str) -> tuple[str, str]:
        """Make the good and rejected rows visible to the warehouse connection."""
        if self.wh.kind == "duckdb":
            self.parser.execute(f"create or replace temp view {GOOD} as {good_sql}")
            self.parser.execute(f"create or replace temp view {REJ} as {rej_sql}")
            return GOOD, REJ
        assert self._tmp is not None
        good_table = f"{GOOD}_{kind}"
        cols = [*COLUMNS[kind], "source_line"]
        # Postgres text cannot hold NUL characters, which JSON can carry escaped (\u0000):
        # they are dropped from text columns on the way to Postgres.
        clean = ", ".join(c if c in _NOT_TEXT else f"replace({c}, chr(0), '') as {c}" for c in cols)
        self.wh.execute(f"truncate {good_table}")
        self.wh.execute(f"truncate {REJ}")
        self._copy(f"select {clean} from ({good_sql})", good_table, cols)
        self._copy(
            "select source_line, replace(raw_text, chr(0), '') as raw_text, reason "
            f"from ({rej_sql})",
            REJ,
            ["source_line", "raw_text", "reason"],
        )
        return good_table, REJ

    def _copy(self, select_sql: str, table: str, cols: list[str]) -> None:
        assert self._tmp is not None
        path = Path(self._tmp.name) / f"{table}.csv"
        self.parser.execute(f"copy ({select_sql}) to '{path}' (format csv, header false)")
        try:
            with path.open("rb") as f, self.wh.conn.cursor() as cur:
                cur.copy_expert(f"copy {table} ({', '.join(cols)}) from stdin with (format csv)", f)
        finally:
            path.unlink(missing_ok=True)

    def _existing_event_conflicts(self, good: str) -> int:
        differs = " or ".join(f"e.{c} is distinct from g.{c}" for c in _CONFLICT_COLUMNS)
        if self.wh.kind == "duckdb":
            # One scan of raw.events' key column finds the copies already stored (the hash
            # table is built on the file's side); only those rows are then read whole, so the
            # cost per file stays small as history grows.
            self.wh.execute(
                f"create or replace temp table {_SEEN} as select e.rowid as rid, e.event_key "
                f"from raw.events e semi join {good} g on e.event_key = g.event_key"
            )
            row = self.wh.fetchone(
                f"select count(*) from (select * from raw.events where rowid in "
                f"(select rid from {_SEEN})) e join {good} g on e.event_key = g.event_key "
                f"where {differs}"
            )
            return int(row[0]) if row else 0
        row = self.wh.fetchone(
            f"select count(*) from {good} g join raw.events e on e.event_key = g.event_key "
            f"where {differs}"
        )
        return int(row[0]) if row else 0

    def _insert_events(self, good: str, lf: LandingFile, run_id: str, now: datetime) -> int:
        cols = ", ".join(COLUMNS["events"])
        # DuckDB: against the keys found by _existing_event_conflicts, not all of raw.events.
        existing = _SEEN if self.wh.kind == "duckdb" else "raw.events"
        sql = (
            f"insert into raw.events ({cols}, dt, source_file, source_line, ingested_at) "
            f"select {cols}, cast(? as date), ?, source_line, cast(? as timestamp) from {good} g "
            f"where not exists (select 1 from {existing} e where e.event_key = g.event_key)"
        )
        return self._insert(sql, [lf.dt, lf.rel, now])

    def _insert_profiles(self, kind: Kind, good: str, lf: LandingFile, now: datetime) -> int:
        cols = ", ".join(COLUMNS[kind])
        same = " and ".join(f"t.{c} is not distinct from g.{c}" for c in _PROFILE_IDENTITY[kind])
        table = _RAW_TABLE[kind]
        sql = (
            f"insert into {table} ({cols}, source_file, source_line, ingested_at) "
            f"select {cols}, ?, source_line, cast(? as timestamp) from {good} g "
            f"where not exists (select 1 from {table} t where {same})"
        )
        return self._insert(sql, [lf.rel, now])

    def _insert(self, sql: str, params: list[object]) -> int:
        cur = self.wh.execute(sql, params)
        if self.wh.kind == "duckdb":
            row = cur.fetchone()
            return int(row[0]) if row else 0
        return int(cur.rowcount)

    def _record_file(self, r: FileResult, ident: FileIdentity, run_id: str, now: datetime) -> None:
        self.wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, run_id, ingested_at) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                r.kind, r.path, r.dt, ident.size, ident.mtime, ident.content_hash,
                r.lines_read, r.loaded, r.duplicates, r.rejected, run_id, now,
            ],
        )  # fmt: skip
