"""A Dagster instance as the docker deployment opens it: docker/dagster.yaml on a real Postgres."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER_DAGSTER_YAML = REPO / "docker" / "dagster.yaml"


def use_docker_instance(
    monkeypatch: pytest.MonkeyPatch, home: Path, database_url: str
) -> dg.DagsterInstance:
    """DAGSTER_HOME = `home` holding a copy of docker/dagster.yaml, DAGSTER_PG_* = the database."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCKER_DAGSTER_YAML, home / "dagster.yaml")
    url = urlparse(database_url)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_HOST", url.hostname or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(url.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    monkeypatch.setenv("DAGSTER_PG_DB", url.path.strip("/"))
    return dg.DagsterInstance.get()
