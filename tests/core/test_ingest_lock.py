"""Two ingestions of one Spark warehouse take turns (Spark has no transactions or file lock):
the ingest assets hold a lock in the state store while they load."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from nudge.core.evaluation_lock import INGEST_LOCK_KEY, ingest_lock
from nudge.core.settings import Settings


def _free(url: str) -> bool:
    """Whether another session could take the ingestion lock now."""
    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("select pg_try_advisory_lock(%s)", [INGEST_LOCK_KEY])
            got = cur.fetchone()[0]
            if got:
                cur.execute("select pg_advisory_unlock(%s)", [INGEST_LOCK_KEY])
            return bool(got)
    finally:
        con.close()


@pytest.mark.postgres
def test_an_ingestion_into_spark_holds_the_state_stores_lock(postgres_database: str) -> None:
    settings = Settings(warehouse="spark://local[2]", state_store=postgres_database, _env_file=None)
    assert _free(postgres_database)
    with ingest_lock(settings):
        assert not _free(postgres_database)
    assert _free(postgres_database)


def test_a_duckdb_state_store_locks_a_file_beside_it(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    settings = Settings(
        warehouse="spark://local[2]", state_store=f"duckdb:///{state}", _env_file=None
    )
    with ingest_lock(settings):
        assert (tmp_path / "state.duckdb.ingest.lock").exists()


def test_duckdb_and_postgres_warehouses_lock_themselves(tmp_path: Path) -> None:
    settings = Settings(warehouse=f"duckdb:///{tmp_path / 'wh.duckdb'}", _env_file=None)
    with ingest_lock(settings):
        assert list(tmp_path.iterdir()) == []
