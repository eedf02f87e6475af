"""Parse one dump file into a staging table, in DuckDB, set-based, with an explicit schema.

The file is read as lines by DuckDB's CSV reader (one VARCHAR column, no quoting, a delimiter
that JSON text cannot contain unescaped) and each line is parsed with `json_transform` against
an explicit structure. This keeps every line, good or bad, with its number: `read_json` with
`ignore_errors` would turn a bad line into an all-NULL row, losing the text and the reason.

Line numbers come from the staging table's rowid: with `preserve_insertion_order` DuckDB
inserts a parallel scan in file order, so rowid + 1 is the line number (blank lines are kept as
rows for that reason). Lines the CSV reader itself refuses (not UTF-8, too long) are missing
from the scan; they are taken from its rejects table and the numbering is shifted around them.

Clean input takes one parse per line: `json_transform` raises on malformed JSON, and only
then is the file staged again with a `json_valid` guard (a second parse) to quarantine the bad
lines. The staged table holds parsed columns only, and the raw text of rejected lines.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb

from nudge.ingest.fastpath import read_json_source, stage_fast
from nudge.ingest.landing import FileShape, read_broken_gzip
from nudge.ingest.report import Kind

log = logging.getLogger(__name__)

STAGE = "_nudge_stage"  # temp table: parsed rows of one file, `reason` null for good rows
STAGED = "_nudge_staged"  # temp view over STAGE adding `line_no`
_LINES = "_nudge_lines"
_ELEMS = "_nudge_elems"
_CSV_REJECTS = "_nudge_csv_rejects"
_CSV_SCANS = "_nudge_csv_scans"
_CSV_REJ_LINES = "_nudge_csv_rej_lines"

RAW_TEXT_MAX = 4096
# DuckDB's CSV reader default; a larger limit on every file halves its speed, so a file with a
# longer line is read again with LONG_LINE_MAX (4x DuckDB's default JSON object size).
DEFAULT_LINE_MAX = 2 * 1024 * 1024
LONG_LINE_MAX = 64 * 1024 * 1024

_TEXT = "VARCHAR"
STRUCTURES: dict[Kind, dict[str, Any]] = {
    "events": {
        "transaction_id": _TEXT,
        "user_id": _TEXT,  # numbers arrive as their JSON text: 42 -> '42'
        "company_id": _TEXT,
        "session_token": _TEXT,
        "direction": _TEXT,
        "weight": _TEXT,
        "blocked_by": _TEXT,
        "tags": _TEXT,
        "metadata": "JSON",
        "request": {
            "time": _TEXT,
            "uri": _TEXT,
            "verb": _TEXT,
            "api_version": _TEXT,
            "ip_address": _TEXT,
        },
        "response": {"time": _TEXT, "status": _TEXT},
    },
    "users": {"user_id": _TEXT, "company_id": _TEXT, "modified_time": _TEXT, "metadata": "JSON"},
    "companies": {
        "company_id": _TEXT,
        "company_domain": _TEXT,
        "modified_time": _TEXT,
        "metadata": "JSON",
    },
}

# Columns of the staged rows that go to the raw table (besides source/line/ingest columns).
EVENT_COLUMNS = (
    "event_key", "transaction_id", "request_time", "response_time", "user_id", "company_id",
    "session_token", "verb", "uri", "api_version", "ip_address", "status", "direction",
    "weight", "blocked_by", "tags", "metadata",
)  # fmt: skip
USER_COLUMNS = (
    "user_id", "company_id", "modified_time", "email", "first_name", "last_name", "created",
    "metadata",
)  # fmt: skip
COMPANY_COLUMNS = (
    "company_id", "company_domain", "modified_time", "solutions_engineer_email", "plan",
    "metadata",
)  # fmt: skip
COLUMNS: dict[Kind, tuple[str, ...]] = {
    "events": EVENT_COLUMNS,
    "users": USER_COLUMNS,
    "companies": COMPANY_COLUMNS,
}


def _utc(expr: str) -> str:
    """ISO 8601 text -> UTC timestamp; no offset means UTC (the session's TimeZone is UTC).

    The zone-aware cast costs about 5x the plain one, so only text with an offset (a '+', or a
    '-' after the date) takes it; the plain cast reads 'Z' as UTC and would ignore an offset.
    """
    return (
        f"case when {expr} like '%+%' or substr({expr}, 11) like '%-%' "
        f"then try_cast({expr} as timestamptz)::timestamp else try_cast({expr} as timestamp) end"
    )


# Per kind: the test a good row passes (first, so clean rows leave the CASE at once), the
# reasons a non-blank object fails it, and the typed columns of a good row.
# Events: `$LATEST` is the latest plausible event time of the file (see `_latest`).
EARLIEST_EVENT_TIME = "2000-01-01"
_GOOD: dict[Kind, str] = {
    "events": (
        f"ts is not null and ts >= timestamp '{EARLIEST_EVENT_TIME}' and ts < $LATEST "
        "and (j.response.status is null or st is not null)"
    ),
    "users": (
        "nullif(trim(j.user_id), '') is not null and (j.modified_time is null or ts is not null)"
    ),
    "companies": (
        "nullif(trim(j.company_id), '') is not null and (j.modified_time is null or ts is not null)"
    ),
}
_FAILS: dict[Kind, str] = {
    "events": """
        when j.request."time" is null then 'missing request.time'
        when ts is null then 'request.time is not an ISO 8601 time: ' || left(j.request."time", 80)
        when ts < timestamp '$EARLIEST' then 'request.time is before $EARLIEST (a clock reset or '
            || 'a default value): ' || left(j.request."time", 80)
        when ts >= $LATEST then 'request.time is more than a day after the end of its dump''s '
            || 'day ($DT): ' || left(j.request."time", 80)
        else 'response.status is not an integer: ' || left(j.response.status, 80)""",
    "users": """
        when nullif(trim(j.user_id), '') is null then 'missing user_id'
        else 'modified_time is not an ISO 8601 time: ' || left(j.modified_time, 80)""",
    "companies": """
        when nullif(trim(j.company_id), '') is null then 'missing company_id'
        else 'modified_time is not an ISO 8601 time: ' || left(j.modified_time, 80)""",
}
_TYPED: dict[Kind, str] = {
    "events": f"""{_utc('j.request."time"')} as ts,
        try_cast(j.response.status as integer) as st""",
    "users": f"{_utc('j.modified_time')} as ts, null::integer as st",
    "companies": f"{_utc('j.modified_time')} as ts, null::integer as st",
}
_SELECT: dict[Kind, str] = {
    "events": f"""
        case when reason is null  -- json() only parses good lines; minified, so the
             -- same event keys alike from a pretty-printed array and from a line
            then coalesce(nullif(j.transaction_id, ''), 'sha:' || sha256(json(line)))
        end as event_key,
        nullif(j.transaction_id, '') as transaction_id,
        ts as request_time,
        {_utc('j.response."time"')} as response_time,
        j.user_id, j.company_id, j.session_token,
        j.request.verb, j.request.uri, j.request.api_version, j.request.ip_address,
        st as status, j.direction, try_cast(j.weight as integer) as weight, j.blocked_by,
        j.tags, j.metadata::varchar as metadata""",
    "users": f"""
        trim(j.user_id) as user_id, j.company_id, ts as modified_time,
        j.metadata ->> 'email' as email,
        j.metadata ->> 'first_name' as first_name,
        j.metadata ->> 'last_name' as last_name,
        {_utc("j.metadata ->> 'created'")} as created,
        j.metadata::varchar as metadata""",
    "companies": """
        trim(j.company_id) as company_id, j.company_domain, ts as modified_time,
        j.metadata ->> 'solutions_engineer_email' as solutions_engineer_email,
        j.metadata ->> 'plan' as plan,
        j.metadata::varchar as metadata""",
}


# Fast-path rows the line-by-line path might treat differently: any that is not plainly good
# (its reason needs the line's text), and events without a transaction_id (keyed by the text).
_UNSURE: dict[Kind, str] = {
    "events": "reason is not null or event_key is null",
    "users": "reason is not null",
    "companies": "reason is not null",
}


class FileVanished(Exception):
    """The file was listed but could not be opened any more."""


@dataclass(frozen=True)
class _Bounds:
    latest: str  # SQL timestamp: event times from it on are rejected
    dt: str  # the dump day, for the reason text


@dataclass
class StageCounts:
    lines_read: int  # non-blank lines (or array elements)
    good: int
    rejected: int


def prepare(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Session settings staging relies on; returns the previous values for `restore`."""
    prev = dict(
        conn.execute(
            "select name, value from duckdb_settings() "
            "where name in ('preserve_insertion_order', 'TimeZone')"
        ).fetchall()
    )
    conn.execute("set preserve_insertion_order = true")
    conn.execute("set TimeZone = 'UTC'")
    return prev


def restore(conn: duckdb.DuckDBPyConnection, prev: dict[str, str]) -> None:
    for name, value in prev.items():
        conn.execute(f"set {name} = '{value}'")
    for t in (STAGE, _LINES, _ELEMS, _CSV_REJECTS, _CSV_SCANS, _CSV_REJ_LINES):
        conn.execute(f"drop table if exists {t}")
    conn.execute(f"drop view if exists {STAGED}")


def _read_lines(shape: FileShape, line_max: int) -> str:
    """A `read_csv` call (path as the first `?`) yielding one row per physical line."""
    return f"""read_csv(?, columns = {{'line': 'VARCHAR'}}, header = false, auto_detect = false,
        delim = '\\x01', quote = '', escape = '', strict_mode = false,
        new_line = '\\r\\n', compression = '{"gzip" if shape.gzip else "none"}',
        max_line_size = {line_max}, ignore_errors = true, store_rejects = true,
        rejects_table = '{_CSV_REJECTS}', rejects_scan = '{_CSV_SCANS}')"""
    # new_line '\r\n' also ends lines at a bare '\n'; with '\n' a CRLF file gets extra rows.


def latest_event_time(dt: date) -> datetime:
    """The first event time that cannot be genuine in the dump folder dt=D.

    A dump written on day D (UTC) holds events up to the end of D; a day more allows for skewed
    clocks. Later times (a client's wrong clock, a year typed wrong) would count toward windows
    that have not happened yet, so they are rejected: decided from the data, never from the wall
    clock, so a replay decides the same way.
    """
    return datetime.combine(dt + timedelta(days=2), time())


def _latest(dt: date | None) -> str:
    """SQL for `latest_event_time` (no dt: no bound)."""
    if dt is None:
        return "timestamp 'infinity'"
    return f"timestamp '{latest_event_time(dt).isoformat(sep=' ')}'"


def stage_file(
    conn: duckdb.DuckDBPyConnection,
    kind: Kind,
    path: Path,
    shape: FileShape,
    dt: date | None = None,
    lines: int | None = None,
) -> StageCounts:
    """Parse `path` into STAGE / STAGED (columns of COLUMNS[kind], reason, raw_text, line_no).

    `dt` is the events' dump day: event times from before 2000 or more than a day after the end
    of that day are rejected. `lines`, the file's physical line count (fastpath.scan), lets a
    clean NDJSON file take the fast path; JSON arrays take it without.
    """
    bounds = _Bounds(latest=_latest(dt), dt=f"dt={dt.isoformat()}" if dt else "no dt")
    try:
        _drop_csv_rejects(conn)
        fast = _stage_sql(kind, read_json_source(STRUCTURES[kind], shape), bounds, guarded=False)
        if stage_fast(conn, path, shape, lines, fast, _UNSURE[kind], STAGE):
            conn.execute(
                f"create or replace temp view {STAGED} as "
                f"select *, rowid + 1 as line_no from {STAGE}"
            )
            return _counts(conn)
        if shape.is_array and _stage_array(conn, kind, path, shape, bounds):
            return _counts(conn)
        _stage_lines(conn, kind, path, shape, DEFAULT_LINE_MAX, bounds)
        long_lines = _csv_rejects(conn, "error_type = 'LINE SIZE OVER MAXIMUM'")
        if long_lines:
            log.info(
                "%s: %d lines over %d bytes; reading again", path, long_lines, DEFAULT_LINE_MAX
            )
            _stage_lines(conn, kind, path, shape, LONG_LINE_MAX, bounds)
        _number_lines(conn)
        return _counts(conn)
    except duckdb.IOException as exc:
        if not path.exists():
            raise FileVanished(str(path)) from exc
        raise


def stage_broken_gzip(
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
    stage_file(conn, kind, body, FileShape(gzip=False, is_array=False, crlf=False), dt)
    conn.execute(
        f"update {STAGE} set reason = ?, raw_text = ? "
        f"where rowid = (select max(rowid) from {STAGE})",
        [reason, broken.tail.decode("utf-8", "replace")[:RAW_TEXT_MAX]],
    )
    log.warning("%s: %s (line %d)", path, reason, broken.lines + 1)
    return _counts(conn)


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
    bounds: _Bounds,
) -> None:
    source = _read_lines(shape, line_max)
    try:
        _drop_csv_rejects(conn)
        conn.execute(_stage_sql(kind, source, bounds, guarded=False), [str(path)])
    except duckdb.InvalidInputException as exc:
        # Malformed JSON somewhere in the file: stage again, parsing only valid lines.
        log.info("%s: malformed JSON (%s); quarantining line by line", path, str(exc)[:120])
        _drop_csv_rejects(conn)
        conn.execute(_stage_sql(kind, source, bounds, guarded=True), [str(path)])


def _stage_array(
    conn: duckdb.DuckDBPyConnection, kind: Kind, path: Path, shape: FileShape, bounds: _Bounds
) -> bool:
    """One JSON array per file (Moesif's batch shape, maybe pretty-printed): stage its elements.

    Returns False when the file is not one valid JSON array; it is then read line by line.
    """
    _drop_csv_rejects(conn)
    conn.execute(
        f"create or replace temp table {_LINES} as "
        f"select line from {_read_lines(shape, LONG_LINE_MAX)}",
        [str(path)],
    )
    if _csv_rejects(conn):
        return False
    doc = f"(select string_agg(coalesce(line, ''), chr(10) order by rowid) as doc from {_LINES})"
    # CASE, not AND: DuckDB evaluates both sides of AND, and json_type raises on invalid JSON
    # (a lines file whose first line is an array would become unreadable).
    row = conn.execute(
        f"select case when json_valid(doc) then json_type(doc) = 'ARRAY' else false end from {doc}"
    ).fetchone()
    if not (row and row[0]):
        return False
    conn.execute(
        f"create or replace temp table {_ELEMS} as "
        f"select unnest(json_extract(doc, '$[*]'))::varchar as line from {doc}"
    )
    # Elements are re-serialized valid JSON, so the unguarded parse cannot fail.
    conn.execute(_stage_sql(kind, f"(select line from {_ELEMS})", bounds, guarded=False))
    conn.execute(
        f"create or replace temp view {STAGED} as select *, rowid + 1 as line_no from {STAGE}"
    )
    return True


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


def _counts(conn: duckdb.DuckDBPyConnection) -> StageCounts:
    row = conn.execute(
        f"""select count(*) filter (where reason is null or reason <> ''),
                   count(*) filter (where reason is null),
                   count(*) filter (where reason <> '')
            from {STAGED}"""
    ).fetchone()
    assert row is not None
    return StageCounts(lines_read=int(row[0]), good=int(row[1]), rejected=int(row[2]))


def many_files_sql(kind: Kind, source: str, table: str | None = None) -> str:
    """The rows of many files at once, judged as the fast path judges one file's, plus the
    `filename` column of `source` (a union of `read_json_source(..., filename=True)`): a query,
    or with `table` the statement staging them into it.

    Every file is judged as if its dt had no upper bound: the caller checks each file's latest
    event time against its own dt (`latest_event_time`). Rows are unsure (`unsure_sql`) exactly
    when the fast path would find them so; for events, exactly when event_key is null.
    """
    bounds = _Bounds(latest=_latest(None), dt="no dt")
    return _stage_sql(kind, source, bounds, guarded=False, table=table, carry="filename")


def unsure_sql(kind: Kind) -> str:
    """Staged rows the fast path cannot vouch for (see `_UNSURE`)."""
    return _UNSURE[kind]


def _stage_sql(
    kind: Kind,
    source: str,
    bounds: _Bounds,
    *,
    guarded: bool,
    table: str | None = STAGE,
    carry: str = "",
) -> str:
    """The statement staging `source` into `table` (None: the query alone)."""
    keep = f"{carry}, " if carry else ""  # a source column passed through to the table
    structure = json.dumps(STRUCTURES[kind]).replace("'", "''")
    # A fastpath source yields `j` already parsed (and `line` null).
    parse = "j" if "read_json(" in source else f"json_transform(line, '{structure}')"
    if guarded:
        parse = f"case when json_valid(line) then {parse} end"
    # `reason`: null for a good row, '' for a blank line (not a line read), else why rejected.
    good = _GOOD[kind].replace("$LATEST", bounds.latest)
    fails = (
        _FAILS[kind]
        .replace("$LATEST", bounds.latest)
        .replace("$EARLIEST", EARLIEST_EVENT_TIME)
        .replace("$DT", bounds.dt)
    )
    query = f"""
    with parsed as (
        select {keep}line, {parse} as j from {source}
    ), typed as (
        select {keep}line, j, {_TYPED[kind]} from parsed
    ), judged as (
        select *, case
            when {good} then null
            when line is null or trim(line, ' \t\r\n') = '' then ''
            when j is null and not json_valid(line) then 'not valid JSON'
            when j is null or json_type(line) <> 'OBJECT'
                then 'not a JSON object: ' || lower(json_type(line))
            {fails}
        end as reason
        from typed
    )
    select
        {keep}reason,
        case when reason <> '' then left(line, {RAW_TEXT_MAX}) end as raw_text,
        {_SELECT[kind]}
    from judged
    """
    return query if table is None else f"create or replace temp table {table} as {query}"
