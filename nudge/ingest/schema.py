"""The `raw` schema: what ingestion writes and dbt's sources read.

Portable DDL (DuckDB and Postgres). Times are stored as UTC `timestamp` without zone.
"""

from __future__ import annotations

import re

RAW_SCHEMA = "raw"

DDL: tuple[str, ...] = (
    "create schema if not exists raw",
    # One row per distinct event (deduplicated by event_key).
    """
    create table if not exists raw.events (
        event_key       varchar not null,   -- transaction_id, or 'sha:' || hash of the line
        transaction_id  varchar,
        request_time    timestamp not null, -- UTC
        response_time   timestamp,
        user_id         varchar,
        company_id      varchar,
        session_token   varchar,
        verb            varchar,
        uri             varchar,
        api_version     varchar,
        ip_address      varchar,
        status          integer,
        direction       varchar,
        weight          integer,
        blocked_by      varchar,
        tags            varchar,
        metadata        varchar,            -- JSON text
        dt              date,               -- the dt= folder the event arrived in
        source_file     varchar not null,
        source_line     bigint not null,
        ingested_at     timestamp not null
    )
    """,
    # Every profile version seen (dbt picks the newest / earliest).
    """
    create table if not exists raw.users (
        user_id         varchar not null,
        company_id      varchar,
        modified_time   timestamp,
        email           varchar,
        first_name      varchar,
        last_name       varchar,
        created         timestamp,
        metadata        varchar,            -- JSON text
        source_file     varchar not null,
        source_line     bigint not null,
        ingested_at     timestamp not null
    )
    """,
    """
    create table if not exists raw.companies (
        company_id                 varchar not null,
        company_domain             varchar,
        modified_time              timestamp,
        solutions_engineer_email   varchar,
        plan                       varchar,
        metadata                   varchar,  -- JSON text
        source_file                varchar not null,
        source_line                bigint not null,
        ingested_at                timestamp not null
    )
    """,
    # Lines that could not be loaded, with the reason: nothing is lost silently.
    """
    create table if not exists raw.rejected (
        kind          varchar not null,     -- events | users | companies | suppressions
        source_file   varchar not null,
        source_line   bigint,               -- 1-based line (or array element) number
        raw_text      varchar,              -- truncated to 4096 characters
        reason        varchar not null,
        run_id        varchar,
        rejected_at   timestamp not null
    )
    """,
    # One row per ingested file version. lines_read = loaded + duplicates + rejected.
    """
    create table if not exists raw.ingested_files (
        kind          varchar not null,
        path          varchar not null,     -- relative to the landing folder
        dt            date,
        size_bytes    bigint not null,
        mtime         double precision not null,
        content_hash  varchar not null,
        lines_read    bigint not null,
        loaded        bigint not null,
        duplicates    bigint not null,
        rejected      bigint not null,
        run_id        varchar,
        ingested_at   timestamp not null
    )
    """,
)


def spark_ddl() -> tuple[str, ...]:
    """The same tables on Spark: Parquet, raw.events partitioned by its dump day (`dt`).

    Derived from DDL so that the columns stay one list: Spark has no `varchar` without a length,
    no `double precision`, and no NOT NULL on Parquet tables (every writer fills them anyway).
    """
    out: list[str] = []
    for ddl in DDL:
        if not ddl.lstrip().startswith("create table"):
            out.append(ddl)  # create schema: the same on Spark (a database)
            continue
        text = re.sub(r"--[^\n]*", "", ddl)
        text = re.sub(r"\bnot null\b", "", text)
        text = re.sub(r"\bvarchar\b", "string", text)
        text = re.sub(r"\bdouble precision\b", "double", text)
        text = re.sub(r"\binteger\b", "int", text)
        text = text.rstrip() + " using parquet"
        if "raw.events (" in text:
            text += " partitioned by (dt)"
        out.append(text)
    return tuple(out)
