"""The Dagster instance of the docker deployment: docker/dagster.yaml on a real Postgres.

The test loads the very file docker compose mounts into every Dagster container, with its
DAGSTER_PG_* variables pointing at a fresh database on 127.0.0.1, and runs Nudge through it the
way an operator does inside the user_code container (`nudge run --as-of ...`).
"""

from __future__ import annotations

import email
import email.policy
import shutil
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from support.dagster_instances import DOCKER_DAGSTER_YAML, use_docker_instance
from support.scenario import EXPECTED, land_until, write_profiles

from nudge.app.cli import main as nudge
from nudge.core.instant import parse_as_of, to_iso

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
LOCAL_DAGSTER_YAML = REPO / "orchestration" / "dagster.local.yaml"
WRITER_TAG = "nudge/warehouse_writer"


def tag_limits(instance: dg.DagsterInstance) -> list[dict]:
    return list(instance.get_concurrency_config().run_queue_config.tag_concurrency_limits or [])


def test_docker_dagster_yaml_puts_every_storage_on_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str
) -> None:
    with use_docker_instance(monkeypatch, tmp_path / "home", postgres_database) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # A Postgres warehouse takes concurrent writers: the DuckDB one-writer limit is lifted.
        assert not [lim for lim in tag_limits(instance) if lim["key"] == WRITER_TAG]


def test_local_dagster_yaml_keeps_the_duckdb_writer_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The contrast that makes the docker file's choice visible: locally, writers queue.
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(LOCAL_DAGSTER_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert [lim["limit"] for lim in tag_limits(instance) if lim["key"] == WRITER_TAG] == [1]


def test_nudge_run_records_its_runs_in_the_postgres_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str
) -> None:
    """`nudge run` with DAGSTER_HOME on docker/dagster.yaml and the warehouse on Postgres too."""
    import psycopg2

    instance = use_docker_instance(monkeypatch, tmp_path / "home", postgres_database)
    landing, outbox = tmp_path / "landing", tmp_path / "outbox"
    write_profiles(landing)
    monkeypatch.setenv("NUDGE_LANDING_DIR", str(landing))
    monkeypatch.setenv("NUDGE_WAREHOUSE", postgres_database)  # same server and database
    monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "outbox")
    monkeypatch.setenv("NUDGE_OUTBOX_DIR", str(outbox))

    # The whole acceptance scenario (repeats included), on Postgres storage and warehouse.
    for day, _ in EXPECTED:
        land_until(landing, day)
        assert nudge(["run", "--as-of", day.isoformat()]) == 0, f"nudge run --as-of {day} failed"
    days = sorted({day for day, _ in EXPECTED})

    # The dagster.yaml in DAGSTER_HOME was used as is, not replaced by the local one.
    assert (tmp_path / "home" / "dagster.yaml").read_text() == DOCKER_DAGSTER_YAML.read_text()
    runs = instance.get_runs()
    by_job = {job: [r for r in runs if r.job_name == job] for job in {r.job_name for r in runs}}
    # Ingest runs catch up on new dt= folders; every evaluation and send is a run of its own.
    assert set(by_job) == {"nudge_ingest", "nudge_evaluate", "nudge_send"}
    assert len(by_job["nudge_evaluate"]) == len(by_job["nudge_send"]) == len(EXPECTED)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # Each evaluation run carries its instant (the end of the `--as-of` day) and its day partition.
    instants = sorted({r.tags.get("nudge/as_of", "") for r in by_job["nudge_evaluate"]})
    assert instants == [to_iso(parse_as_of(d.isoformat())) for d in days]
    partitions = sorted({r.tags.get("dagster/partition", "") for r in by_job["nudge_evaluate"]})
    assert partitions == [d.isoformat() for d in days]
    materialized = [
        e
        for r in runs
        for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    ]
    assert materialized, "the runs' asset materializations are in the event log"

    # Those runs are rows of Postgres, in the database DAGSTER_PG_DB names.
    url = urlparse(postgres_database)
    conn = psycopg2.connect(
        host=url.hostname, port=url.port, user=url.username, dbname=url.path.strip("/")
    )
    try:
        with conn.cursor() as cur:
            cur.execute("select run_id from runs")
            assert {row[0] for row in cur.fetchall()} == {r.run_id for r in runs}
    finally:
        conn.close()
    instance.dispose()

    # And the pipeline ran on the Postgres warehouse: the same emails as the acceptance scenario.
    sent = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(outbox.glob("*.eml"))
    ]
    keys = [
        (str(m["To"]), str(m["Cc"] or ""), str(m["X-Nudge-Campaign"]), str(m["X-Nudge-Entity"]))
        for m in sent
    ]
    expected = set().union(*(new for _, new in EXPECTED))
    assert sorted(keys) == sorted(expected)  # the same emails as on DuckDB, none twice
