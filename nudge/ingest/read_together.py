"""Read path for new event files on a DuckDB warehouse: many clean files in one scan.

Applies to event files with a literal path, new or changed, two or more in a row, when the
warehouse is DuckDB (`run` decides). Read one at a time (`read_clean`), each file costs about a
dozen statements and a commit, and each is a parallel scan of its own: on hour-sized dumps that
costs more than the parsing. Here a batch is staged by one `read_json` per shape (plain or
gzip, lines or array) with `filename = true` into one temp table, with `read_clean`'s structure
and judgement; each file is then verified exactly as `read_clean` verifies one (`verified`).
Files that pass load together (`Loader.load_batch`); any other file is read on its own, so
quarantine and rejected rows are the same as file by file. A read error naming one file drops
that file from the batch and reads the rest again; one naming none sends the whole batch file
by file.

Rows of one file are contiguous and in line order (insertion order is preserved and the scan
reads the listed files in order), so a row's line number is its rowid minus its file's first
rowid, plus one; `verified` checks the contiguity.

(Inserting straight into raw.events and deduplicating there would spare the temp table, but
deleting the rows that lose makes DuckDB rewrite the row groups written ahead of the commit,
which costs more than the temp table; most batches hold duplicates.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import duckdb

from nudge.ingest.landing import FileShape, LandingFile
from nudge.ingest.read_clean import read_json_source
from nudge.ingest.staging import STRUCTURES, latest_event_time, many_files_sql, unsure_sql

log = logging.getLogger(__name__)

BATCH = "_nudge_batch"  # temp table: the staged rows of the current batch, with `filename`

# A batch closes once its files hold this much JSON text (gzip files counted at GZIP_RATIO
# times their size). Each batch loads in one transaction: fewer, larger ones spare DuckDB
# rewriting (at the checkpoint) the partly filled row group each commit leaves. The batch's
# parsed rows are held in a temp table, spilled to disk past DuckDB's memory limit.
BATCH_BYTES = 1024 * 1024 * 1024
GZIP_RATIO = 8
MAX_FILES = 1000  # and at most this many files: the statement lists them all
# A staged read that fails naming one of its files is tried again without that file; after
# this many failures the rest of the batch goes file by file.
MAX_READ_FAILURES = 4

_GLOB = frozenset("*?[]{}")  # read_json expands these: such a path could match other files


def readable_together(lf: LandingFile) -> bool:
    """Event files only (profiles are few and load differently), with a literal path."""
    return lf.kind == "events" and not _GLOB.intersection(str(lf.path))


def weight(size: int, shape: FileShape) -> int:
    """The JSON text a file holds, estimated from its size."""
    return size * GZIP_RATIO if shape.gzip else size


@dataclass(frozen=True)
class FileRows:
    """What a batch scan took from one file."""

    rows: int
    unsure: int  # rows a read_json read cannot vouch for (`unsure_sql`)
    first_rowid: int
    last_rowid: int
    latest: datetime | None  # newest request time


NO_ROWS = FileRows(rows=0, unsure=0, first_rowid=0, last_rowid=-1, latest=None)


@dataclass(frozen=True)
class BatchFile:
    """A verified file of the batch, ready to load."""

    lf: LandingFile
    rows: FileRows


def verified(rows: FileRows | None, shape: FileShape, lines: int | None, dt: date | None) -> bool:
    """True when the rows taken from a file are what `read_clean` would keep for it alone.

    `read_clean`'s conditions (no error, every row good and keyed, as many rows as physical
    lines for NDJSON), with the dump day's bound on event times checked here per file, plus
    the contiguity the line numbering relies on.
    """
    r = rows or NO_ROWS
    if r.unsure or r.last_rowid - r.first_rowid + 1 != r.rows:
        return False
    if not shape.is_array and r.rows != lines:
        return False
    return dt is None or r.latest is None or r.latest < latest_event_time(dt)


@dataclass
class Staged:
    rows: dict[str, FileRows]  # by path as passed to read_json (= its `filename`)
    failed: set[str]  # files the scan could not take: they go file by file


def read_new_event_files_together(
    conn: duckdb.DuckDBPyConnection, files: list[tuple[Path, FileShape]]
) -> Staged:
    """Stage every file into BATCH with one statement; see the module docstring."""
    conn.execute(f"drop table if exists {BATCH}")
    todo = [(path, shape) for path, shape in files]
    failed: set[str] = set()
    staged = False
    for attempt in range(MAX_READ_FAILURES + 1):
        if not todo:
            break
        sql, params = _scan_sql(todo, table=BATCH)
        try:
            conn.execute(sql, params)
            staged = True
            break
        except duckdb.Error as exc:
            message = str(exc)
            named = _named(message, [str(p) for p, _ in todo])
            log.debug("batch read failed (%s); per file: %s", message.splitlines()[0][:160], named)
            if not named or attempt == MAX_READ_FAILURES:
                break
            failed.update(named)
            todo = [(p, s) for p, s in todo if str(p) not in named]
    if not staged:
        return Staged({}, failed | {str(p) for p, _ in todo})
    found = conn.execute(
        f"""select filename, count(*), count(*) filter (where {unsure_sql("events")}),
                   min(rowid), max(rowid), max(request_time)
            from {BATCH} group by filename"""
    ).fetchall()
    rows = {
        str(name): FileRows(int(n), int(unsure), int(lo), int(hi), latest)
        for name, n, unsure, lo, hi, latest in found
    }
    return Staged(rows, failed)


def drop(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(f"drop table if exists {BATCH}")


def _scan_sql(
    files: list[tuple[Path, FileShape]], table: str | None
) -> tuple[str, list[list[str]]]:
    """One read_json per shape over its files, in their order (the order rowids follow)."""
    groups: dict[tuple[bool, bool], list[str]] = {}
    for path, shape in files:
        groups.setdefault((shape.gzip, shape.is_array), []).append(str(path))
    reads = [
        "select * from "
        + read_json_source(STRUCTURES["events"], FileShape(gz, array), filename=True)
        for gz, array in groups
    ]
    source = "(" + " union all ".join(reads) + ")"
    return many_files_sql("events", source, table), list(groups.values())


def _named(message: str, paths: list[str]) -> set[str]:
    """The batch's files an error message names (DuckDB names the file it failed on)."""
    found = {p for p in paths if p in message}
    # A path inside another one (a.jsonl in a.jsonl.gz) is not named by itself.
    return {p for p in found if not any(p != q and p in q for q in found)}
