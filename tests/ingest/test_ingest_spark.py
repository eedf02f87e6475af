"""Ingestion on Spark (issue 15): a hostile landing folder, ingested by Spark and by DuckDB.

The oracle is the DuckDB ingest of the same folder in the same test: every file's accounting,
every rejected line (file, line, reason) and every stored event and profile must be the same.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pytest

import nudge.ingest.spark_reader as spark_reader
from nudge.core.settings import Settings, load_settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest import IngestReport, ingest_pending
from tests.ingest.test_hostile_ingest import event, jsonl

pytestmark = pytest.mark.spark

DT, LATE_DT = "2026-11-27", "2026-11-28"


@pytest.fixture
def spark_wh(spark_warehouse: dict[str, str]) -> Iterator[Warehouse]:
    settings = Settings(
        warehouse=spark_warehouse["NUDGE_WAREHOUSE"],
        spark_dir=spark_warehouse["NUDGE_SPARK_DIR"],
        spark_connect_port=int(spark_warehouse["NUDGE_SPARK_CONNECT_PORT"]),
        state_store="duckdb:///unused.duckdb",
        _env_file=None,
    )
    with connect(settings) as w:
        yield w


@pytest.fixture
def duck_wh(tmp_path: Path) -> Iterator[Warehouse]:
    with connect(load_settings(warehouse=f"duckdb:///{tmp_path / 'oracle.duckdb'}")) as w:
        yield w


def _hostile_landing(root: Path) -> None:
    day = root / "events" / f"dt={DT}"
    day.mkdir(parents=True)
    t = f"{DT}T05:20:06.525Z"
    no_tx = {k: v for k, v in event("-", t).items() if k != "transaction_id"}
    lines = [
        json.dumps(event("a1", t)),
        '{"transaction_id": "bad", "request": {',  # not valid JSON
        "",  # a blank line: numbered, not a line read
        json.dumps(event("a1", t)),  # a duplicate within the file
        json.dumps(event("a1", f"{DT}T06:00:00Z")),  # ... that differs: a conflict
        json.dumps(no_tx),  # no transaction_id: keyed by its content
        json.dumps(no_tx),  # ... twice
        json.dumps(event("num-user", t, user_id=12345, company_id=7)),
        json.dumps(event("bool-status", t, response={"status": True})),
        json.dumps(event("float-status", t, response={"status": 404.0})),
        json.dumps(event("obj-time", {"$date": DT})),
        json.dumps(event("bad-time", "yesterday")),
        json.dumps(event("pre-2000", "1999-12-31T23:59:59Z")),
        json.dumps(event("future", "2099-01-01T00:00:00")),
        json.dumps({"transaction_id": "no-request"}),
        "42",
        "[1, 2]",
        '"text"',
        "null",
        json.dumps(event("offset", "2026-11-29T01:00:00+02:00")),  # 23:00Z on the 28th: fine
    ]
    (day / "a.jsonl").write_text("\ufeff" + "\r\n".join(lines) + "\r\n")
    (day / "b.jsonl.gz").write_bytes(
        gzip.compress(jsonl([event("a1", t), event("b1", t), event("b2", t)]))
    )
    packed = gzip.compress(
        jsonl([event(f"cut{i:03d}", t, user_id=f"u{i * 7919}") for i in range(300)])
    )
    (day / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])  # an upload cut off
    (day / "junk.jsonl.gz").write_bytes(b"\x1f\x8bnot gzip at all")
    array = [event("arr1", t), event("b1", t), {"transaction_id": "arr-bad"}, event("arr2", t)]
    (day / "batch.json").write_text(json.dumps(array, indent=2))
    (root / "users").mkdir()
    (root / "users" / "u.jsonl").write_bytes(
        jsonl(
            [
                {"user_id": "u1", "modified_time": t, "metadata": {"email": "a@x.io"}},
                {"user_id": "u1", "modified_time": t, "metadata": {"email": "a@x.io"}},
                {"user_id": " ", "modified_time": t},
                {"user_id": "u2", "modified_time": "soon"},
                {"user_id": "u3", "metadata": {"created": "2026-01-02T03:04:05+01:00"}},
            ]
        )
    )
    (root / "companies").mkdir()
    (root / "companies" / "c.jsonl").write_bytes(
        jsonl([{"company_id": "c1", "metadata": {"plan": "pro"}}, {"company_domain": "x.io"}])
    )


def _second_landing(root: Path) -> None:
    """A changed file re-landed and a late event for the earlier day, in a later dump."""
    a = root / "events" / f"dt={DT}" / "a.jsonl"
    a.write_text(a.read_text() + json.dumps(event("a-new", f"{DT}T07:00:00Z")) + "\n")
    st = a.stat()
    os.utime(a, (st.st_atime, st.st_mtime + 5))
    late = root / "events" / f"dt={LATE_DT}"
    late.mkdir()
    (late / "late.jsonl").write_bytes(
        jsonl([event("late-1", f"{DT}T23:00:00Z"), event("b2", f"{DT}T05:20:06.525Z")])
    )


def _files(report: IngestReport) -> list[tuple]:
    return sorted(
        (r.path, r.status, r.lines_read, r.loaded, r.duplicates, r.rejected, r.conflicts)
        for r in report.files
    )


def _stored(wh: Warehouse) -> dict[str, list[tuple]]:
    def rows(sql: str) -> list[tuple]:
        return sorted(tuple(r) for r in wh.fetchall(sql))

    return {
        "ingested_files": rows(
            "select kind, path, dt, lines_read, loaded, duplicates, rejected "
            "from raw.ingested_files"
        ),
        # An unreadable file's reason quotes the engine's own error: only its start is compared.
        "rejected": rows(
            "select kind, source_file, coalesce(source_line, 0), case when reason like "
            "'cannot read file:%' then 'cannot read file' else reason end from raw.rejected"
        ),
        "events": rows(
            "select source_file, source_line, coalesce(transaction_id, ''), request_time, "
            "coalesce(user_id, ''), coalesce(company_id, ''), coalesce(status, 0), verb, uri, dt "
            "from raw.events"
        ),
        "users": rows(
            "select user_id, source_file, source_line, modified_time, "
            "coalesce(email, ''), coalesce(created, timestamp '1900-01-01') from raw.users"
        ),
        "companies": rows(
            "select company_id, source_file, source_line, coalesce(plan, '') from raw.companies"
        ),
    }


def accounted(report: IngestReport, wh: Warehouse) -> None:
    """lines_read = loaded + duplicates + rejected per file, in the report and the file rows, and
    raw.rejected holds exactly each file version's rejected lines (one Spark query)."""
    for r in report.files:
        assert r.lines_read == r.loaded + r.duplicates + r.rejected, r
    for f in wh.fetchdicts(
        """select f.*, (select count(*) from raw.rejected r
                        where r.source_file = f.path and r.run_id = f.run_id) as rejected_rows
           from raw.ingested_files f"""
    ):
        assert f["lines_read"] == f["loaded"] + f["duplicates"] + f["rejected"], f
        assert f["rejected_rows"] == f["rejected"], f


def _touched_days(wh: Warehouse, since: datetime) -> list[date]:
    """The days a downstream incremental model rebuilds after rows ingested after `since`."""
    return sorted(
        d
        for (d,) in wh.fetchall(
            "select distinct cast(request_time as date) from raw.events where ingested_at > ?",
            [since],
        )
    )


def test_a_hostile_landing_folder_on_spark_is_accounted_for_as_on_duckdb(
    spark_wh: Warehouse, duck_wh: Warehouse, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    _hostile_landing(landing)

    on_spark, on_duck = ingest_pending(spark_wh, landing, "r1"), ingest_pending(duck_wh, landing)

    assert _files(on_spark) == _files(on_duck)
    assert _stored(spark_wh) == _stored(duck_wh)
    accounted(on_spark, spark_wh)
    assert {r.status for r in on_spark.files} == {"loaded"}
    assert on_spark.totals["events"].rejected > 10 and on_spark.totals["events"].duplicates > 2
    first_end = max(r[0] for r in spark_wh.fetchall("select ingested_at from raw.events"))

    _second_landing(landing)
    again_spark, again_duck = (
        ingest_pending(spark_wh, landing, "r2"),
        ingest_pending(duck_wh, landing),
    )

    assert _files(again_spark) == _files(again_duck)
    assert _stored(spark_wh) == _stored(duck_wh)
    accounted(again_spark, spark_wh)
    changed = next(r for r in again_spark.files if r.path.endswith("a.jsonl"))
    assert changed.loaded == 1  # only the new line: the rest were loaded before
    assert _touched_days(spark_wh, first_end) == [date(2026, 11, 27)]  # the late event's day
    partitions = {r[0] for r in spark_wh.fetchall("show partitions raw.events")}
    assert partitions == {f"dt={DT}", f"dt={LATE_DT}"}

    unchanged = ingest_pending(spark_wh, landing, "r3")
    assert {r.status for r in unchanged.files} == {"skipped"}


def test_rows_of_an_ingest_that_died_before_recording_its_files_are_replaced(
    spark_wh: Warehouse, duck_wh: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = tmp_path / "landing"
    day = landing / "events" / f"dt={DT}"
    day.mkdir(parents=True)
    (day / "a.jsonl").write_bytes(jsonl([event("x1"), event("x2"), event("x1")]) + b"{oops\n")

    def dies(*args: object) -> None:  # the process dies after the rows, before the file rows
        raise KeyboardInterrupt

    monkeypatch.setattr(spark_reader, "_record_files", dies)
    with pytest.raises(KeyboardInterrupt):
        ingest_pending(spark_wh, landing, "crashed")
    monkeypatch.undo()
    assert spark_wh.fetchone("select count(*) from raw.events") == (2,)  # appended, unrecorded

    report = ingest_pending(spark_wh, landing, "r2")

    assert _files(report) == _files(ingest_pending(duck_wh, landing))
    assert _stored(spark_wh) == _stored(duck_wh)
    accounted(report, spark_wh)
