"""The fast path for clean dump files: DuckDB's own JSON reader, one parse per event.

`staging` reads a file as lines (CSV reader) and parses each line with `json_transform`, so that
a bad line keeps its text and its number. That costs about twice a bare `read_json`. Most files
are clean, so each file is first read with `read_json` (explicit structure, no error tolerance)
straight into the staging table. The result is kept only when it is provably the same as the
line-by-line path's:

- `read_json` raised nothing: every line is one JSON value the structure accepts;
- every row passes the kind's checks and (events) has a transaction_id, so no line would be
  rejected and no key needs the line's text;
- NDJSON: the number of rows equals the number of physical lines, counted while the file is
  hashed. `read_json` skips blank lines; with none skipped, row i is line i (insertion order
  is preserved while staging).

Otherwise the staging table is dropped and the file takes the line-by-line path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from nudge.ingest.landing import GZIP_MAGIC, FileShape

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Scanned:
    content_hash: str  # as landing.content_hash: sha256 of the bytes as stored
    lines: int | None  # physical lines of the (decompressed) text; None when unreadable
    size: int  # the file's size and mtime before it was read
    mtime: float


def scan(path: Path) -> Scanned:
    """Hash the file and count its lines in one read (hashlib and zlib release the GIL, so this
    runs in a helper thread while DuckDB stages the previous file).

    One buffer is read into and reused: hashing and counting then work on memory still in the
    cache, and no chunk is allocated (fresh allocations cost as much as the hashing).
    """
    sha = hashlib.sha256()
    newlines = 0
    last = b""
    inflate: Any = None
    lines: int | None
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        n = f.readinto(buf)
        if buf[:2] == GZIP_MAGIC and n >= 2:
            inflate = zlib.decompressobj(wbits=31)
        try:
            while n:
                chunk = view[:n]
                sha.update(chunk)
                if inflate is None:
                    newlines += buf.count(b"\n", 0, n)
                    last = buf[n - 1 : n]
                else:
                    data = inflate.decompress(chunk)
                    while inflate.eof and inflate.unused_data:  # concatenated gzip members
                        rest = inflate.unused_data
                        inflate = zlib.decompressobj(wbits=31)
                        data += inflate.decompress(rest)
                    if data:
                        newlines += data.count(b"\n")
                        last = data[-1:]
                n = f.readinto(buf)
            complete = inflate is None or inflate.eof
            lines = newlines + (1 if last not in (b"", b"\n") else 0) if complete else None
        except zlib.error:
            while n := f.readinto(buf):  # the rest of the file, for its hash
                sha.update(view[:n])
            lines = None
    return Scanned("sha256:" + sha.hexdigest(), lines, st.st_size, st.st_mtime)


class Prefetch:
    """Scans the files about to be ingested, in order, in one helper thread, so that hashing a
    file overlaps DuckDB's work on the one before."""

    def __init__(self, paths: list[Path]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-scan")
        self._pending: dict[Path, Future[Scanned]] = {p: self._pool.submit(scan, p) for p in paths}

    def get(self, path: Path) -> Scanned:
        """The scan of `path` (its size and mtime say when it was taken)."""
        future = self._pending.pop(path, None)
        return future.result() if future is not None else scan(path)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)


def _duckdb_type(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return "STRUCT(" + ", ".join(f'"{k}" {_duckdb_type(v)}' for k, v in spec.items()) + ")"


def read_json_source(structure: dict[str, Any], shape: FileShape, *, filename: bool = False) -> str:
    """A `read_json` call (path, or list of paths, as the first `?`) yielding one column `j` of
    the structure; with `filename`, also the `filename` each row comes from."""
    fmt = "array" if shape.is_array else "newline_delimited"
    column = _duckdb_type(structure).replace("'", "''")
    name, option = ("filename, ", ", filename = true") if filename else ("", "")
    return f"""(select {name}json as j, null::varchar as line from read_json(?, format = '{fmt}',
        records = false, columns = {{'json': '{column}'}},
        compression = '{"gzip" if shape.gzip else "none"}'{option}))"""


def stage_fast(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    shape: FileShape,
    lines: int | None,
    stage_sql: str,
    unsure: str,
    stage: str,
) -> bool:
    """Stage `path` with `stage_sql` (a read_json source); False when the line-by-line path must
    do it instead (see the module docstring). `unsure` is true for rows it cannot vouch for."""
    if not shape.is_array and lines is None:
        return False
    try:
        conn.execute(stage_sql, [str(path)])
    except duckdb.Error as exc:
        log.debug("%s: not for the fast path (%s)", path, str(exc).splitlines()[0][:120])
        return False
    row = conn.execute(f"select count(*), count(*) filter (where {unsure}) from {stage}").fetchone()
    assert row is not None
    if row[1] or (not shape.is_array and row[0] != lines):
        log.debug("%s: %d rows, %s lines, %d unsure: line by line", path, row[0], lines, row[1])
        conn.execute(f"drop table {stage}")
        return False
    return True
