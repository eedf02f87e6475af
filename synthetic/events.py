"""Synthetic Moesif events, rendered and written by DuckDB (no Python per event).

Each event is a row of `range()` whose every attribute comes from `hash(seed, event_id, salt)`:
what call it is (a weighted catalogue per traffic mix), its time of day, ids in the path, latency,
transaction ids. Lines are rendered by string concatenation into the exact JSON Moesif's
middleware writes (see shared/samples/) and copied out as raw lines, several times faster than
building structs for DuckDB's JSON writer. Gzip is Python's zlib at level 1 (about 4x faster than
DuckDB's own gzip writer). Files are written by a few threads at once, each its own COPY.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import accumulate
from pathlib import Path

import duckdb

from synthetic.profiles import (
    MIX_ANON,
    MIX_AUTH,
    MIX_CLEAN,
    MIX_HEALTH,
    MIX_NORMAL,
    STORM_MIXES,
    Population,
)

log = logging.getLogger(__name__)

HOST = "api.example.com"
LATE_PERMILLE = 5  # events written to the next day's folder
DUPLICATE_PERMILLE = 2  # events written twice, to two files
GZIP_SHARE_PERMILLE = 100  # share of a day's events in its .jsonl.gz file (when files_per_day > 1)
ARRAY_FILE_EVERY = 7  # every 7th day, the day's last file is a JSON array (.json)
_BUCKETS = 10_000

_NOT_JSON_B64 = base64.b64encode(b"{not json").decode()
_UPLOAD = bytes(range(7, 7 + 48))
_UPLOAD_B64 = base64.b64encode(_UPLOAD).decode()
_HTML_405 = (
    b"<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n"
    b"<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
)
_HTML_405_B64 = base64.b64encode(_HTML_405).decode()


@dataclass(frozen=True)
class CallKind:
    """One kind of API call; bodies are JSON text (or a quoted base64 string) with placeholders
    {id} {n} {q} {date} {color} {sku}."""

    name: str
    verb: str
    path: str
    status: int
    query: str = ""
    ids: tuple[int, int] = (1, 5000)
    req_ctype: str | None = None
    req_body: str | None = None
    req_te: str | None = None
    req_len: int | None = None  # Content-Length when the body is base64 (else its JSON length)
    resp_ctype: str = "application/json"
    resp_body: str | None = None
    resp_te: str | None = "json"
    resp_len: int | None = None
    resp_extra: str = ""  # more response headers, as JSON members with a leading comma
    latency: tuple[int, int] = (2, 120)


_WIDGET = '{"id":{id},"name":"widget-{id}","color":"{color}"}'
CATALOGUE: tuple[CallKind, ...] = (
    CallKind(
        "list_widgets",
        "GET",
        "/v1/widgets",
        200,
        "?limit={n}",
        resp_body='{"data":[' + _WIDGET + '],"has_more":true}',
    ),
    CallKind(
        "get_widget",
        "GET",
        "/v1/widgets/{id}",
        200,
        "?expand=owner",
        resp_body='{"id":{id},"name":"widget-{id}","color":"{color}","owner":{"type":"user"}}',
    ),
    CallKind("get_widget_plain", "GET", "/v1/widgets/{id}", 200, resp_body=_WIDGET),
    CallKind(
        "get_widget_404",
        "GET",
        "/v1/widgets/{id}",
        404,
        ids=(5001, 99999),
        resp_body='{"error":"widget {id} not found"}',
    ),
    CallKind(
        "create_widget",
        "POST",
        "/v1/widgets",
        201,
        req_ctype="application/json",
        req_body='{"name":"w{n}","color":"{color}"}',
        req_te="json",
        resp_body='{"id":{id},"name":"w{n}","color":"{color}"}',
    ),
    CallKind(
        "create_widget_400",
        "POST",
        "/v1/widgets",
        400,
        req_ctype="application/json",
        req_body=f'"{_NOT_JSON_B64}"',
        req_te="base64",
        req_len=9,
        resp_body='{"error":"body must be JSON"}',
    ),
    CallKind(
        "create_widget_422",
        "POST",
        "/v1/widgets",
        422,
        req_ctype="application/json",
        req_body='{"color":"{color}"}',
        req_te="json",
        resp_body='{"error":"validation failed","fields":{"name":"required"}}',
    ),
    CallKind(
        "update_widget",
        "PUT",
        "/v1/widgets/{id}",
        200,
        req_ctype="application/json",
        req_body='{"color":"{color}"}',
        req_te="json",
        resp_body='{"id":{id},"color":"{color}"}',
    ),
    CallKind(
        "update_widget_400",
        "PUT",
        "/v1/widgets/{id}",
        400,
        req_ctype="application/json",
        req_body='{"color":{n}}',
        req_te="json",
        resp_body='{"error":"color must be a string"}',
    ),
    CallKind("delete_widget", "DELETE", "/v1/widgets/{id}", 204, resp_te=None, resp_len=0),
    CallKind(
        "list_orders",
        "GET",
        "/v1/orders",
        200,
        "?page={n}",
        ids=(10000, 99999),
        resp_body='{"orders":[{"id":{id},"status":"shipped"}],"page":{n}}',
    ),
    CallKind(
        "create_order",
        "POST",
        "/v1/orders",
        201,
        ids=(10000, 99999),
        req_ctype="application/json",
        req_body='{"sku":"{sku}","quantity":{n}}',
        req_te="json",
        resp_body='{"id":{id},"status":"pending"}',
        latency=(20, 400),
    ),
    CallKind(
        "create_order_400",
        "POST",
        "/v1/orders",
        400,
        req_ctype="application/json",
        req_body='{"sku":"{sku}","quantity":0}',
        req_te="json",
        resp_body='{"error":"quantity must be positive"}',
    ),
    CallKind(
        "get_order",
        "GET",
        "/v1/orders/{id}",
        200,
        ids=(10000, 99999),
        resp_body='{"id":{id},"sku":"{sku}","status":"shipped"}',
    ),
    CallKind(
        "delete_order_405",
        "DELETE",
        "/v1/orders/{id}",
        405,
        ids=(10000, 99999),
        req_body='""',
        req_te="base64",
        req_len=0,
        resp_ctype="text/html; charset=utf-8",
        resp_body=f'"{_HTML_405_B64}"',
        resp_te="base64",
        resp_len=len(_HTML_405),
        resp_extra=',"Allow":"GET, HEAD, OPTIONS"',
    ),
    CallKind(
        "search",
        "GET",
        "/v1/search",
        200,
        "?q={q}",
        resp_body='{"results":[' + _WIDGET + '],"total":{n}}',
        latency=(30, 600),
    ),
    CallKind(
        "search_429",
        "GET",
        "/v1/search",
        429,
        "?q={q}",
        resp_body='{"error":"rate limited"}',
        resp_extra=',"Retry-After":"2"',
    ),
    CallKind(
        "report_daily",
        "GET",
        "/v1/reports/daily",
        200,
        "?date={date}",
        resp_body='{"date":"{date}","calls":{id}}',
        latency=(100, 1500),
    ),
    CallKind(
        "report_daily_500",
        "GET",
        "/v1/reports/daily",
        500,
        "?date={date}",
        resp_body='{"error":"internal error"}',
        latency=(1000, 5000),
    ),
    CallKind(
        "admin_stats", "GET", "/v1/admin/stats", 200, resp_body='{"widgets":{id},"orders":{n}}'
    ),
    CallKind("admin_stats_403", "GET", "/v1/admin/stats", 403, resp_body='{"error":"forbidden"}'),
    CallKind(
        "widgets_401",
        "GET",
        "/v1/widgets",
        401,
        "?limit={n}",
        resp_body='{"error":"invalid api key"}',
    ),
    CallKind(
        "upload",
        "POST",
        "/v1/uploads",
        201,
        req_ctype="application/octet-stream",
        req_body=f'"{_UPLOAD_B64}"',
        req_te="base64",
        req_len=len(_UPLOAD),
        resp_body=f'{{"bytes":{len(_UPLOAD)}}}',
        latency=(40, 900),
    ),
    CallKind(
        "get_gadget_404",
        "GET",
        "/v1/gadgets/{id}",
        404,
        ids=(1, 60),
        resp_body='{"error":"gadget {id} not found"}',
    ),
    CallKind(
        "widgets_502",
        "GET",
        "/v1/widgets",
        502,
        resp_body='{"error":"bad gateway"}',
        latency=(5000, 30000),
    ),
    CallKind("health", "GET", "/health", 200, resp_body='{"ok":true}', latency=(0, 3)),
    CallKind("anon_401", "GET", "/v1/widgets", 401, resp_body='{"error":"missing api key"}'),
)

_NORMAL = {
    "list_widgets": 1800,
    "get_widget": 1500,
    "get_widget_plain": 600,
    "get_widget_404": 120,
    "create_widget": 700,
    "create_widget_400": 60,
    "create_widget_422": 150,
    "update_widget": 300,
    "update_widget_400": 30,
    "delete_widget": 100,
    "list_orders": 900,
    "create_order": 500,
    "create_order_400": 50,
    "get_order": 400,
    "delete_order_405": 25,
    "search": 600,
    "search_429": 80,
    "report_daily": 200,
    "report_daily_500": 30,
    "admin_stats": 100,
    "admin_stats_403": 60,
    "widgets_401": 100,
    "upload": 100,
    "get_gadget_404": 40,
    "widgets_502": 10,
}
_COUNTED = {400, 404, 405}
_BY_NAME = {k.name: k for k in CATALOGUE}
MIX_WEIGHTS: dict[str, dict[str, int]] = {
    MIX_NORMAL: _NORMAL,
    MIX_CLEAN: {k: w for k, w in _NORMAL.items() if _BY_NAME[k].status not in _COUNTED},
    MIX_AUTH: {"widgets_401": 40, "admin_stats_403": 20, "create_widget_422": 25, "search_429": 15},
    MIX_HEALTH: {"health": 1},
    MIX_ANON: {"anon_401": 1},
    STORM_MIXES[0]: {"get_widget_404": 80, "create_order_400": 15, "delete_order_405": 5},
    STORM_MIXES[1]: {"create_order_400": 70, "get_widget_404": 30},
    STORM_MIXES[2]: {"delete_order_405": 50, "update_widget_400": 30, "get_widget_404": 20},
}


MIXES: tuple[str, ...] = tuple(MIX_WEIGHTS)  # a mix's number in SQL is its index here


def _q(value: str | None) -> str:
    """A JSON string literal, or null."""
    return "null" if value is None else json.dumps(value)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# A rendered line is the concatenation of per-kind and per-sender fragments, built once here,
# and a few per-event values: few, long pieces make DuckDB's concat fast. The fragments sit in
# two small tables, `kinds` and `senders`, joined to the events at render time.
def _kind_fragments(k: CallKind) -> dict[str, str]:
    content = f',"Content-Type":{_q(k.req_ctype)},"Content-Length":"' if k.req_ctype else ""
    return {
        "k_verb": f'","verb":"{k.verb}","headers":{{"Host":"{HOST}","User-Agent":"',
        "k_content": content,
        "k_req_te": f',"transfer_encoding":{_q(k.req_te)}}},"response":{{"time":"',
        "k_status": (
            f'","status":{k.status},"headers":{{"Content-Type":{_q(k.resp_ctype)},'
            '"Content-Length":"'
        ),
        "k_resp_hdr": f'"{k.resp_extra},"X-Moesif-Transaction-Id":"',
        "k_resp_te": f',"ip_address":null,"transfer_encoding":{_q(k.resp_te)}}},',
    }


@dataclass(frozen=True)
class _Sender:
    user_id: str | None
    company_id: str | None
    session_token: str | None
    user_agent: str
    ip_address: str
    api_version: str
    datacenter: str

    def fragments(self) -> dict[str, str]:
        key = f',"X-Api-Key":{_q(self.session_token)}' if self.session_token else ""
        return {
            "s_agent": (
                f'{self.user_agent}","Accept-Encoding":"gzip, deflate","Accept":"*/*",'
                '"Connection":"keep-alive"'
            ),
            "s_key": f'{key},"X-Moesif-Transaction-Id":"',
            "s_addr": (
                f'"}},"api_version":"{self.api_version}","ip_address":{_q(self.ip_address)},"body":'
            ),
            "s_tail": (
                f'"session_token":{_q(self.session_token)},"tags":null,'
                f'"user_id":{_q(self.user_id)},"company_id":{_q(self.company_id)},'
                f'"metadata":{{"datacenter":"{self.datacenter}","service":"widgets-api"}},'
                '"direction":"Incoming","weight":1,"blocked_by":null,"transaction_id":"'
            ),
        }


_ANONYMOUS = {  # the senders of generate_profiles.ANON_SENDERS, by (negative) uid
    -1: _Sender(None, None, None, "ELB-HealthChecker/2.0", "10.0.3.17", "1.4.0", "us-west-2"),
    -2: _Sender(None, None, None, "python-requests/2.31.0", "198.51.100.23", "1.4.0", "us-west-2"),
    -3: _Sender(None, None, None, "curl/8.5.0", "203.0.113.99", "1.4.0", "us-west-2"),
}


def _senders(population: Population) -> dict[int, _Sender]:
    """Every sender of events by uid: the users, and the anonymous senders (negative uids)."""
    senders = dict(_ANONYMOUS)
    for u in population.users:
        senders[u.uid] = _Sender(
            user_id=u.user_id,
            company_id=u.company.company_id if u.company else None,
            session_token=f"key_{u.user_id[4:]}{u.uid:04x}",
            user_agent=u.user_agent,
            ip_address=u.ip_address,
            api_version=u.api_version,
            datacenter=u.datacenter,
        )
    return senders


def _columns(rows: Sequence[dict[str, object]]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def load_fragments(con: duckdb.DuckDBPyConnection, population: Population) -> None:
    """Tables `kinds` (by kind_id) and `senders` (by uid) holding the line fragments."""
    kinds = _columns(
        [
            {
                "kind_id": i,
                **_kind_fragments(k),
                "id_lo": k.ids[0],
                "id_span": k.ids[1] - k.ids[0] + 1,
                "lat_lo": k.latency[0],
                "lat_span": k.latency[1] - k.latency[0] + 1,
                "req_len": k.req_len,
                "resp_len": k.resp_len,
            }
            for i, k in enumerate(CATALOGUE)
        ]
    )
    senders = _columns(
        [{"uid": uid, **s.fragments()} for uid, s in sorted(_senders(population).items())]
    )
    for table, columns in (("kinds", kinds), ("senders", senders)):
        select = ", ".join(
            f"unnest(${name}::{'varchar' if name.startswith(('k_', 's_')) else 'bigint'}[])"
            f" as {name}"
            for name in columns
        )
        con.execute(f"create or replace table {table} as select {select}", columns)


def _kind_of_bucket_sql(bucket: str) -> str:
    """kind_id from (mix_id, bucket in 0..9999), each mix weighting the catalogue its own way."""
    index = {k.name: i for i, k in enumerate(CATALOGUE)}
    per_mix = []
    for mix_id, weights in enumerate(MIX_WEIGHTS.values()):
        total, acc, whens = sum(weights.values()), 0, []
        for name, weight in weights.items():
            acc += weight
            whens.append(f"when {bucket} < {acc * _BUCKETS // total} then {index[name]}")
        per_mix.append(f"when {mix_id} then case {' '.join(whens)} end")
    return f"case mix_id {' '.join(per_mix)} end"


def build_events(
    con: duckdb.DuckDBPyConnection,
    plan: Sequence[tuple[int, int, str, int]],
    *,
    seed: int,
    days: int,
    files_per_day: int,
) -> None:
    """`ev`: one row per line to write (a duplicate twice) with its call kind, folder day and
    file number, in event order."""
    offsets = list(accumulate((p[3] for p in plan), initial=0))
    con.execute(
        "create or replace table plan as select unnest($uid::integer[]) as uid, "
        "unnest($day::integer[]) as day, unnest($mix::integer[]) as mix_id, "
        "unnest($n::bigint[]) as n, unnest($off::bigint[]) as off",
        {
            "uid": [p[0] for p in plan],
            "day": [p[1] for p in plan],
            "mix": [MIXES.index(p[2]) for p in plan],
            "n": [p[3] for p in plan],
            "off": offsets[:-1],
        },
    )
    k = files_per_day
    # file 0 holds GZIP_SHARE_PERMILLE of the day when there are several files; the rest spread
    # evenly over the others.
    file_expr = (
        "0"
        if k == 1
        else f"case when hash($seed, id, 12) % 1000 < {GZIP_SHARE_PERMILLE} then 0 "
        f"else 1 + (hash($seed, id, 13) % {k - 1})::integer end"
    )
    con.execute(
        f"""
        create or replace table ev_base as
        with expanded as (
            -- ids follow the plan's row order (offsets come from Python): no sort needed,
            -- and the table comes out in id order
            select uid, day, mix_id, off, unnest(range(n)) as k from plan
        ),
        numbered as (
            select off + k as id, uid, day, mix_id from expanded
        )
        select id, uid, day, mix_id,
               ({_kind_of_bucket_sql(f"hash($seed, id, 1) % {_BUCKETS}")})::integer as kind_id,
               (hash($seed, id, 10) % 1000 < {LATE_PERMILLE} and day < {days - 1}) as late,
               hash($seed, id, 11) % 1000 < {DUPLICATE_PERMILLE} as dup,
               {file_expr} as file_no
        from numbered
        """,
        {"seed": seed},
    )
    # A duplicate goes to the next file of the same folder, or to the next day's folder when
    # there is one file a day (a re-sent batch); the copy is byte-identical.
    dup_target = (
        f"late::integer + day as dt, (file_no + 1) % {k} as file_no"
        if k > 1
        else "late::integer + day + 1 as dt, 0 as file_no"
    )
    con.execute(
        f"""
        create or replace table ev as
        select id, uid, day, mix_id, kind_id, late, false as is_copy,
               day + late::integer as dt, file_no
        from ev_base
        union all
        select * from (
            select id, uid, day, mix_id, kind_id, late, true as is_copy, {dup_target}
            from ev_base where dup
        ) where dt < {days}
        """
    )
    con.execute("drop table ev_base")


_PLACEHOLDER = re.compile(r"\{(id|n|color|sku|q|date)\}")
_VALUE_SQL = {
    "id": "wid::varchar",
    "n": "n::varchar",
    "color": "color",
    "sku": "sku",
    "q": "q",
    "date": "dstr",
}


def _template_sql(template: str | None) -> str:
    """A template as a SQL concat of its literal parts and the event's values."""
    if template is None:
        return "null"
    parts = []
    for i, piece in enumerate(_PLACEHOLDER.split(template)):
        if i % 2:
            parts.append(_VALUE_SQL[piece])
        elif piece:
            parts.append(_sql_str(piece))
    return f"concat({', '.join(parts)})" if len(parts) > 1 else (parts[0] if parts else "''")


def _per_kind_sql(render: Callable[[CallKind], str]) -> str:
    """CASE over kind_id: each kind's own expression, so no per-event string replace."""
    whens = " ".join(f"when {i} then {render(k)}" for i, k in enumerate(CATALOGUE))
    return f"case kind_id {whens} end"


def _uuid_sql(a: str, b: str) -> str:
    """A version-4-shaped UUID from two 64-bit hashes (a cast: much cheaper than printf)."""
    return (
        f"(((({a} & 18446744073709490175) | 16384)::uhugeint << 64) "
        f"| (({b} & 4611686018427387903) | 9223372036854775808)::uhugeint)::uuid::varchar"
    )


def render_sql(start: date) -> str:
    """The JSON lines of the `ev` rows of one (dt, file_no), in event order.

    Parameters: $seed, $dt, $file_no; tables ev, kinds, senders."""
    ms_day = 86_400_000
    storm_ids = ", ".join(str(MIXES.index(m)) for m in STORM_MIXES)
    # The ev scan must stay the probe side of both joins (kinds and senders are built): that
    # keeps the lines in event order; the connection disables join reordering for this.
    return f"""
    with e as (
        select e.id, e.late, e.mix_id, e.kind_id, k.*, s.*,
               date '{start.isoformat()}' + to_days(e.day) as d,
               hash($seed, e.id, 2) as h_time,
               hash($seed, e.id, 3) as h_vals,
               hash($seed, e.id, 6) as t1, hash($seed, e.id, 7) as t2
        from ev e
        join kinds k on k.kind_id = e.kind_id
        join senders s on s.uid = e.uid
        where e.dt = $dt and e.file_no = $file_no
    ),
    valued as (
        -- several values from slices of one hash; the header's transaction id from the
        -- event's own by xor (hashing again costs more than it adds)
        select *,
            id_lo + h_vals % id_span as wid,
            1 + (h_vals >> 32) % 9 as n,
            lat_lo + (h_vals >> 40) % lat_span as latency,
            xor(t2, 11400714819323198485::ubigint) as x1,
            xor(t1, 13787848793156543929::ubigint) as x2
        from e
    ),
    filled as (
        select *,
            d + to_milliseconds(case
                when late then 79_200_000 + (h_time >> 10) % 7_200_000
                when mix_id in ({storm_ids}) then 32_400_000 + (h_time >> 10) % 36_000_000
                when h_time % 1000 < 650 then 46_800_000 + (h_time >> 10) % 32_400_000
                else (h_time >> 10) % {ms_day}
            end::bigint) as t,
            strftime(d, '%Y-%m-%d') as dstr,
            list_element(['red', 'green', 'blue', 'black', 'teal'], (1 + n % 5)::integer)
                as color,
            list_element(['big+widget', 'blue', 'gear', 'sprocket', 'caf%C3%A9'],
                         (1 + wid % 5)::integer) as q,
            'SKU-' || (1000 + wid % 9000)::varchar as sku,
            {_uuid_sql("t1", "t2")} as tx,
            {_uuid_sql("x1", "x2")} as hx
        from valued
    ),
    bodies as (
        select *,
            {_per_kind_sql(lambda k: _template_sql(k.req_body))} as rq,
            {_per_kind_sql(lambda k: _template_sql(k.resp_body))} as rs,
            {_per_kind_sql(lambda k: _template_sql(k.path + k.query))} as target
        from filled
    )
    select concat(
        '{{"request":{{"time":"', strftime(t, '%Y-%m-%dT%H:%M:%S.%g'),
        '","uri":"http://{HOST}', target, k_verb, s_agent,
        case when rq is not null and k_content <> '' then concat(
            k_content, coalesce(req_len, strlen(rq))::varchar, '"') end,
        s_key, hx, s_addr, coalesce(rq, 'null'), k_req_te,
        strftime(t + to_milliseconds(latency::bigint), '%Y-%m-%dT%H:%M:%S.%g'),
        k_status, coalesce(resp_len, strlen(rs))::varchar, k_resp_hdr, hx,
        '"}},"body":', coalesce(rs, 'null'), k_resp_te, s_tail, tx, '"}}'
    ) as line, id
    from bodies
    """


@dataclass(frozen=True)
class EventFile:
    path: Path
    dt: int
    file_no: int
    kind: str  # "jsonl", "jsonl.gz" or "json"


def event_files(
    out_dir: Path, start: date, days: int, files_per_day: int, *, gzip_all: bool = False
) -> list[EventFile]:
    """Every event file the run writes, with its format (`gzip_all`: every JSON-lines file
    gzipped, about a seventh of the disk; the 100M-event benchmark needs it)."""
    files = []
    for d in range(days):
        dt = (start + timedelta(days=d)).isoformat()
        for f in range(files_per_day):
            if f == files_per_day - 1 and d % ARRAY_FILE_EVERY == 3:
                kind = "json"
            elif gzip_all or (files_per_day > 1 and f == 0) or (files_per_day == 1 and d % 3 == 1):
                kind = "jsonl.gz"
            else:
                kind = "jsonl"
            path = out_dir / "events" / f"dt={dt}" / f"events-{dt}-{f:02d}.{kind}"
            files.append(EventFile(path, d, f, kind))
    return files


def _gzip(src: Path, dest: Path) -> None:
    # Level 1: several times faster than the default, output about 15% larger; mtime=0 keeps
    # the bytes deterministic.
    with (
        src.open("rb") as fi,
        dest.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0) as fo,
    ):
        shutil.copyfileobj(fi, fo, 1 << 22)
    src.unlink()


def write_event_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[EventFile],
    population: Population,
    *,
    seed: int,
    start: date,
    workers: int | None = None,
) -> None:
    """Write every file, several at once.

    A file's rows sit in one or two row groups, so one COPY barely parallelises; instead each
    worker thread runs its own single-threaded COPY on its own cursor (measured: about 10% less
    CPU than DuckDB's own threads, and no idle core)."""
    render = render_sql(start)
    load_fragments(con, population)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    con.execute("set threads = 1")
    for f in files:
        f.path.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_write_one, con, render, f, {"seed": seed}) for f in files]
        for future in futures:
            future.result()


# render_sql relies on the ev scan staying the probe side of its joins (see there).
_KEEP_JOIN_ORDER = "set disabled_optimizers = 'join_order,build_side_probe_side'"


def _write_one(
    con: duckdb.DuckDBPyConnection, render: str, f: EventFile, common: dict[str, object]
) -> None:
    # Lines are pre-rendered JSON: written as a one-column CSV that never quotes. Compression is
    # explicit: DuckDB would otherwise guess it from a name containing ".gz".
    raw_lines = "format csv, header false, quote '', escape '', delimiter '\t', compression 'none'"
    params = {**common, "dt": f.dt, "file_no": f.file_no}
    lines = f"select line from ({render})"
    with con.cursor() as cur:
        cur.execute(_KEEP_JOIN_ORDER)
        if f.kind == "json":
            # One JSON array per file, the shape Moesif's batch API carries.
            array = "prefix E'[\\n', suffix E'\\n]\\n', new_line E',\\n'"
            cur.execute(f"copy ({lines}) to '{_sql_path(f.path)}' ({raw_lines}, {array})", params)
        elif f.kind == "jsonl.gz":
            tmp = f.path.with_name(f".{f.path.name.removesuffix('.gz')}.part")
            cur.execute(f"copy ({lines}) to '{_sql_path(tmp)}' ({raw_lines})", params)
            _gzip(tmp, f.path)
        else:
            cur.execute(f"copy ({lines}) to '{_sql_path(f.path)}' ({raw_lines})", params)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
