"""Read path for a clean file: DuckDB's own JSON reader, one parse per event.

Applies to every file read on its own (first try) and is kept only when provably the same as
the line-by-line read (`read_by_line`), which reads a file as lines and parses each with
`json_transform` so that a bad line keeps its text and number, at about twice the cost. The
result of `read_json` (explicit structure, no error tolerance) is kept when:

- `read_json` raised nothing: every line is one JSON value the structure accepts;
- every row passes the kind's checks and (events) has a transaction_id, so no line would be
  rejected and no key needs the line's text;
- NDJSON: the number of rows equals the number of physical lines (`file_scan`). `read_json`
  skips blank lines; with none skipped, row i is line i (insertion order is preserved).

Otherwise the staging table is dropped and the caller takes the next path.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from nudge.ingest.landing import FileShape
from nudge.ingest.report import Kind
from nudge.ingest.staging import STAGE, STRUCTURES, StageCounts, number_rows, stage_sql, unsure_sql

log = logging.getLogger(__name__)


def read_json_source(structure: dict[str, Any], shape: FileShape, *, filename: bool = False) -> str:
    """A `read_json` call (path, or list of paths, as the first `?`) yielding one column `j` of
    the structure; with `filename`, also the `filename` each row comes from."""
    fmt = "array" if shape.is_array else "newline_delimited"
    column = _duckdb_type(structure).replace("'", "''")
    name, option = ("filename, ", ", filename = true") if filename else ("", "")
    return f"""(select {name}json as j, null::varchar as line from read_json(?, format = '{fmt}',
        records = false, columns = {{'json': '{column}'}},
        compression = '{"gzip" if shape.gzip else "none"}'{option}))"""


def read_clean_file(
    conn: duckdb.DuckDBPyConnection,
    kind: Kind,
    path: Path,
    shape: FileShape,
    lines: int | None,
    dt: date | None,
) -> StageCounts | None:
    """Stage `path` when it is clean (see the module docstring); None when it is not, or when
    its line count is unknown (an NDJSON file whose gzip stream could not be read to its end).
    """
    if not shape.is_array and lines is None:
        return None
    try:
        conn.execute(stage_sql(kind, read_json_source(STRUCTURES[kind], shape), dt), [str(path)])
    except duckdb.Error as exc:
        log.debug("%s: not clean (%s)", path, str(exc).splitlines()[0][:120])
        return None
    row = conn.execute(
        f"select count(*), count(*) filter (where {unsure_sql(kind)}) from {STAGE}"
    ).fetchone()
    assert row is not None
    if row[1] or (not shape.is_array and row[0] != lines):
        log.debug("%s: %d rows, %s lines, %d unsure: line by line", path, row[0], lines, row[1])
        conn.execute(f"drop table {STAGE}")
        return None
    return number_rows(conn)


def _duckdb_type(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return "STRUCT(" + ", ".join(f'"{k}" {_duckdb_type(v)}' for k, v in spec.items()) + ")"
