"""The floor: one DuckDB query that reads the dump files and computes both seed cohorts.

What the pipeline must at least do for a first evaluation: parse every event once, deduplicate
what the 4xx count needs, and apply the contract's two cohort definitions at `end`. No ledger, no
staging, no quarantine, no rollups: the best this machine can do for the same answer.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

EVENT_TYPE = (
    "STRUCT(transaction_id VARCHAR, user_id VARCHAR, "
    'request STRUCT("time" VARCHAR), response STRUCT(status VARCHAR))'
)
USER_TYPE = "STRUCT(user_id VARCHAR, modified_time VARCHAR, metadata STRUCT(created VARCHAR))"
# The columns the bare read_json baseline loads: the same fields ingestion keeps.
BARE_COLUMNS = (
    "{'transaction_id':'VARCHAR','user_id':'VARCHAR','company_id':'VARCHAR',"
    "'session_token':'VARCHAR','direction':'VARCHAR','weight':'VARCHAR','blocked_by':'VARCHAR',"
    "'tags':'VARCHAR','metadata':'JSON','request':'STRUCT(\"time\" VARCHAR, uri VARCHAR, "
    "verb VARCHAR, api_version VARCHAR, ip_address VARCHAR)',"
    "'response':'STRUCT(\"time\" VARCHAR, status VARCHAR)'}"
)


def event_files(landing: Path) -> tuple[list[str], list[str]]:
    """(NDJSON files, JSON-array files) under events/dt=*/, plain or gzip."""
    ndjson: list[str] = []
    arrays: list[str] = []
    for p in sorted((landing / "events").glob("dt=*/*")):
        if p.name.endswith((".jsonl", ".jsonl.gz")):
            ndjson.append(str(p))
        elif p.name.endswith((".json", ".json.gz")):
            arrays.append(str(p))
    return ndjson, arrays


def _read(files: list[str], fmt: str, struct: str) -> str:
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return (
        f"select json as j from read_json([{listed}], format = '{fmt}', records = false, "
        f"columns = {{'json': '{struct}'}})"
    )


def _utc(expr: str) -> str:
    return f"try_cast({expr} as timestamptz)::timestamp"


def cohorts_sql(landing: Path, end: datetime) -> str:
    """One statement: (cohort, user_id) rows of both cohorts at `end` (session TimeZone UTC)."""
    ndjson, arrays = event_files(landing)
    parts = []
    if ndjson:
        parts.append(_read(ndjson, "newline_delimited", EVENT_TYPE))
    if arrays:
        parts.append(_read(arrays, "array", EVENT_TYPE))
    users = [str(p) for p in sorted((landing / "users").glob("*.json*"))]
    e = f"timestamp '{end:%Y-%m-%d %H:%M:%S}'"
    return f"""
    with events as materialized (
        select j.transaction_id as tx, j.user_id as user_id,
               {_utc('j.request."time"')} as ts, try_cast(j.response.status as integer) as status
        from ({" union all ".join(parts)})
        where j.user_id is not null
    ),
    versions as (
        select j.user_id as user_id, {_utc("j.modified_time")} as modified,
               {_utc("j.metadata.created")} as created
        from ({_read(users, "newline_delimited", USER_TYPE)})
    ),
    signups as (
        select user_id,
               coalesce(arg_max(created, modified) filter (where created is not null),
                        min(modified)) as signup
        from versions group by user_id
    )
    select 'not_activated_7d' as cohort, user_id from signups
    where signup > {e} - interval 28 day and signup < {e} - interval 7 day
      and user_id not in (
          select user_id from events where ts >= {e} - interval 28 day and ts < {e})
    union all
    select 'too_many_4xx_7d', user_id from events
    where status in (400, 404, 405) and ts >= {e} - interval 7 day and ts < {e}
    group by user_id having count(distinct tx) >= 1000
    """


def bare_read_sql(landing: Path) -> list[str]:
    """Statements loading every event file with DuckDB's read_json into one table."""
    ndjson, arrays = event_files(landing)
    out = []
    for files, fmt in ((ndjson, "newline_delimited"), (arrays, "array")):
        if not files:
            continue
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        head = "create table bare as" if not out else "insert into bare"
        out.append(
            f"{head} select * from read_json([{listed}], format = '{fmt}', "
            f"columns = {BARE_COLUMNS})"
        )
    return out
