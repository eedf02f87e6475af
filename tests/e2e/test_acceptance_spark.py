"""The acceptance scenario with the warehouse on Spark and the state store on Postgres (issue 15):
the same exact emails, line accounting and ledger counts as on DuckDB, through the embedded Spark
(`spark://local[2]`) and through the same server as a Spark Connect cluster (`sc://HOST:PORT`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import spark_connect_url
from e2e.test_acceptance import run_outbox_scenario, run_smtp_scenario

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.postgres]


def test_scenario_on_embedded_spark_over_smtp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spark_warehouse, postgres_database: str
) -> None:
    # The session's server is this deployment's embedded Spark: same folder and port, so
    # `nudge run` finds it running rather than starting another.
    run_smtp_scenario(
        tmp_path, monkeypatch, {**spark_warehouse, "NUDGE_STATE_STORE": postgres_database}
    )


def test_scenario_through_spark_connect(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    spark_warehouse,
    postgres_database: str,
) -> None:
    stores = {
        "NUDGE_WAREHOUSE": spark_connect_url(spark_warehouse),
        "NUDGE_STATE_STORE": postgres_database,
    }
    run_outbox_scenario(tmp_path, monkeypatch, capsys, stores)
