"""The staging table every read path fills, and the judgement of its rows.

A read path (`read_together`, `read_clean`, `read_by_line`) turns a file's JSON into rows of
STAGE: the kind's columns (COLUMNS), `reason` (null for a good row, '' for a blank line, else
why the line is rejected) and `raw_text` of rejected lines. `stage_sql` is the one judgement
they share, so a row is good or rejected for the same reason whichever path read it. STAGED
adds each row's physical line number; `loading` moves STAGED into `raw`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import duckdb

from nudge.ingest.report import Kind

log = logging.getLogger(__name__)

STAGE = "_nudge_stage"  # temp table: parsed rows of one file, `reason` null for good rows
STAGED = "_nudge_staged"  # temp view over STAGE adding `line_no`

RAW_TEXT_MAX = 4096

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


# Rows of a `read_json` read the line-by-line path might treat differently: any not plainly good
# (its reason needs the line's text), and events without a transaction_id (keyed by the text).
_UNSURE: dict[Kind, str] = {
    "events": "reason is not null or event_key is null",
    "users": "reason is not null",
    "companies": "reason is not null",
}


class FileVanished(Exception):
    """The file was listed but could not be opened any more."""


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
    conn.execute(f"drop table if exists {STAGE}")
    conn.execute(f"drop view if exists {STAGED}")


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


def number_rows(conn: duckdb.DuckDBPyConnection) -> StageCounts:
    """STAGED over STAGE when row i is line i (nothing was dropped from the read); its counts."""
    conn.execute(
        f"create or replace temp view {STAGED} as select *, rowid + 1 as line_no from {STAGE}"
    )
    return counts(conn)


def counts(conn: duckdb.DuckDBPyConnection) -> StageCounts:
    row = conn.execute(
        f"""select count(*) filter (where reason is null or reason <> ''),
                   count(*) filter (where reason is null),
                   count(*) filter (where reason <> '')
            from {STAGED}"""
    ).fetchone()
    assert row is not None
    return StageCounts(lines_read=int(row[0]), good=int(row[1]), rejected=int(row[2]))


def many_files_sql(kind: Kind, source: str, table: str | None = None) -> str:
    """The rows of many files at once, judged as `read_clean` judges one file's, plus the
    `filename` column of `source` (a union of `read_json_source(..., filename=True)`): a query,
    or with `table` the statement staging them into it.

    Every file is judged as if its dt had no upper bound: the caller checks each file's latest
    event time against its own dt (`latest_event_time`). Rows are unsure (`unsure_sql`) exactly
    when `read_clean` would find them so; for events, exactly when event_key is null.
    """
    return stage_sql(kind, source, None, table=table, carry="filename")


def unsure_sql(kind: Kind) -> str:
    """Staged rows a `read_json` read cannot vouch for (see `_UNSURE`)."""
    return _UNSURE[kind]


def stage_sql(
    kind: Kind,
    source: str,
    dt: date | None,
    *,
    guarded: bool = False,
    table: str | None = STAGE,
    carry: str = "",
) -> str:
    """The statement staging `source` into `table` (None: the query alone).

    `source` yields `line` (text, parsed here) or, from `read_json`, `j` already parsed. `dt` is
    the events' dump day (None: no upper bound on event times); `guarded` parses only valid
    JSON lines (a file with a malformed line), at the cost of a second parse.
    """
    keep = f"{carry}, " if carry else ""  # a source column passed through to the table
    structure = json.dumps(STRUCTURES[kind]).replace("'", "''")
    # A read_json source yields `j` already parsed (and `line` null).
    parse = "j" if "read_json(" in source else f"json_transform(line, '{structure}')"
    if guarded:
        parse = f"case when json_valid(line) then {parse} end"
    # `reason`: null for a good row, '' for a blank line (not a line read), else why rejected.
    latest = _latest(dt)
    good = _GOOD[kind].replace("$LATEST", latest)
    fails = (
        _FAILS[kind]
        .replace("$LATEST", latest)
        .replace("$EARLIEST", EARLIEST_EVENT_TIME)
        .replace("$DT", f"dt={dt.isoformat()}" if dt else "no dt")
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
