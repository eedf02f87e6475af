"""The acceptance scenario with the warehouse on Spark and the state store on Postgres (issue 15):
the same exact emails over SMTP, line accounting and ledger counts as on DuckDB.

Both ways to a Spark warehouse take turns, evaluation by evaluation, on one catalog: the
embedded Spark (`spark://local[2]`, which Nudge finds running at its folder and port) and the
same server as a Spark Connect cluster (`sc://localhost:PORT/;token=...` with the token the
server keeps in its folder; pyspark sends a token over plain TCP to localhost only). Every
boundary is crossed by one of the two and the state each leaves is read by the other; one pass
instead of two keeps the suite inside CI's time (a Spark evaluation costs about a minute on 2
cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import spark_connect_url
from e2e.test_acceptance import check_status, run_smtp_scenario

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.postgres]


def test_scenario_on_spark_embedded_and_through_spark_connect(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    spark_warehouse: dict[str, str],
    postgres_database: str,
) -> None:
    embedded = {"NUDGE_WAREHOUSE": spark_warehouse["NUDGE_WAREHOUSE"]}
    connect = {"NUDGE_WAREHOUSE": spark_connect_url(spark_warehouse)}
    run_smtp_scenario(
        tmp_path,
        monkeypatch,
        {**spark_warehouse, "NUDGE_STATE_STORE": postgres_database},
        alternate=[embedded, connect],
    )
    for way in (embedded, connect):
        monkeypatch.setenv("NUDGE_WAREHOUSE", way["NUDGE_WAREHOUSE"])
        check_status(capsys)
