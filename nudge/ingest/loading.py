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

from nudge.core.warehouse import Warehouse
from nudge.ingest.landing import LandingFile
from nudge.ingest.read_together import BATCH, BatchFile
from nudge.ingest.report import FileResult, Kind
from nudge.ingest.schema import DDL, spark_ddl
from nudge.ingest.staging import COLUMNS, STAGED, StageCounts

log = logging.getLogger(__name__)

GOOD = "_nudge_good"  # the file's good rows, deduplicated within the file
REJ = "_nudge_rej"  # the file's rejected lines
_SEEN = "_nudge_seen"  # DuckDB: rowid and key of stored events the file holds again
_BFILES = "_nudge_batch_files"  # the batch files being loaded: order, path, dt, first rowid
_BGOOD = "_nudge_batch_good"  # view: their staged rows with order, path, dt and line number
_BDUPS = "_nudge_batch_dups"  # their rows whose key is stored or comes more than once

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
    for ddl in spark_ddl() if wh.kind == "spark" else DDL:
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
            self.wh.execute(f"drop view if exists {_BGOOD}")
            for table in (_SEEN, _BFILES, _BDUPS):
                self.wh.execute(f"drop table if exists {table}")

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

    # -- many files (DuckDB) ------------------------------------------------------------------
    # File by file, a key's first copy wins: the stored one, else the first in file order then
    # line order. A file's duplicates are its rows that lose; its conflicts are its copies that
    # differ from the one kept: within the file (one per extra version of a key) and, for its
    # first copy of a key, from the copy kept before it. Batch loads decide this on the few rows
    # whose key is stored or comes more than once (_BDUPS), with the same counts.
    def load_batch(
        self,
        files: list[tuple[BatchFile, FileIdentity]],
        run_id: str,
        now: datetime,
    ) -> list[FileResult]:
        """Load verified files staged in BATCH (in discovery order) in one transaction."""
        wh = self.wh
        cols = ", ".join(COLUMNS["events"])
        self._batch_files(files)
        wh.execute(
            f"create or replace temp view {_BGOOD} as select b.rowid as rid, f.idx, f.rel, f.dt, "
            f"b.rowid - f.first_rowid + 1 as line_no, "
            f"{', '.join(f'b.{c}' for c in COLUMNS['events'])} "
            f"from {BATCH} b join {_BFILES} f on b.filename = f.filename"
        )
        results = self._batch_results(files)
        with wh.transaction():
            wh.execute(
                f"create or replace temp table {_SEEN} as select e.rowid as rid, e.event_key "
                f"from raw.events e semi join {_BGOOD} g on e.event_key = g.event_key"
            )
            self._batch_duplicates(
                _BGOOD,
                f"select event_key from {_BGOOD} group by event_key having count(*) > 1",
                results,
            )
            sql = (
                f"insert into raw.events ({cols}, dt, source_file, source_line, ingested_at) "
                f"select {cols}, dt, rel, line_no, cast(? as timestamp) from {_BGOOD}"
            )
            if any(r.duplicates for r in results):
                sql += f" where rid not in (select rid from {_BDUPS} where stored or in_batch > 1)"
            self._check_loaded(self._insert(sql, [now]), results)
            self._record_files(results, [ident for _, ident in files], run_id, now)
        return results

    def _batch_files(self, files: list[tuple[BatchFile, FileIdentity]]) -> None:
        """_BFILES: the batch's files in discovery order (idx), with their first rowid."""
        self.wh.execute(
            f"create or replace temp table {_BFILES} as select unnest(?::varchar[]) as filename, "
            "unnest(?::integer[]) as idx, unnest(?::varchar[]) as rel, unnest(?::date[]) as dt, "
            "unnest(?::bigint[]) as first_rowid",
            [
                [str(b.lf.path) for b, _ in files],
                list(range(len(files))),
                [b.lf.rel for b, _ in files],
                [b.lf.dt for b, _ in files],
                [b.rows.first_rowid for b, _ in files],
            ],
        )

    @staticmethod
    def _batch_results(files: list[tuple[BatchFile, FileIdentity]]) -> list[FileResult]:
        return [
            FileResult(
                kind="events", path=b.lf.rel, status="loaded", dt=b.lf.dt, lines_read=b.rows.rows
            )
            for b, _ in files
        ]

    def _batch_duplicates(self, rows: str, repeated: str, results: list[FileResult]) -> None:
        """_BDUPS from `rows` (rid, idx, line_no, event_key and the conflict columns of the
        batch's rows) whose key is in _SEEN or `repeated` (keys coming more than once in the
        batch); sets each file's duplicates, conflicts and loaded."""
        wh = self.wh
        content = ", ".join(_CONFLICT_COLUMNS)
        wh.execute(
            f"""create or replace temp table {_BDUPS} as
            select rid, idx, line_no, event_key, {content},
                event_key in (select event_key from {_SEEN}) as stored,
                row_number() over (partition by idx, event_key order by line_no) as in_file,
                row_number() over (partition by event_key order by idx, line_no) as in_batch
            from {rows}
            where event_key in ({repeated} union all select event_key from {_SEEN})"""
        )
        differs = " or ".join(f"d.{c} is distinct from k.{c}" for c in _CONFLICT_COLUMNS)
        for idx, losers, conflicts in wh.fetchall(
            f"""with kept as (
                select event_key, {content} from raw.events
                where rowid in (select rid from {_SEEN})
                union all
                select event_key, {content} from {_BDUPS} where in_batch = 1 and not stored
            )
            select d.idx, count(*) filter (where d.stored or d.in_batch > 1),
                count(*) filter (where d.in_file = 1 and (d.stored or d.in_batch > 1)
                                 and ({differs}))
            from {_BDUPS} d join kept k on d.event_key = k.event_key group by d.idx"""
        ):
            results[idx].duplicates = int(losers)
            results[idx].conflicts = int(conflicts)
        for idx, extra in wh.fetchall(
            f"""select idx, sum(versions - 1) from (
                select idx, count(distinct ({content})) as versions from {_BDUPS}
                group by idx, event_key having count(*) > 1)
            group by idx"""
        ):
            results[idx].conflicts += int(extra)
        for r in results:
            r.loaded = r.lines_read - r.duplicates

    @staticmethod
    def _check_loaded(inserted: int, results: list[FileResult]) -> None:
        expected = sum(r.loaded for r in results)
        if inserted != expected:  # a bug, never data: the transaction is rolled back
            raise RuntimeError(f"batch load kept {inserted} events, expected {expected}")

    def _record_files(
        self,
        results: list[FileResult],
        idents: list[FileIdentity],
        run_id: str,
        now: datetime,
    ) -> None:
        """raw.ingested_files rows for many files, in one statement."""
        self.wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, run_id, ingested_at) "
            "select unnest(?::varchar[]), unnest(?::varchar[]), unnest(?::date[]), "
            "unnest(?::bigint[]), unnest(?::double[]), unnest(?::varchar[]), "
            "unnest(?::bigint[]), unnest(?::bigint[]), unnest(?::bigint[]), unnest(?::bigint[]), "
            "?, cast(? as timestamp)",
            [
                [r.kind for r in results],
                [r.path for r in results],
                [r.dt for r in results],
                [i.size for i in idents],
                [i.mtime for i in idents],
                [i.content_hash for i in idents],
                [r.lines_read for r in results],
                [r.loaded for r in results],
                [r.duplicates for r in results],
                [r.rejected for r in results],
                run_id,
                now,
            ],
        )

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
