"""Read paths for files that are not clean: every line kept, good or bad, with its number.

- `read_line_by_line`: NDJSON (or anything that is not one valid JSON array). The file is read
  as lines by DuckDB's CSV reader (one VARCHAR column, no quoting, a delimiter JSON text cannot
  contain unescaped) and each line is parsed with `json_transform`: `read_json` with
  `ignore_errors` would turn a bad line into an all-NULL row, losing the text and the reason.
- `read_array_by_element`: one JSON array (Moesif's batch shape, maybe pretty-printed) that the
  clean read refused: its elements, numbered in order.
- `read_cut_short_gzip`: a gzip file whose stream breaks off: its complete lines, line by line,
  plus one rejected row for the line cut short.

Line numbers come from the staging table's rowid: with `preserve_insertion_order` DuckDB
inserts a parallel scan in file order, so rowid + 1 is the line number (blank lines are kept as
rows for that reason). Lines the CSV reader itself refuses (not UTF-8, too long) are missing
from the scan; they are taken from its rejects table and the numbering is shifted around them.

A file with only good JSON takes one parse per line: `json_transform` raises on malformed
JSON, and only then is the file staged again with a `json_valid` guard (a second parse) to
quarantine the bad lines.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import duckdb

from nudge.ingest.landing import FileShape, read_broken_gzip
from nudge.ingest.report import Kind
from nudge.ingest.staging import (
    RAW_TEXT_MAX,
    STAGE,
    STAGED,
    FileVanished,
    StageCounts,
    counts,
    number_rows,
    stage_sql,
)

log = logging.getLogger(__name__)

_LINES = "_nudge_lines"
_ELEMS = "_nudge_elems"
_CSV_REJECTS = "_nudge_csv_rejects"
_CSV_SCANS = "_nudge_csv_scans"
_CSV_REJ_LINES = "_nudge_csv_rej_lines"

# DuckDB's CSV reader default; a larger limit on every file halves its speed, so a file with a
# longer line is read again with LONG_LINE_MAX (4x DuckDB's default JSON object size).
DEFAULT_LINE_MAX = 2 * 1024 * 1024
LONG_LINE_MAX = 64 * 1024 * 1024


def read_line_by_line(
    conn: duckdb.DuckDBPyConnection, kind: Kind, path: Path, shape: FileShape, dt: date | None
) -> StageCounts:
    """Stage every line of `path`, bad lines rejected with their text, number and reason."""
    _stage_lines(conn, kind, path, shape, DEFAULT_LINE_MAX, dt)
    long_lines = _csv_rejects(conn, "error_type = 'LINE SIZE OVER MAXIMUM'")
    if long_lines:
        log.info("%s: %d lines over %d bytes; reading again", path, long_lines, DEFAULT_LINE_MAX)
        _stage_lines(conn, kind, path, shape, LONG_LINE_MAX, dt)
    _number_lines(conn)
    return counts(conn)


def read_array_by_element(
    conn: duckdb.DuckDBPyConnection, kind: Kind, path: Path, shape: FileShape, dt: date | None
) -> StageCounts | None:
    """Stage the elements of a file that is one JSON array; None when it is not one valid JSON
    array (it is then read line by line)."""
    _drop_csv_rejects(conn)
    conn.execute(
        f"create or replace temp table {_LINES} as "
        f"select line from {_read_lines(shape, LONG_LINE_MAX)}",
        [str(path)],
    )
    if _csv_rejects(conn):
        return None
    doc = f"(select string_agg(coalesce(line, ''), chr(10) order by rowid) as doc from {_LINES})"
    # CASE, not AND: DuckDB evaluates both sides of AND, and json_type raises on invalid JSON
    # (a lines file whose first line is an array would become unreadable).
    row = conn.execute(
        f"select case when json_valid(doc) then json_type(doc) = 'ARRAY' else false end from {doc}"
    ).fetchone()
    if not (row and row[0]):
        return None
    conn.execute(
        f"create or replace temp table {_ELEMS} as "
        f"select unnest(json_extract(doc, '$[*]'))::varchar as line from {doc}"
    )
    # Elements are re-serialized valid JSON, so the unguarded parse cannot fail.
    conn.execute(stage_sql(kind, f"(select line from {_ELEMS})", dt))
    return number_rows(conn)


def read_cut_short_gzip(
    conn: duckdb.DuckDBPyConnection,
    kind: Kind,
    path: Path,
    dt: date | None,
    workdir: Path,
) -> StageCounts | None:
    """Stage the complete lines of a gzip file whose stream breaks off, plus one rejected row
    for the line cut short (its text as far as it goes), whose reason says the file is
    truncated. None when the file is not gzip data at all (or it reads to its end after all).
    """
    body = workdir / "readable-part.jsonl"
    try:
        broken = read_broken_gzip(path, body)
    except FileNotFoundError as exc:
        raise FileVanished(str(path)) from exc
    if broken is None or (broken.readable == 0 and broken.problem == "is corrupt"):
        return None  # not a gzip stream at all: reported as an unreadable file
    # A placeholder last line stands for the line cut short; it is rejected as not JSON and
    # then given its real text and reason.
    with body.open("ab") as f:
        f.write(b"-\n")
    what = "file truncated" if broken.problem == "ends early" else "file damaged"
    reason = (
        f"{what}: its gzip stream {broken.problem} after {broken.readable} bytes of data "
        f"({broken.compressed} compressed bytes): the data breaks off in this line, and anything "
        "after it is lost - export the file again"
    )
    read_line_by_line(conn, kind, body, FileShape(gzip=False, is_array=False), dt)
    conn.execute(
        f"update {STAGE} set reason = ?, raw_text = ? "
        f"where rowid = (select max(rowid) from {STAGE})",
        [reason, broken.tail.decode("utf-8", "replace")[:RAW_TEXT_MAX]],
    )
    log.warning("%s: %s (line %d)", path, reason, broken.lines + 1)
    return counts(conn)


def drop_temp(conn: duckdb.DuckDBPyConnection) -> None:
    """Drop this module's temp tables (at the end of a run)."""
    for t in (_LINES, _ELEMS, _CSV_REJECTS, _CSV_SCANS, _CSV_REJ_LINES):
        conn.execute(f"drop table if exists {t}")


def _read_lines(shape: FileShape, line_max: int) -> str:
    """A `read_csv` call (path as the first `?`) yielding one row per physical line."""
    return f"""read_csv(?, columns = {{'line': 'VARCHAR'}}, header = false, auto_detect = false,
        delim = '\\x01', quote = '', escape = '', strict_mode = false,
        new_line = '\\r\\n', compression = '{"gzip" if shape.gzip else "none"}',
        max_line_size = {line_max}, ignore_errors = true, store_rejects = true,
        rejects_table = '{_CSV_REJECTS}', rejects_scan = '{_CSV_SCANS}')"""
    # new_line '\r\n' also ends lines at a bare '\n'; with '\n' a CRLF file gets extra rows.


def _drop_csv_rejects(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(f"drop table if exists {_CSV_REJECTS}")
    conn.execute(f"drop table if exists {_CSV_SCANS}")


def _csv_rejects(conn: duckdb.DuckDBPyConnection, where: str = "true") -> int:
    try:
        row = conn.execute(f"select count(*) from {_CSV_REJECTS} where {where}").fetchone()
    except duckdb.CatalogException:
        return 0
    return int(row[0]) if row else 0


def _stage_lines(
    conn: duckdb.DuckDBPyConnection,
    kind: Kind,
    path: Path,
    shape: FileShape,
    line_max: int,
    dt: date | None,
) -> None:
    source = _read_lines(shape, line_max)
    try:
        _drop_csv_rejects(conn)
        conn.execute(stage_sql(kind, source, dt), [str(path)])
    except duckdb.InvalidInputException as exc:
        # Malformed JSON somewhere in the file: stage again, parsing only valid lines.
        log.info("%s: malformed JSON (%s); quarantining line by line", path, str(exc)[:120])
        _drop_csv_rejects(conn)
        conn.execute(stage_sql(kind, source, dt, guarded=True), [str(path)])


def _number_lines(conn: duckdb.DuckDBPyConnection) -> None:
    """STAGED: STAGE with the 1-based physical line number of each row."""
    if not _csv_rejects(conn):
        conn.execute(
            f"create or replace temp view {STAGED} as select *, rowid + 1 as line_no from {STAGE}"
        )
        return
    # The CSV reader dropped lines L1 < L2 < ... from the scan. The i-th dropped line has
    # L_i - i kept rows before it, so kept row r (1-based) is physical line
    # r + #{i : L_i - i < r}. Those dropped lines are added to STAGE as rejected rows.
    conn.execute(
        f"""create or replace temp table {_CSV_REJ_LINES} as
        select line, line - row_number() over (order by line) as kept_before,
               left(csv_line, {RAW_TEXT_MAX}) as raw_text,
               case error_type
                   when 'INVALID ENCODING' then 'line is not valid UTF-8'
                   when 'LINE SIZE OVER MAXIMUM' then 'line longer than {LONG_LINE_MAX} bytes'
                   else 'unreadable line: ' || error_message
               end as reason
        from (select distinct on (line) * from {_CSV_REJECTS} order by line)"""
    )
    conn.execute(
        f"""create or replace temp view {STAGED} as
        select s.*, s.rowid + 1 + (
            select count(*) from {_CSV_REJ_LINES} r where r.kept_before < s.rowid + 1
        ) as line_no
        from {STAGE} s
        union all by name
        select reason, raw_text, line as line_no from {_CSV_REJ_LINES}"""
    )
