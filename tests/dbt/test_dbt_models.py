"""The dbt project on real warehouses: handcrafted raw rows on both sides of every cohort
boundary, `dbt build` (models, data tests and dbt unit tests), exact cohort members; then a late
event and an incremental build. DuckDB always; Postgres and Spark (the `postgres` and `spark`
markers) the same way, with identical results.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import empty_spark_warehouse, spark_connect_url
from dbt.cli.main import dbtRunner, dbtRunnerResult
from support import spark_seed

from email_jobs.ledger import ensure_schema
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest.schema import DDL

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"
END = "2026-01-08T12:00:00Z"  # not a midnight: the windows have partial edge days
FIRST_INGEST = "2026-01-08 13:00:00"
LATE_INGEST = "2026-01-09 06:00:00"

NOT_ACTIVATED = {
    "na_in_min",  # signup 1 minute inside end - 7d
    "na_in_max",  # signup 1 minute inside end - 28d
    "na_evt_before_start",  # its only event is 1 s before the window
    "na_evt_at_end",  # its only event is exactly at end (excluded)
    "na_modified_only",  # no metadata.created: earliest modified_time
    "na_created_old_version",  # created only on an older profile version
}
TOO_MANY_4XX = {"x_1000", "x_at_start", "x_before_end", "x_noprofile"}


# -- raw rows -----------------------------------------------------------------------------------
class RawRows:
    """The rows of raw.users, raw.companies and raw.events, written to any engine by write_raw."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {"users": [], "companies": [], "events": []}

    def add_user(
        self,
        user_id: str,
        *,
        created: str | None,
        modified: str = "2025-06-01 00:00:00",
        email: str | None = None,
        company_id: str | None = None,
        line: int = 1,
    ) -> None:
        self.tables["users"].append(
            {
                "user_id": user_id,
                "company_id": company_id,
                "modified_time": ts(modified),
                "email": email or f"{user_id}@example.com",
                "first_name": user_id.title(),
                "last_name": "Test",
                "created": ts(created),
                "metadata": "{}",
                "source_file": "users.jsonl",
                "source_line": line,
                "ingested_at": ts(FIRST_INGEST),
            }
        )

    def add_events(
        self,
        user_id: str | None,
        at: str,
        status: int,
        n: int = 1,
        *,
        uri: str = "http://api.example.com/v1/widgets/{i}?page=2",
        verb: str = "GET",
        ingested_at: str = FIRST_INGEST,
    ) -> None:
        """n events at the same instant; `{i}` in the uri becomes 1..n (ids to fold)."""
        key = f"{user_id}-{at}-{status}-{verb}-{uri}-{ingested_at}"
        self.tables["events"] += [
            {
                "event_key": f"{key}#{i}",
                "request_time": ts(at),
                "user_id": user_id,
                "verb": verb,
                "uri": uri.replace("{i}", str(i)),
                "status": status,
                "dt": ts(ingested_at).date(),
                "source_file": "events.jsonl",
                "source_line": i,
                "ingested_at": ts(ingested_at),
            }
            for i in range(1, n + 1)
        ]


def ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def first_batch() -> RawRows:
    raw = RawRows()
    raw.tables["companies"].append(
        {
            "company_id": "co_se",
            "company_domain": "se.example",
            "modified_time": ts("2025-06-01 00:00:00"),
            "solutions_engineer_email": "se@vendor.example",
            "plan": "pro",
            "metadata": "{}",
            "source_file": "companies.jsonl",
            "source_line": 1,
            "ingested_at": ts(FIRST_INGEST),
        }
    )
    # cohort_not_activated_7d: end - 28d = 2025-12-11 12:00, end - 7d = 2026-01-01 12:00.
    raw.add_user("na_at_min", created="2026-01-01 12:00:00")
    raw.add_user("na_in_min", created="2026-01-01 11:59:00")
    raw.add_user("na_at_max", created="2025-12-11 12:00:00")
    raw.add_user("na_in_max", created="2025-12-11 12:01:00")
    for user_id, at in [
        ("na_evt_at_start", "2025-12-11 12:00:00"),
        ("na_evt_before_start", "2025-12-11 11:59:59"),
        ("na_evt_at_end", "2026-01-08 12:00:00"),
        ("na_evt_before_end", "2026-01-08 11:59:59.999"),
        ("na_evt_mid", "2025-12-25 10:00:00"),
    ]:
        raw.add_user(user_id, created="2025-12-20 00:00:00")
        raw.add_events(user_id, at, 200)
    raw.add_user(
        "na_modified_only",
        created=None,
        modified="2026-01-05 00:00:00",
        line=2,
        email="newer@example.com",
    )
    raw.add_user("na_modified_only", created=None, modified="2025-12-15 00:00:00", line=3)
    raw.add_user(
        "na_created_old_version", created="2025-12-16 00:00:00", modified="2025-12-01 00:00:00",
        line=4,
    )  # fmt: skip
    raw.add_user("na_created_old_version", created=None, modified="2026-01-06 00:00:00", line=5)

    # cohort_too_many_4xx_7d: window [2026-01-01 12:00, 2026-01-08 12:00).
    for user_id in [
        "x_1000",
        "x_999",
        "x_statuses",
        "x_at_start",
        "x_before_start",
        "x_at_end",
        "x_before_end",
    ]:
        raw.add_user(
            user_id,
            created="2025-06-01 00:00:00",
            company_id="co_se" if user_id == "x_1000" else "co_unknown",
        )
    raw.add_events("x_1000", "2026-01-05 10:00:00", 404, 985)
    raw.add_events(
        "x_1000", "2026-01-05 11:00:00", 400, 10, verb="POST", uri='/v1/"quoted"\\path/9?x="y"'
    )
    raw.add_events("x_1000", "2026-01-05 11:00:00", 404, 5, verb="PUT", uri="/v1/tab\there/{i}")
    raw.add_events("x_999", "2026-01-05 10:00:00", 400, 999)
    for status in (401, 403, 422):
        raw.add_events("x_statuses", "2026-01-05 10:00:00", status, 600)
    raw.add_events("x_statuses", "2026-01-05 10:00:00", 405, 999)
    for user_id, at in [
        ("x_at_start", "2026-01-01 12:00:00"),
        ("x_before_start", "2026-01-01 11:59:59"),
        ("x_at_end", "2026-01-08 12:00:00"),
        ("x_before_end", "2026-01-08 11:59:59"),
    ]:
        raw.add_events(user_id, "2026-01-04 00:00:00", 404, 999)
        raw.add_events(user_id, at, 404)
    raw.add_events("x_noprofile", "2026-01-07 23:59:59", 405, 1000)
    raw.add_events(None, "2026-01-05 10:00:00", 404, 2000)  # belongs to no user
    return raw


def late_event() -> RawRows:
    """One more 4xx for x_999 on a day already rolled up: the incremental build re-touches it."""
    raw = RawRows()
    raw.add_events("x_999", "2026-01-05 23:00:00", 404, 1, ingested_at=LATE_INGEST)
    return raw


def write_raw(target: Target, raw: RawRows) -> None:
    """The rows into the raw tables (created when missing): multi-row inserts on DuckDB and
    Postgres, DataFrames on Spark (tests/support/spark_seed.py)."""
    with connect(target.settings) as wh:
        if wh.kind == "spark":
            spark_seed.create_raw_tables(wh.conn)
            for table, rows in raw.tables.items():
                if rows:
                    spark_seed.write_rows(wh.conn, f"raw.{table}", rows)
            return
        with wh.transaction():
            for statement in DDL:
                wh.execute(statement)
            for table, rows in raw.tables.items():
                for chunk in range(0, len(rows), 500):
                    insert_rows(wh, f"raw.{table}", rows[chunk : chunk + 500])


def insert_rows(wh: Warehouse, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    one = f"({', '.join('?' * len(columns))})"
    wh.execute(
        f"insert into {table} ({', '.join(columns)}) values {', '.join([one] * len(rows))}",
        [row[c] for row in rows for c in columns],
    )


# -- running dbt --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    url: str  # NUDGE_WAREHOUSE form
    env: dict[str, str]  # the NUDGE_DBT_* variables (SPARK_REMOTE for Spark)
    spark: dict[str, str] | None = None  # the spark_server fixture's environment

    @property
    def settings(self) -> Settings:
        if self.spark is None:
            return Settings(warehouse=self.url)
        return Settings(
            warehouse=self.url,
            spark_dir=self.spark["NUDGE_SPARK_DIR"],
            spark_connect_port=int(self.spark["NUDGE_SPARK_CONNECT_PORT"]),
            state_store="duckdb:///unused.duckdb",  # required with Spark; nothing opens it
            _env_file=None,
        )


def dbt_args(args: list[str], work: Path) -> list[str]:
    return [
        *args,
        "--project-dir",
        str(DBT_PROJECT),
        "--profiles-dir",
        str(DBT_PROJECT),
        "--target-path",
        str(work / "target"),
        "--log-path",
        str(work / "logs"),
        "--vars",
        json.dumps({"nudge_as_of": END}),
    ]


def dbt_subprocess(args: list[str], target: Target, work: Path) -> list[dict[str, Any]]:
    """dbt in its own process, as the pipeline runs it (dbt-duckdb keeps its database open in the
    process that ran it); returns run_results.json's results."""
    dbt_exe = Path(sys.executable).with_name("dbt")
    proc = subprocess.run(
        [str(dbt_exe) if dbt_exe.exists() else "dbt", *dbt_args(args, work)],
        env={**os.environ, **target.env, "DO_NOT_TRACK": "1"},
        capture_output=True,
        text=True,
        # Spark answers each of a build's ~100 statements in seconds, not milliseconds.
        timeout=900 if target.spark else 300,
        check=False,
    )
    assert proc.returncode == 0, (
        f"dbt {args[0]} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    )
    return json.loads((work / "target" / "run_results.json").read_text())["results"]


def fetch(target: Target, sql: str) -> list[dict[str, Any]]:
    with connect(target.settings) as wh:
        if wh.kind == "spark":
            # dbt rewrote these tables from its own Spark session: this session's cached file
            # listings of them are stale (a read would fail on files that no longer exist).
            for table in sorted(set(re.findall(r"\b(?:raw|analytics)\.\w+", sql))):
                wh.execute(f"refresh table {table}")
        return wh.fetchdicts(sql)


def snapshot(target: Target) -> dict[str, Any]:
    """What the cohorts and rollups hold, in a form equal across engines."""
    not_activated = fetch(target, "select * from analytics.cohort_not_activated_7d")
    too_many = fetch(target, "select * from analytics.cohort_too_many_4xx_7d")
    return {
        "not_activated": {r["entity_id"]: r["signup_at"] for r in not_activated},
        "too_many_4xx": {
            r["entity_id"]: (
                r["email"],
                r["cc"],
                int(r["calls_4xx"]),
                json.loads(r["top_failing_endpoints_json"]),
            )
            for r in too_many
        },
        "daily": sorted(
            tuple(r.values())
            for r in fetch(
                target,
                (
                    "select user_id, activity_date, api_calls, calls_4xx, calls_404"
                    " from analytics.fct_user_daily_activity"
                ),
            )
        ),
        "endpoints": sorted(
            tuple(r.values())
            for r in fetch(
                target,
                (
                    "select user_id, activity_date, verb, endpoint, status_code, calls"
                    " from analytics.fct_user_daily_endpoint_status"
                ),
            )
        ),
    }


def as_rows(rows: list[dict[str, Any]]) -> list[tuple]:
    """Rows as sorted tuples (duplicates kept), counts as int (Postgres sums are numeric)."""
    return sorted(tuple(int(v) if k.startswith("n") else v for k, v in r.items()) for r in rows)


def rollups_match_raw_events(target: Target) -> None:
    """The incremental rollups equal a direct aggregate of raw.events."""
    direct = as_rows(
        fetch(
            target,
            (
                "select user_id, cast(request_time as date) as d, count(*) as n,"
                " count(case when status between 400 and 499 then 1 end) as n4"
                " from raw.events where user_id is not null group by 1, 2"
            ),
        )
    )
    rolled = as_rows(
        fetch(
            target,
            (
                "select user_id, activity_date as d, api_calls as n, calls_4xx as n4"
                " from analytics.fct_user_daily_activity"
            ),
        )
    )
    by_endpoint = as_rows(
        fetch(
            target,
            (
                "select user_id, activity_date as d, sum(calls) as n"
                " from analytics.fct_user_daily_endpoint_status group by 1, 2"
            ),
        )
    )
    assert rolled == direct
    assert by_endpoint == [(u, d, n) for u, d, n, _ in direct]


@dataclass(frozen=True)
class Outcome:
    first: dict[str, Any]  # after the first build
    after_late: dict[str, Any]  # after a late event and an incremental build


def run_scenario(target: Target, work: Path) -> Outcome:
    write_raw(target, first_batch())
    with connect(target.settings) as wh:
        # The nudge.* tables the outcome models read: the state store's (its copy on Spark).
        if wh.kind == "spark":
            spark_seed.create_state_tables(wh.conn)
        else:
            ensure_schema(wh)
    results = dbt_subprocess(["build"], target, work)
    unit_tests = [r for r in results if r["unique_id"].startswith("unit_test.")]
    assert len(unit_tests) >= 6
    assert all(r["status"] == "pass" for r in unit_tests), unit_tests
    first = snapshot(target)
    write_raw(target, late_event())
    # Incremental this time (the tests ran above; the rollups are checked against raw below).
    dbt_subprocess(["run"], target, work)
    rollups_match_raw_events(target)
    return Outcome(first, snapshot(target))


# -- fixtures -----------------------------------------------------------------------------------
def postgres_unavailable() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return None
    except OSError:
        return "PostgreSQL is not reachable on 127.0.0.1:5432"


@contextmanager
def scratch_postgres_database() -> Iterator[Target]:
    import psycopg2

    name = f"nudge_dbt_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'create database "{name}"')
    try:
        yield Target(
            f"postgresql://postgres@127.0.0.1:5432/{name}",
            {
                "NUDGE_DBT_TARGET": "postgres",
                "NUDGE_DBT_PG_HOST": "127.0.0.1",
                "NUDGE_DBT_PG_PORT": "5432",
                "NUDGE_DBT_PG_USER": "postgres",
                "NUDGE_DBT_PG_PASSWORD": "",
                "NUDGE_DBT_PG_DATABASE": name,
            },
        )
    finally:
        admin.cursor().execute(f'drop database if exists "{name}" with (force)')
        admin.close()


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome | str | Exception]:
    """The scenario on DuckDB and, when selected tests need them, on Postgres and on Spark, side
    by side (dbt processes at once keep this file short). Postgres and Spark map to the skip
    reason when they cannot run, or to the exception their run raised."""
    work = tmp_path_factory.mktemp("dbt_duckdb")
    duck = Target(
        f"duckdb:///{work / 'warehouse.duckdb'}",
        {
            "NUDGE_DBT_TARGET": "duckdb",
            "NUDGE_DBT_DUCKDB_PATH": str(work / "warehouse.duckdb"),
            "NUDGE_DBT_MEMORY_LIMIT": "1GB",
        },
    )
    wants_postgres = any(item.get_closest_marker("postgres") for item in request.session.items)
    reason = postgres_unavailable() if wants_postgres else "no Postgres test selected"
    results: dict[str, Outcome | str | Exception] = {"postgres": reason or ""}
    spark = spark_target(request, results)
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=3) as pool:
        futures = {"duckdb": pool.submit(run_scenario, duck, work)}
        if reason is None:
            pg = stack.enter_context(scratch_postgres_database())
            futures["postgres"] = pool.submit(
                run_scenario, pg, tmp_path_factory.mktemp("dbt_postgres")
            )
        if spark is not None:
            futures["spark"] = pool.submit(
                run_scenario, spark, tmp_path_factory.mktemp("dbt_spark")
            )
        for engine in ("postgres", "spark"):
            if engine in futures:
                try:
                    results[engine] = futures[engine].result()
                except Exception as exc:  # reported by that engine's test, not by DuckDB's
                    results[engine] = exc
        results["duckdb"] = futures["duckdb"].result()
    return results


def spark_target(
    request: pytest.FixtureRequest, results: dict[str, Outcome | str | Exception]
) -> Target | None:
    """The session's embedded Spark, emptied, when a selected test needs it; else None, with
    the reason (or the failure to start it) in results["spark"]."""
    if not any(item.get_closest_marker("spark") for item in request.session.items):
        results["spark"] = "no Spark test selected"
        return None
    try:
        env = request.getfixturevalue("spark_server")
    except (Exception, pytest.skip.Exception, pytest.fail.Exception) as exc:
        results["spark"] = str(exc) if isinstance(exc, pytest.skip.Exception) else exc
        return None
    empty_spark_warehouse(env)
    return Target(
        env["NUDGE_WAREHOUSE"],
        {"NUDGE_DBT_TARGET": "spark", "SPARK_REMOTE": spark_connect_url(env)},
        spark=env,
    )


@pytest.fixture(scope="module")
def duckdb_outcome(outcomes: dict[str, Outcome | str | Exception]) -> Outcome:
    outcome = outcomes["duckdb"]
    assert isinstance(outcome, Outcome)
    return outcome


# -- tests --------------------------------------------------------------------------------------
def test_cohort_members_at_every_boundary(duckdb_outcome: Outcome) -> None:
    first = duckdb_outcome.first
    assert set(first["not_activated"]) == NOT_ACTIVATED
    assert str(first["not_activated"]["na_modified_only"]) == "2025-12-15 00:00:00"
    assert str(first["not_activated"]["na_created_old_version"]) == "2025-12-16 00:00:00"
    assert set(first["too_many_4xx"]) == TOO_MANY_4XX


def test_too_many_4xx_row_carries_cc_and_top_endpoints(duckdb_outcome: Outcome) -> None:
    email, cc, calls, top = duckdb_outcome.first["too_many_4xx"]["x_1000"]
    assert (email, cc, calls) == ("x_1000@example.com", "se@vendor.example", 1000)
    assert top == [
        {"verb": "GET", "endpoint": "/v1/widgets/{id}", "status": 404, "calls": 985},
        {"verb": "POST", "endpoint": '/v1/"quoted"\\path/{id}', "status": 400, "calls": 10},
        {"verb": "PUT", "endpoint": "/v1/tab\there/{id}", "status": 404, "calls": 5},
    ]
    # A user seen only in events is a member, without an address or a CC.
    assert duckdb_outcome.first["too_many_4xx"]["x_noprofile"][:3] == (None, None, 1000)
    # The company on the profile has no company profile: no CC.
    assert duckdb_outcome.first["too_many_4xx"]["x_at_start"][1] is None


def test_late_event_reaches_cohort_through_incremental_build(duckdb_outcome: Outcome) -> None:
    after_late = duckdb_outcome.after_late
    assert set(after_late["too_many_4xx"]) == TOO_MANY_4XX | {"x_999"}
    assert after_late["too_many_4xx"]["x_999"][2] == 1000
    assert after_late["not_activated"] == duckdb_outcome.first["not_activated"]


def compile_inline(
    sql: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dbtRunnerResult, list[str]]:
    """`dbt compile --inline` in-process on a scratch DuckDB file (no warehouse needed); returns
    the result and dbt's log messages."""
    monkeypatch.setenv("NUDGE_DBT_TARGET", "duckdb")
    monkeypatch.setenv("NUDGE_DBT_DUCKDB_PATH", str(work / "scratch.duckdb"))
    messages: list[str] = []
    runner = dbtRunner(callbacks=[lambda event: messages.append(event.info.msg)])
    return runner.invoke(dbt_args(["compile", "--inline", sql, "--quiet"], work)), messages


def test_nudge_as_of_is_utc_and_a_date_means_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = {
        "2026-01-07": "2026-01-08 00:00:00",  # a date: the end of that UTC day
        "2026-01-08T13:30:00+01:30": "2026-01-08 12:00:00",  # an offset: converted to UTC
        "2026-01-08T12:00:00.250Z": "2026-01-08 12:00:00.250000",
        "2026-01-08 12:00": "2026-01-08 12:00:00",  # no offset: UTC
    }
    sql = " | ".join(f"{{{{ nudge_parse_as_of('{value}') }}}}" for value in cases)
    res, _ = compile_inline(sql, tmp_path, monkeypatch)
    assert res.success, res.exception
    assert res.result.results[0].node.compiled_code.split(" | ") == list(cases.values())


def test_bad_as_of_fails_naming_the_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, messages = compile_inline("{{ nudge_parse_as_of('last tuesday') }}", tmp_path, monkeypatch)
    assert not res.success
    assert any("dbt var nudge_as_of=last tuesday: use an ISO 8601" in m for m in messages)


@pytest.mark.spark
def test_spark_gives_identical_results(
    outcomes: dict[str, Outcome | str | Exception], duckdb_outcome: Outcome
) -> None:
    """`dbt build` (models, data tests, the unit tests) and the incremental run on Spark, the
    raw tables written as Spark ingestion writes them: the same cohorts and rollups."""
    spark = outcomes["spark"]
    if isinstance(spark, BaseException):
        raise spark
    if isinstance(spark, str):
        pytest.skip(spark)
    assert spark == duckdb_outcome


@pytest.mark.postgres
def test_postgres_gives_identical_results(
    outcomes: dict[str, Outcome | str | Exception], duckdb_outcome: Outcome
) -> None:
    postgres = outcomes["postgres"]
    if isinstance(postgres, Exception):
        raise postgres
    if isinstance(postgres, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the Postgres run could not happen: {postgres}")
        pytest.skip(postgres)
    assert postgres == duckdb_outcome
