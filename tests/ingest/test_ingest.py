"""Ingestion of the landing folder into raw.* on a DuckDB warehouse."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from nudge.core.settings import load_settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest import IngestReport, ingest_pending
from nudge.ingest import landing as ingest_landing
from nudge.ingest import loading as ingest_loading

SAMPLES = Path("/work/shared/samples")
if not SAMPLES.exists():
    SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"


def event(tx: str | None, time: str = "2026-11-27T05:20:06.525", **extra: object) -> dict:
    e: dict = {
        "request": {"time": time, "uri": "https://api.example/v1/widgets/7", "verb": "GET"},
        "response": {"time": time, "status": 200},
        "user_id": "u1",
        "company_id": "c1",
    }
    if tx is not None:
        e["transaction_id"] = tx
    e.update(extra)
    return e


def write_lines(path: Path, lines: list[str], *, gz: bool = False, eol: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + eol for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_events(path: Path, events: list[dict], **kw: object) -> Path:
    return write_lines(path, [json.dumps(e) for e in events], **kw)  # type: ignore[arg-type]


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[Warehouse]:
    settings = load_settings(warehouse=f"duckdb:///{tmp_path / 'wh.duckdb'}")
    with connect(settings) as w:
        yield w


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    d = tmp_path / "landing"
    d.mkdir()
    return d


def day(landing: Path, dt: str = "2026-11-27") -> Path:
    return landing / "events" / f"dt={dt}"


def rows(wh: Warehouse, sql: str) -> list[tuple]:
    return wh.fetchall(sql)


def file_row(wh: Warehouse, path: str) -> dict:
    found = wh.fetchdicts(
        "select * from raw.ingested_files where path = ? order by ingested_at desc", [path]
    )
    assert found, f"{path} not recorded"
    return found[0]


def assert_counts_add_up(report: IngestReport, wh: Warehouse) -> None:
    for r in report.files:
        assert r.lines_read == r.loaded + r.duplicates + r.rejected, r
    for f in wh.fetchdicts("select * from raw.ingested_files"):
        assert f["lines_read"] == f["loaded"] + f["duplicates"] + f["rejected"], f


# -- the real samples -------------------------------------------------------------------------
def test_real_samples_load_as_they_are(wh: Warehouse, landing: Path) -> None:
    shutil.copy(SAMPLES / "real_events.jsonl", day(landing).mkdir(parents=True) or day(landing))
    (landing / "users").mkdir()
    (landing / "companies").mkdir()
    shutil.copy(SAMPLES / "real_users.jsonl", landing / "users")
    shutil.copy(SAMPLES / "real_companies.jsonl", landing / "companies")
    messages: list[str] = []

    report = ingest_pending(wh, landing, run_id="r1", progress=messages.append)

    t = report.totals
    assert (t["events"].loaded, t["events"].rejected, t["events"].duplicates) == (330, 0, 0)
    assert (t["users"].loaded, t["users"].rejected) == (3, 0)
    assert (t["companies"].loaded, t["companies"].rejected) == (2, 0)
    assert len(messages) == 3 and "real_events.jsonl" in messages[0]
    assert report.newest_dt is not None and report.newest_dt.isoformat() == "2026-11-27"
    assert_counts_add_up(report, wh)
    assert rows(wh, "select count(*), count(distinct event_key) from raw.events") == [(330, 330)]
    statuses = {s for (s,) in rows(wh, "select distinct status from raw.events")}
    assert statuses == {200, 201, 400, 401, 403, 404, 405, 422, 429, 500}
    first = wh.fetchdicts("select * from raw.events where source_line = 1")[0]
    assert first["request_time"] == datetime(2026, 11, 27, 5, 20, 6, 525000)
    assert first["transaction_id"] == "9d5800b1-e9f8-4d1d-acfa-a24870097ce2"
    assert first["verb"] == "GET" and first["dt"].isoformat() == "2026-11-27"
    assert json.loads(first["metadata"]) == {"datacenter": "us-west-2", "service": "widgets-api"}
    users = {u["user_id"]: u for u in wh.fetchdicts("select * from raw.users")}
    assert users["cap-user-1"]["email"] == "ada@cap-co-1.example"
    assert users["cap-user-1"]["modified_time"] == datetime(2025, 2, 1, 10, 30)  # +00:00
    assert users["cap-user-1"]["created"] == datetime(2025, 1, 15, 9, 0)
    assert users["cap-user-2"]["modified_time"] == datetime(2025, 2, 1, 10, 31, 5, 123000)
    assert users["cap-user-8"]["email"] is None and users["cap-user-8"]["company_id"] is None
    companies = {c["company_id"]: c for c in wh.fetchdicts("select * from raw.companies")}
    assert companies["cap-co-1"]["solutions_engineer_email"] == "se-1@vendor.example"
    assert companies["cap-co-1"]["plan"] == "pro"
    assert companies["cap-co-2"]["modified_time"] == datetime(2025, 2, 1, 11, 0)


# -- formats ------------------------------------------------------------------------------------
def test_every_dump_format_loads_the_same_events(wh: Warehouse, landing: Path) -> None:
    evs = [event(f"t{i}", f"2026-11-27T05:0{i}:00Z") for i in range(5)]
    d = day(landing)
    write_events(d / "a.jsonl", evs[:1])
    write_events(d / "b.jsonl.gz", evs[1:2], gz=True)
    (d / "c.json").write_text(json.dumps(evs[2:3], indent=2))  # pretty-printed batch
    (d / "d.json.gz").write_bytes(gzip.compress(json.dumps(evs[3:4]).encode()))
    write_events(d / "e.jsonl", evs[4:5], gz=True)  # gzip under a plain name

    report = ingest_pending(wh, landing)

    assert [r.loaded for r in report.files] == [1, 1, 1, 1, 1]
    got = rows(wh, "select transaction_id, source_file, source_line from raw.events order by 1")
    assert [g[0] for g in got] == ["t0", "t1", "t2", "t3", "t4"]
    assert {g[2] for g in got} == {1}
    assert_counts_add_up(report, wh)


def test_array_file_elements_are_numbered_and_quarantined(wh: Warehouse, landing: Path) -> None:
    batch = [event("a1"), {"no": "request"}, 42, event("a2", "not a time")]
    (day(landing).mkdir(parents=True) or day(landing) / "batch.json").write_text(
        json.dumps(batch, indent=2)
    )

    report = ingest_pending(wh, landing)

    assert (report.totals["events"].loaded, report.totals["events"].rejected) == (1, 3)
    rej = rows(wh, "select source_line, reason from raw.rejected order by source_line")
    assert [r[0] for r in rej] == [2, 3, 4]
    assert "missing request.time" in rej[0][1]
    assert "not a JSON object" in rej[1][1]
    assert "request.time" in rej[2][1] and "not a time" in rej[2][1]


# -- quarantine -----------------------------------------------------------------------------------
def test_malformed_lines_are_quarantined_with_line_numbers(wh: Warehouse, landing: Path) -> None:
    lines = [
        json.dumps(event("good1")),  # 1
        '{"transaction_id": "broken", "request": {',  # 2 not JSON
        "",  # 3 blank: not a line read
        "[1, 2]",  # 4 not an object
        json.dumps(event("notime", time=None)),  # 5 request.time null
        json.dumps(event("badtime", time="yesterday")),  # 6
        json.dumps({**event("abc"), "response": {"status": "abc"}}),  # 7
        json.dumps({**event("s404"), "response": {"status": "404"}}),  # 8 integer string: fine
        "   ",  # 9 blank
        json.dumps({**event("noreq"), "request": "GET /"}),  # 10
        json.dumps(event("good2")),  # 11
    ]
    write_lines(day(landing) / "mixed.jsonl", lines)

    report = ingest_pending(wh, landing, run_id="q1")

    r = report.files[0]
    assert (r.lines_read, r.loaded, r.duplicates, r.rejected) == (9, 3, 0, 6)
    assert report.rejected_share == pytest.approx(6 / 9)
    got = {tx: st for tx, st in rows(wh, "select transaction_id, status from raw.events")}
    assert got == {"good1": 200, "s404": 404, "good2": 200}
    rej = wh.fetchdicts("select * from raw.rejected order by source_line")
    assert [x["source_line"] for x in rej] == [2, 4, 5, 6, 7, 10]
    assert {x["source_file"] for x in rej} == {"events/dt=2026-11-27/mixed.jsonl"}
    assert {x["kind"] for x in rej} == {"events"} and {x["run_id"] for x in rej} == {"q1"}
    reasons = [x["reason"] for x in rej]
    assert reasons[0] == "not valid JSON"
    assert reasons[1] == "not a JSON object: array"
    assert reasons[2] == "missing request.time"
    assert reasons[3] == "request.time is not an ISO 8601 time: yesterday"
    assert reasons[4] == "response.status is not an integer: abc"
    assert reasons[5] == "missing request.time"
    assert rej[0]["raw_text"] == lines[1]
    assert file_row(wh, "events/dt=2026-11-27/mixed.jsonl")["rejected"] == 6


def test_raw_text_of_a_rejected_line_is_truncated(wh: Warehouse, landing: Path) -> None:
    write_lines(day(landing) / "x.jsonl", ["{" + "x" * 10_000])
    ingest_pending(wh, landing)
    assert rows(wh, "select length(raw_text) from raw.rejected") == [(4096,)]


def test_profiles_without_their_id_are_rejected(wh: Warehouse, landing: Path) -> None:
    write_lines(
        landing / "users" / "u.jsonl",
        [
            json.dumps({"user_id": 42, "modified_time": "2025-01-01T00:00:00Z", "metadata": {}}),
            json.dumps({"company_id": "c1", "metadata": {"email": "x@y"}}),
            json.dumps({"user_id": "u2", "modified_time": "soon"}),
        ],
    )
    write_lines(landing / "companies" / "c.jsonl", [json.dumps({"company_domain": "x.example"})])

    report = ingest_pending(wh, landing)

    assert rows(wh, "select user_id from raw.users") == [("42",)]  # a number, kept as text
    rej = rows(wh, "select kind, source_line, reason from raw.rejected order by kind, source_line")
    assert rej == [
        ("companies", 1, "missing company_id"),
        ("users", 2, "missing user_id"),
        ("users", 3, "modified_time is not an ISO 8601 time: soon"),
    ]
    assert_counts_add_up(report, wh)


# -- robustness ----------------------------------------------------------------------------------
def test_crlf_bom_blank_lines_and_empty_files(wh: Warehouse, landing: Path) -> None:
    d = day(landing)
    d.mkdir(parents=True)
    body = "\r\n".join([json.dumps(event("c1")), "", json.dumps(event("c2")), "oops", ""])
    (d / "crlf.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    (d / "empty.jsonl").write_bytes(b"")
    (d / "blank.jsonl.gz").write_bytes(gzip.compress(b"\n\n"))

    report = ingest_pending(wh, landing)

    by_name = {Path(r.path).name: r for r in report.files}
    assert (by_name["crlf.jsonl"].loaded, by_name["crlf.jsonl"].rejected) == (2, 1)
    assert by_name["empty.jsonl"].lines_read == 0 and by_name["empty.jsonl"].status == "loaded"
    assert by_name["blank.jsonl.gz"].lines_read == 0
    assert rows(wh, "select source_line from raw.events order by 1") == [(1,), (3,)]
    assert rows(wh, "select source_line, raw_text from raw.rejected") == [(4, "oops")]


def test_non_utf8_line_is_rejected_and_numbering_holds(wh: Warehouse, landing: Path) -> None:
    d = day(landing)
    d.mkdir(parents=True)
    good = [json.dumps(event(f"g{i}")).encode() for i in range(4)]
    bad = b'{"transaction_id": "\xff\xfe", "request": {"time": "2026-01-01T00:00:00"}}'
    (d / "latin.jsonl").write_bytes(b"\n".join([good[0], bad, good[1], b"", good[2], good[3]]))

    report = ingest_pending(wh, landing)

    r = report.files[0]
    assert (r.lines_read, r.loaded, r.rejected) == (5, 4, 1)
    assert rows(wh, "select source_line, reason from raw.rejected") == [
        (2, "line is not valid UTF-8")
    ]
    lines = rows(wh, "select transaction_id, source_line from raw.events order by 1")
    assert lines == [("g0", 1), ("g1", 3), ("g2", 5), ("g3", 6)]


def test_a_line_longer_than_duckdbs_default_object_size_loads(wh: Warehouse, landing: Path) -> None:
    huge = event("big", metadata={"blob": "x" * (17 * 1024 * 1024)})
    write_events(day(landing) / "big.jsonl", [event("before"), huge, event("after")])

    report = ingest_pending(wh, landing)

    assert report.files[0].loaded == 3
    got = rows(
        wh, "select transaction_id, source_line, length(metadata) from raw.events order by 2"
    )
    assert [(g[0], g[1]) for g in got] == [("before", 1), ("big", 2), ("after", 3)]
    assert got[1][2] > 17 * 1024 * 1024


def test_a_file_that_vanishes_is_recorded_and_retried(
    wh: Warehouse, landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(day(landing) / "a.jsonl", [event("a")])
    b = write_events(day(landing) / "b.jsonl", [event("b")])
    backup = b.read_bytes()
    real_sniff = ingest_landing.sniff

    def delete_b(path: Path) -> ingest_landing.FileShape:
        if path.name == "a.jsonl":  # b goes once a is being read (and before b is)
            b.unlink()
        return real_sniff(path)

    monkeypatch.setattr(ingest_landing, "sniff", delete_b)
    report = ingest_pending(wh, landing)
    monkeypatch.undo()

    assert [r.status for r in report.files] == ["loaded", "vanished"]
    b.write_bytes(backup)
    again = ingest_pending(wh, landing)
    assert [r.status for r in again.files] == ["skipped", "loaded"]
    assert rows(wh, "select count(*) from raw.events") == [(2,)]


def test_a_corrupt_gzip_is_recorded_without_stopping_the_run(wh: Warehouse, landing: Path) -> None:
    d = day(landing)
    write_events(d / "a.jsonl", [event("a")])
    (d / "b.jsonl.gz").write_bytes(b"\x1f\x8b" + b"definitely not deflate data" * 10)

    report = ingest_pending(wh, landing)

    assert report.files[0].loaded == 1
    assert report.files[1].rejected == 1 and report.files[1].lines_read == 1
    (reason,) = rows(wh, "select reason from raw.rejected where source_file like '%b.jsonl.gz'")[0]
    assert reason.startswith("cannot read file")


def test_a_crash_mid_file_leaves_nothing_and_the_rerun_ingests_it(
    wh: Warehouse, landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(day(landing) / "a.jsonl", [event("a1"), event("a2")])

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    with monkeypatch.context() as m:
        m.setattr(ingest_loading.Loader, "_record_file", crash)
        with pytest.raises(RuntimeError):
            ingest_pending(wh, landing)
    assert rows(wh, "select count(*) from raw.events") == [(0,)]
    assert rows(wh, "select count(*) from raw.ingested_files") == [(0,)]

    report = ingest_pending(wh, landing)
    assert report.files[0].loaded == 2


# -- identity and deduplication --------------------------------------------------------------------
def test_duplicates_across_files_keep_the_first_copy(wh: Warehouse, landing: Path) -> None:
    write_events(day(landing, "2026-11-26") / "a.jsonl", [event("x"), event("y")])
    changed = event("y", "2026-11-27T09:00:00Z", user_id="someone-else")
    write_events(day(landing, "2026-11-27") / "b.jsonl", [event("x"), changed, event("z")])

    report = ingest_pending(wh, landing)

    b = report.files[1]
    assert (b.lines_read, b.loaded, b.duplicates, b.conflicts) == (3, 1, 2, 1)
    assert rows(wh, "select user_id, dt from raw.events where event_key = 'y'")[0][0] == "u1"
    assert report.totals["events"].duplicates == 2
    assert_counts_add_up(report, wh)


def test_duplicates_within_a_file(wh: Warehouse, landing: Path) -> None:
    write_events(day(landing) / "a.jsonl", [event("x"), event("x", user_id="u2"), event("x")])
    report = ingest_pending(wh, landing)
    r = report.files[0]
    assert (r.loaded, r.duplicates, r.conflicts) == (1, 2, 1)
    assert rows(wh, "select user_id, source_line from raw.events") == [("u1", 1)]


def test_changed_file_is_ingested_again_without_duplicates(wh: Warehouse, landing: Path) -> None:
    path = write_events(day(landing) / "a.jsonl", [event("1"), event("2")])
    ingest_pending(wh, landing)
    write_events(path, [event("1"), event("2"), event("3")])
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution

    report = ingest_pending(wh, landing)

    r = report.files[0]
    assert (r.status, r.lines_read, r.loaded, r.duplicates) == ("loaded", 3, 1, 2)
    assert rows(wh, "select count(*) from raw.events") == [(3,)]
    assert rows(wh, "select count(*) from raw.ingested_files") == [(2,)]


def test_unchanged_file_is_skipped_even_when_touched(wh: Warehouse, landing: Path) -> None:
    path = write_events(day(landing) / "a.jsonl", [event("1")])
    ingest_pending(wh, landing)

    assert [r.status for r in ingest_pending(wh, landing).files] == ["skipped"]
    os.utime(path, (12345, 12345))
    assert [r.status for r in ingest_pending(wh, landing).files] == ["skipped"]
    assert rows(wh, "select count(*), max(mtime) from raw.ingested_files") == [(1, 12345.0)]


def test_event_without_transaction_id_is_keyed_by_content(wh: Warehouse, landing: Path) -> None:
    anon = event(None)
    write_events(day(landing, "2026-11-26") / "a.jsonl", [anon, event(None, user_id="u2")])
    (day(landing, "2026-11-27").mkdir(parents=True) or day(landing, "2026-11-27")).joinpath(
        "b.json"
    ).write_text(json.dumps([anon], indent=4))  # the same event, pretty-printed in a batch

    report = ingest_pending(wh, landing)

    keys = [k for (k,) in rows(wh, "select event_key from raw.events")]
    assert len(keys) == 2 and all(k.startswith("sha:") for k in keys)
    assert report.files[1].duplicates == 1
    assert rows(wh, "select count(*) from raw.events where transaction_id is null") == [(2,)]


def test_times_are_normalized_to_utc(wh: Warehouse, landing: Path) -> None:
    cases = {
        "naive-ms": ("2026-11-27T05:20:06.525", datetime(2026, 11, 27, 5, 20, 6, 525000)),
        "zulu": ("2026-11-27T05:20:06Z", datetime(2026, 11, 27, 5, 20, 6)),
        "plus2": ("2026-11-27T05:20:06.5+02:00", datetime(2026, 11, 27, 3, 20, 6, 500000)),
        "minus5": ("2026-11-26T22:00:00-05:00", datetime(2026, 11, 27, 3, 0)),
        "utc0": ("2026-11-27T05:20:06+00:00", datetime(2026, 11, 27, 5, 20, 6)),
        "micro": ("2026-11-27T05:20:06.123456", datetime(2026, 11, 27, 5, 20, 6, 123456)),
    }
    write_events(day(landing) / "t.jsonl", [event(tx, t) for tx, (t, _) in cases.items()])

    ingest_pending(wh, landing)

    got = dict(rows(wh, "select transaction_id, request_time from raw.events"))
    assert got == {tx: want for tx, (_, want) in cases.items()}


def test_unknown_fields_are_ignored_and_profiles_keep_every_version(
    wh: Warehouse, landing: Path
) -> None:
    write_events(day(landing) / "a.jsonl", [event("x", surprise={"deep": [1, 2]}, weight="3")])
    v1 = {"user_id": "u1", "modified_time": "2025-01-01T00:00:00Z", "metadata": {"email": "a@x"}}
    v2 = {"user_id": "u1", "modified_time": "2025-02-01T00:00:00Z", "metadata": {"email": "b@x"}}
    users = write_lines(landing / "users" / "u.jsonl", [json.dumps(v1)])
    ingest_pending(wh, landing)
    write_lines(users, [json.dumps(v1), json.dumps(v2)])
    os.utime(users, (1, 1))

    report = ingest_pending(wh, landing)

    assert rows(wh, "select weight from raw.events") == [(3,)]
    assert rows(wh, "select email from raw.users order by modified_time") == [("a@x",), ("b@x",)]
    assert (report.files[-1].loaded, report.files[-1].duplicates) == (1, 1)


def test_newest_dt_is_the_newest_ever_ingested(wh: Warehouse, landing: Path) -> None:
    write_events(day(landing, "2026-11-20") / "a.jsonl", [event("a")])
    ingest_pending(wh, landing)
    shutil.rmtree(day(landing, "2026-11-20"))
    write_events(day(landing, "2026-11-18") / "b.jsonl", [event("b")])
    assert ingest_pending(wh, landing).newest_dt.isoformat() == "2026-11-20"  # type: ignore[union-attr]
