"""Shared fixtures: a Postgres server (skipped off CI when absent), a warehouse of either engine,
a current dbt manifest."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432


def pytest_configure(config: pytest.Config) -> None:
    # As `nudge` does: under `make test &` SIGINT starts ignored, and Dagster's in-process runs
    # would then leave SIGTERM ignored in every server the tests start and stop.
    from nudge.app.cli import keep_sigterm_effective

    keep_sigterm_effective()


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
