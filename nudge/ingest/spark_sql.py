"""Spark SQL judging each line as `staging.stage_sql` judges it on DuckDB, with the same reasons.

Spark's JSON parser (`from_json`) reads each line with an explicit schema in which every field is
text: a value of another JSON type arrives as its JSON text (42 -> '42', an object -> its
minified JSON), as `json_transform` gives it on DuckDB. `request` and `response` are parsed by a
second `from_json` from their text, so a non-object there is a missing field, not a bad line.
`mode=PERMISSIVE` keeps every line; the corrupt-record column marks the lines that are not one
JSON object, and only those are parsed again (`try_parse_json`) to tell bad JSON from another
JSON type. The type names in the reasons are DuckDB's (`json_type`), so both engines say the same.

Known differences from DuckDB (Jackson, not yyjson, parses the line):
- a line with text after its JSON object (`{...} xyz`) loads on Spark (Jackson stops at the end of
  the object); DuckDB rejects it as not valid JSON;
- a key repeated in one object: Spark keeps the last value, DuckDB the first;
- `metadata` that is a JSON string is stored without its quotes on Spark;
- an event without a transaction_id is keyed by the hash of its canonical JSON (keys sorted), so
  two copies differing only in key order are duplicates on Spark and not on DuckDB.
"""

from __future__ import annotations

from nudge.ingest.report import Kind
from nudge.ingest.staging import COLUMNS, EARLIEST_EVENT_TIME, RAW_TEXT_MAX

__all__ = ["COLUMNS", "IDENTITY", "judge_sql", "stage_columns"]

# What makes two rows the same: events by key (then the content a conflict compares), profiles
# by their whole content (as `loading._PROFILE_IDENTITY`).
IDENTITY: dict[Kind, tuple[str, ...]] = {
    "events": ("event_key", "request_time", "user_id", "company_id", "verb", "uri", "status"),
    "users": ("user_id", "company_id", "modified_time", "metadata"),
    "companies": ("company_id", "company_domain", "modified_time", "metadata"),
}

_OPTIONS = (
    "map('mode', 'PERMISSIVE', 'columnNameOfCorruptRecord', '_corrupt', "
    "'allowSingleQuotes', 'false', 'allowNonNumericNumbers', 'false')"
)
_SCHEMA: dict[Kind, str] = {
    "events": (
        "transaction_id string, user_id string, company_id string, session_token string, "
        "direction string, weight string, blocked_by string, tags string, metadata string, "
        "request string, response string, _corrupt string"
    ),
    "users": "user_id string, company_id string, modified_time string, metadata string, "
    "_corrupt string",
    "companies": "company_id string, company_domain string, modified_time string, "
    "metadata string, _corrupt string",
}
_REQUEST = "time string, uri string, verb string, api_version string, ip_address string"
_RESPONSE = "time string, status string"


def _utc(expr: str) -> str:
    """ISO 8601 text -> timestamp (the session's time zone is UTC; an offset is honoured).
    Spark's cast also takes a bare year ('2026'); DuckDB does not, hence the date prefix."""
    iso = "'^ *[0-9]{4}-[0-9]{2}-[0-9]{2}'"
    return f"case when {expr} rlike {iso} then cast({expr} as timestamp) end"


def _int(expr: str) -> str:
    """Text -> integer as DuckDB's try_cast: '404.0' -> 404, '3.5' -> 4, 'true' -> null."""
    d = f"cast(trim({expr}) as double)"
    return f"case when {d} between -2147483648 and 2147483647 then cast(round({d}) as int) end"


def _json_type() -> str:
    """DuckDB's `lower(json_type(line))` of a valid JSON line that is not an object."""
    t = "schema_of_variant(try_parse_json(line))"
    return f"""case
        when {t} like 'ARRAY%' then 'array'
        when {t} = 'BIGINT' then case when ltrim(line) like '-%' then 'bigint' else 'ubigint' end
        when {t} like 'DECIMAL%' or {t} in ('DOUBLE', 'FLOAT') then 'double'
        when {t} = 'STRING' then 'varchar'
        when {t} = 'BOOLEAN' then 'boolean'
        when {t} = 'VOID' then 'null'
        else lower({t}) end"""


_TYPED: dict[Kind, str] = {
    "events": f"""from_json(j.request, '{_REQUEST}') as rq,
        from_json(j.response, '{_RESPONSE}') as rs""",
    "users": "null as rq, null as rs",
    "companies": "null as rq, null as rs",
}
_TS: dict[Kind, str] = {
    "events": _utc("rq.time"),
    "users": _utc("j.modified_time"),
    "companies": _utc("j.modified_time"),
}
_GOOD: dict[Kind, str] = {
    "events": (
        f"ts is not null and ts >= timestamp'{EARLIEST_EVENT_TIME}' "
        "and ts < cast(date_add(dt, 2) as timestamp) and (rs.status is null or st is not null)"
    ),
    "users": (
        "nullif(trim(j.user_id), '') is not null and (j.modified_time is null or ts is not null)"
    ),
    "companies": (
        "nullif(trim(j.company_id), '') is not null and (j.modified_time is null or ts is not null)"
    ),
}
_FAILS: dict[Kind, str] = {
    "events": f"""
        when rq.time is null then 'missing request.time'
        when ts is null then 'request.time is not an ISO 8601 time: ' || left(rq.time, 80)
        when ts < timestamp'{EARLIEST_EVENT_TIME}'
            then 'request.time is before {EARLIEST_EVENT_TIME} (a clock reset or a default '
                || 'value): ' || left(rq.time, 80)
        when ts >= cast(date_add(dt, 2) as timestamp) then 'request.time is more than a day '
            || 'after the end of its dump''s day (dt=' || cast(dt as string) || '): '
            || left(rq.time, 80)
        else 'response.status is not an integer: ' || left(rs.status, 80)""",
    "users": """
        when nullif(trim(j.user_id), '') is null then 'missing user_id'
        else 'modified_time is not an ISO 8601 time: ' || left(j.modified_time, 80)""",
    "companies": """
        when nullif(trim(j.company_id), '') is null then 'missing company_id'
        else 'modified_time is not an ISO 8601 time: ' || left(j.modified_time, 80)""",
}
_SELECT: dict[Kind, str] = {
    "events": f"""
        case when reason is null then coalesce(nullif(j.transaction_id, ''),
            'sha:' || sha2(coalesce(to_json(try_parse_json(line)), line), 256)) end as event_key,
        nullif(j.transaction_id, '') as transaction_id,
        ts as request_time,
        {_utc("rs.time")} as response_time,
        j.user_id, j.company_id, j.session_token,
        rq.verb, rq.uri, rq.api_version, rq.ip_address,
        st as status, j.direction, {_int("j.weight")} as weight, j.blocked_by,
        j.tags, j.metadata""",
    "users": f"""
        trim(j.user_id) as user_id, j.company_id, ts as modified_time,
        get_json_object(j.metadata, '$.email') as email,
        get_json_object(j.metadata, '$.first_name') as first_name,
        get_json_object(j.metadata, '$.last_name') as last_name,
        {_utc("get_json_object(j.metadata, '$.created')")} as created,
        j.metadata""",
    "companies": """
        trim(j.company_id) as company_id, j.company_domain, ts as modified_time,
        get_json_object(j.metadata, '$.solutions_engineer_email') as solutions_engineer_email,
        get_json_object(j.metadata, '$.plan') as plan,
        j.metadata""",
}


def stage_columns(kind: Kind) -> tuple[str, ...]:
    return ("idx", "line_no", "reason", "raw_text", *COLUMNS[kind])


def judge_sql(kind: Kind, lines: str) -> str:
    """The staged rows of `lines` (idx, line_no, line, dt): `reason` null for a good row, ''
    for a blank line (not a line read), else why it is rejected; `raw_text` of rejected lines."""
    status = _int("rs.status") if kind == "events" else "null"
    return f"""
    with source as (
        select idx, line_no, dt,
            case when line_no = 1 and startswith(line, '\ufeff') then substr(line, 2)
                 else line end as line
        from {lines}
    ), parsed as (
        select *, from_json(line, '{_SCHEMA[kind]}', {_OPTIONS}) as j from source
    ), nested as (
        select *, {_TYPED[kind]} from parsed
    ), typed as (
        select *, {_TS[kind]} as ts, {status} as st from nested
    ), judged as (
        select *, case
            when not is_valid_utf8(line) then 'line is not valid UTF-8'
            when j._corrupt is null and {_GOOD[kind]} then null
            when line is null or trim(BOTH ' \\t\\r\\n' FROM line) = '' then ''
            when j._corrupt is not null and try_parse_json(line) is null then 'not valid JSON'
            when j._corrupt is not null then 'not a JSON object: ' || {_json_type()}
            {_FAILS[kind]}
        end as reason
        from typed
    )
    select idx, line_no, reason,
        case when reason <> '' then left(make_valid_utf8(line), {RAW_TEXT_MAX}) end as raw_text,
        {_SELECT[kind]}
    from judged
    """
