"""Shared fixtures: a Postgres server (skipped off CI when absent), a warehouse of either engine,
a current dbt manifest."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432


def pytest_configure(config: pytest.Config) -> None:
    # As `nudge` does: under `make test &` SIGINT starts ignored, and Dagster's in-process runs
    # would then leave SIGTERM ignored in every server the tests start and stop.
    from nudge.app.cli import keep_sigterm_effective

    keep_sigterm_effective()


# The files with a Spark test. Under `make test` (`pytest -n 2 --dist loadfile`) one worker runs
# them all, one after the other, so the session's Spark server (a JVM that wants both cores)
# starts once; every other file goes whole to whichever worker is free.
SPARK_FILES = frozenset(
    {
        "tests/core/test_spark_server.py",
        "tests/dbt/test_dbt_models.py",
        "tests/e2e/test_acceptance_spark.py",
        "tests/email/test_state_split.py",
        "tests/ingest/test_ingest_spark.py",
    }
)


# The slowest files (minutes each on 2 cores), started first so that the two workers end
# together rather than one finishing a long file alone. Only an order: a stale list costs time.
SLOW_FILES = (
    "tests/e2e/test_acceptance.py",
    "tests/delivery/test_fault_injection.py",
    "tests/orchestration/test_evaluation_lock.py",
    "tests/e2e/test_add_a_cohort.py",
    "tests/orchestration/test_dagster_postgres.py",
    "tests/core/test_hostile_config.py",
    "tests/e2e/test_outcomes_report.py",
    "tests/orchestration/test_orchestration.py",
    "tests/e2e/test_demo.py",
    "tests/e2e/test_hostile_run.py",
    "tests/dbt/test_incremental.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if item.get_closest_marker("spark") and path not in SPARK_FILES:
            raise pytest.UsageError(
                f"{item.nodeid}: a Spark test in a file not in SPARK_FILES (tests/conftest.py)"
            )
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the schedule's
        # The Spark files first (the longest scope), then the slow ones; a file stays whole.
        rank = {path: n for n, path in enumerate((*sorted(SPARK_FILES), *SLOW_FILES))}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile, with SPARK_FILES as one scope (xdist_group cannot do it: pytest 9 keeps
    a node's id where xdist 3.8 no longer finds it)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SparkFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "spark" if path in SPARK_FILES else path

    return SparkFilesTogether(config, log)


def _postgres_up() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip with the reason on a machine without Postgres; on CI (CI=true) that is a failure."""
    if _postgres_up():
        return
    reason = f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: CI must run the Postgres tests")
    pytest.skip(f"{reason} (start it with pg_ctlcluster ... main start)")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named Postgres database; yields its URL and drops it afterwards."""
    with fresh_postgres_database() as url:
        yield url


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The database behind `postgres_database`, for tests that need more than one."""
    require_postgres()
    import psycopg2

    name = f"nudge_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'create database "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'drop database if exists "{name}" with (force)')
        admin.close()


@pytest.fixture(scope="session")
def dbt_manifest() -> None:
    """The dbt manifest the code location loads, parsed if the project changed."""
    from nudge.core.dbt_project import ensure_manifest

    ensure_manifest()


# Tests that take `warehouse_url` (or `wh`) run once per engine; the Postgres one carries the
# `postgres` marker.
ENGINES = ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=ENGINES)
def warehouse_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A new, empty warehouse: a DuckDB file in tmp_path, or a fresh Postgres database."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path}/wh.duckdb"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def wh(warehouse_url: str):
    """An open connection to `warehouse_url` (settings from nothing but that URL)."""
    from nudge.core.settings import Settings
    from nudge.core.warehouse import connect

    with connect(Settings(warehouse=warehouse_url, _env_file=None)) as w:
        yield w


# -- Spark: one embedded Spark Connect server for the whole session -------------------------------
# Starting a JVM costs 10-20 s, so every Spark test shares this server (issue 15). Tests that want
# an empty catalog take `spark_warehouse`, which drops Nudge's databases first.


def require_spark() -> None:
    """Skip with the reason without pyspark or Java; on CI (CI=true) that is a failure."""
    import importlib.util
    import shutil

    reason = None
    if importlib.util.find_spec("pyspark") is None:
        reason = "pyspark is not installed (make install-spark)"
    elif shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        reason = "no Java runtime for Spark"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: CI must run the Spark tests")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def spark_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The session's embedded Spark: the environment that names it (NUDGE_WAREHOUSE=spark://
    local[2], its folder and port); its Connect URL is `sc://127.0.0.1:<NUDGE_SPARK_CONNECT_PORT>`."""
    require_spark()
    from nudge.core.settings import Settings
    from nudge.core.spark import ensure_local_server, stop_local_server

    env = {
        "NUDGE_WAREHOUSE": "spark://local[2]",
        "NUDGE_SPARK_DIR": str(tmp_path_factory.mktemp("spark")),
        "NUDGE_SPARK_CONNECT_PORT": str(_free_port()),
        "NUDGE_SPARK_DRIVER_MEMORY": "2g",
    }
    settings = Settings(
        warehouse=env["NUDGE_WAREHOUSE"],
        spark_dir=env["NUDGE_SPARK_DIR"],
        spark_connect_port=int(env["NUDGE_SPARK_CONNECT_PORT"]),
        state_store="duckdb:///unused.duckdb",
        _env_file=None,
    )
    _SPARK_URLS[env["NUDGE_SPARK_CONNECT_PORT"]] = ensure_local_server(settings)
    try:
        yield env
    finally:
        stop_local_server(settings)


_SPARK_URLS: dict[str, str] = {}  # port -> the session server's Connect URL (with its token)


def spark_connect_url(spark_server: dict[str, str]) -> str:
    """The shared server as a cluster is named: `sc://localhost:PORT/;token=...`."""
    return _SPARK_URLS[spark_server["NUDGE_SPARK_CONNECT_PORT"]]


@pytest.fixture
def spark_warehouse(spark_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """The shared Spark with Nudge's databases (raw, analytics, nudge) dropped: an empty
    warehouse. Yields the same environment as `spark_server`."""
    empty_spark_warehouse(spark_server)
    yield spark_server


def empty_spark_warehouse(spark_server: dict[str, str]) -> None:
    """Empty Nudge's databases (raw, analytics, nudge) in the shared Spark: dropped with their
    tables, then created again, as a process's first Spark session leaves them (a later test in
    the same process reuses that session, which creates them only once)."""
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(spark_connect_url(spark_server)).getOrCreate()
    for schema in ("raw", "analytics", "nudge"):
        session.sql(f"drop database if exists {schema} cascade")
        session.sql(f"create database {schema}")
