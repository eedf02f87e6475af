"""The same ingest on a Postgres warehouse gives the same rows as on DuckDB."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nudge.core.settings import load_settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest import ingest_pending

pytestmark = pytest.mark.postgres

SAMPLES = Path("/work/shared/samples")
if not SAMPLES.exists():
    SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
PG = os.environ.get("NUDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A uniquely named database for this test session, dropped at the end."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"nudge_test_ingest_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres at {PG} is unreachable in CI: {exc}")
        pytest.skip(f"Postgres at {PG} is unreachable ({str(exc).strip()}); start it to run")
    admin.autocommit = True
    admin.cursor().execute(f'create database "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        admin.cursor().execute(f'drop database if exists "{name}" with (force)')
        admin.close()


def _landing(root: Path) -> Path:
    day = root / "events" / "dt=2026-11-27"
    day.mkdir(parents=True)
    shutil.copy(SAMPLES / "real_events.jsonl", day)
    (root / "users").mkdir()
    (root / "companies").mkdir()
    shutil.copy(SAMPLES / "real_users.jsonl", root / "users")
    shutil.copy(SAMPLES / "real_companies.jsonl", root / "companies")
    first = (SAMPLES / "real_events.jsonl").read_text().splitlines()[0]
    anon = json.loads(first)
    del anon["transaction_id"]
    anon["request"]["time"] = "2026-11-27T07:20:06.525+02:00"
    anon["request"]["uri"] = "/v1/odd\u0000path"  # Postgres text cannot hold NUL
    (root / "events" / "dt=2026-11-28").mkdir()
    (root / "events" / "dt=2026-11-28" / "more.json").write_text(
        json.dumps([json.loads(first), anon, {"response": {"status": "abc"}}], indent=2)
    )
    (root / "events" / "dt=2026-11-28" / "bad.jsonl").write_bytes(
        b'{"oops"\n\n' + first.encode() + b"\n\xff\n"
    )
    return root


_QUERIES = {
    "events": "select * from raw.events order by event_key",
    "users": "select * from raw.users order by user_id, source_line",
    "companies": "select * from raw.companies order by company_id",
    "rejected": "select kind, source_file, source_line, raw_text, reason from raw.rejected "
    "order by source_file, source_line",
    "files": "select kind, path, dt, size_bytes, content_hash, lines_read, loaded, duplicates, "
    "rejected from raw.ingested_files order by path",
}
_VOLATILE = {"ingested_at", "rejected_at", "run_id", "mtime"}


def _snapshot(wh: Warehouse) -> dict[str, list[dict]]:
    return {
        name: [{k: v for k, v in r.items() if k not in _VOLATILE} for r in wh.fetchdicts(sql)]
        for name, sql in _QUERIES.items()
    }


def test_postgres_warehouse_gets_the_same_rows(pg_database: str, tmp_path: Path) -> None:
    landing = _landing(tmp_path / "landing")
    with connect(load_settings(warehouse=f"duckdb:///{tmp_path / 'wh.duckdb'}")) as wh:
        duck_report = ingest_pending(wh, landing)
        duck = _snapshot(wh)
    with connect(load_settings(warehouse=pg_database)) as wh:
        pg_report = ingest_pending(wh, landing)
        pg = _snapshot(wh)
        again = ingest_pending(wh, landing)

    assert [r.status for r in again.files] == ["skipped"] * len(again.files)
    assert pg_report.totals == duck_report.totals
    assert pg_report.totals["events"].loaded == 331  # 330 samples + the one without an id
    assert pg_report.totals["events"].duplicates == 2
    assert pg_report.newest_dt == duck_report.newest_dt
    odd = [e for e in duck["events"] if "\x00" in (e["uri"] or "")]
    assert len(odd) == 1
    odd[0]["uri"] = odd[0]["uri"].replace("\x00", "")  # Postgres text cannot hold NUL
    for name in _QUERIES:
        assert pg[name] == duck[name], name
