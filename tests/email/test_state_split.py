"""The warehouse and the state store as two databases (contract section "Warehouses"): an
evaluation reads the cohort from the warehouse and records in the state store exactly what one
database records, and the outcome models' copy of the state is replaced, never appended to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.warehouse_seed import seed_events

from email_jobs.campaigns import Campaign
from email_jobs.evaluate import evaluate_campaign
from email_jobs.guards import GuardInputs, GuardLimits
from email_jobs.state_copy import OUTCOME_SOURCES, copy_state
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect_both

D0 = datetime(2026, 1, 1)
CAMPAIGN = Campaign(
    name="split",
    cohort="cohort_split",
    relation_name='"wh"."analytics"."cohort_split"',
    entity="user",
    template="x",
    cooldown_days=30,
    columns=("entity_id", "email"),
)
# Each instant's cohort rows as dbt might leave them: a member listed twice (the smallest
# non-blank email wins), one without an address, one with a blank one.
COHORTS = [
    [("a", "a@example.com"), ("b", "b@example.com")],
    [("a", "a@example.com"), ("b", ""), ("b", "b2@example.com"), ("c", None), ("d", " ")],
    [("a", "a@example.com"), ("c", "c@example.com"), ("e", "e@example.com")],
]


def set_cohort(wh: Warehouse, rows: list[tuple[str, str | None]]) -> None:
    with wh.transaction():
        wh.execute("create schema if not exists analytics")
        wh.execute(
            "create table if not exists analytics.cohort_split (entity_id varchar, email varchar)"
        )
        wh.execute("delete from analytics.cohort_split")
        wh.executemany("insert into analytics.cohort_split values (?, ?)", rows)


def evaluate_all(wh: Warehouse, state: Warehouse) -> None:
    seed_events(wh, D0 - timedelta(days=10), D0 + timedelta(days=10))
    for n, rows in enumerate(COHORTS):
        set_cohort(wh, rows)
        evaluate_campaign(wh, CAMPAIGN, D0 + timedelta(days=n), GuardLimits(), "r", state=state)


def recorded(state: Warehouse) -> dict[str, list[tuple]]:
    return {
        "membership": sorted(
            state.fetchall("select as_of, entity_id, email from nudge.cohort_membership")
        ),
        "ledger": sorted(
            state.fetchall("select ledger_key, state, reason, recipient from nudge.send_ledger"),
        ),
        "evaluations": sorted(
            state.fetchall(
                "select as_of, kind, members, entered, exited, sendable, skipped "
                "from nudge.evaluations"
            )
        ),
    }


@pytest.fixture(params=["duckdb+postgres", "postgres+duckdb"])
def split(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: str
) -> Iterator[tuple[Warehouse, Warehouse]]:
    """(warehouse, state store): DuckDB and Postgres, either way round."""
    duck = f"duckdb:///{tmp_path}/db.duckdb"
    warehouse, state = (
        (duck, postgres_database)
        if request.param == "duckdb+postgres"
        else (postgres_database, duck)
    )
    settings = Settings(warehouse=warehouse, state_store=state, _env_file=None)
    assert not settings.state_is_warehouse
    with connect_both(settings) as pair:
        yield pair


pytestmark = pytest.mark.postgres


def test_two_databases_record_what_one_records(split, tmp_path: Path) -> None:
    wh, state = split
    evaluate_all(wh, state)
    with connect_both(Settings(warehouse=f"duckdb:///{tmp_path}/one.duckdb", _env_file=None)) as (
        one,
        same,
    ):
        assert one is same
        evaluate_all(one, one)  # the single-SQL path
        expected = recorded(one)
    got = recorded(state)
    assert got == expected
    assert len(got["ledger"]) == 3  # c and d entered at day 1 (no usable address), e at day 2
    day1 = {e: email for as_of, e, email in got["membership"] if as_of == D0 + timedelta(days=1)}
    assert day1 == {"a": "a@example.com", "b": "b2@example.com", "c": None, "d": " "}
    assert not wh.table_exists("nudge", "send_ledger")  # nothing of the state in the warehouse
    assert not wh.table_exists("nudge", "cohort_membership")


def test_the_copy_for_the_outcome_models_replaces_the_previous_one(split) -> None:
    wh, state = split
    evaluate_all(wh, state)
    first = copy_state(state, wh)
    assert set(first) == set(OUTCOME_SOURCES)
    assert first["cohort_membership"] == len(recorded(state)["membership"]) > 0
    state.execute("delete from nudge.send_ledger where reason is not null")
    state.commit()
    second = copy_state(state, wh)
    for table in OUTCOME_SOURCES:
        copied = wh.fetchone(f"select count(*) from nudge.{table}")
        assert copied == (second[table],), table
    assert second["send_ledger"] < first["send_ledger"]
    assert sorted(wh.fetchall("select ledger_key, state from nudge.send_ledger")) == sorted(
        state.fetchall("select ledger_key, state from nudge.send_ledger")
    )


def test_one_database_copies_nothing(tmp_path: Path) -> None:
    settings = Settings(warehouse=f"duckdb:///{tmp_path}/wh.duckdb", _env_file=None)
    with connect_both(settings) as (wh, state):
        assert copy_state(state, wh) == {}
        assert not wh.table_exists("nudge", "send_ledger")


@pytest.mark.spark
def test_on_spark_the_cohort_is_read_there_and_the_state_copied_back(
    spark_warehouse: dict[str, str], postgres_database: str
) -> None:
    """Warehouse on Spark, state on Postgres: an evaluation records in Postgres, and the copy
    lands in Spark's nudge database with its instants unchanged."""
    settings = Settings(
        warehouse=spark_warehouse["NUDGE_WAREHOUSE"],
        spark_dir=spark_warehouse["NUDGE_SPARK_DIR"],
        spark_connect_port=int(spark_warehouse["NUDGE_SPARK_CONNECT_PORT"]),
        state_store=postgres_database,
        _env_file=None,
    )
    campaign = replace(
        CAMPAIGN, relation_name="`analytics`.`cohort_split`", baseline_first_run=False
    )
    with connect_both(settings) as (wh, state):
        wh.execute(
            "create table analytics.cohort_split using parquet as select * from values "
            "('a', 'a@example.com'), ('b', ''), ('b', 'b@example.com') as t(entity_id, email)"
        )
        quiet = GuardInputs(D0, D0.date(), 10, 10, (10,) * 7, None, None, None, None)
        result = evaluate_campaign(
            wh, campaign, D0, GuardLimits(), "r", guard_inputs=quiet, state=state
        )
        assert result.entered == 2
        assert sorted(state.fetchall("select entity_id, email from nudge.cohort_membership")) == [
            ("a", "a@example.com"),
            ("b", "b@example.com"),
        ]
        copied = copy_state(state, wh)
        assert copied["send_ledger"] == 2 and copied["email_events"] == 0
        assert sorted(wh.fetchall("select entity_id, entry_as_of from nudge.send_ledger")) == [
            ("a", D0),
            ("b", D0),
        ]
