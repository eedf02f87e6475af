"""Reading event files together (nudge/ingest/read_together.py) gives what reading each gives."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nudge.core.settings import load_settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest import IngestReport, ingest_pending, read_together
from nudge.ingest import loading as ingest_loading

ROOT = Path(__file__).resolve().parents[2]


def event(tx: str | None, dt: str = "2026-11-27", **extra: object) -> dict:
    time = f"{dt}T05:20:06.525"
    e: dict = {
        "request": {"time": time, "uri": "https://api.example/v1/widgets/7", "verb": "GET"},
        "response": {"time": time, "status": 200},
        "user_id": "u1",
        "company_id": "c1",
        "metadata": {"n": 1},
    }
    if tx is not None:
        e["transaction_id"] = tx
    e.update(extra)
    return e


def write(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def events(path: Path, evs: list[dict], *, gz: bool = False) -> Path:
    return write(path, [json.dumps(e) for e in evs], gz=gz)


def day(landing: Path, dt: str) -> Path:
    return landing / "events" / f"dt={dt}"


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    d = tmp_path / "landing"
    d.mkdir()
    return d


@pytest.fixture
def open_wh(tmp_path: Path) -> Iterator[Callable[[str], Warehouse]]:
    """Opens DuckDB warehouses by name under tmp_path; closes them all at the end."""
    opened: list[Any] = []

    def open_(name: str) -> Warehouse:
        cm = connect(load_settings(warehouse=f"duckdb:///{tmp_path / (name + '.duckdb')}"))
        opened.append(cm)
        return cm.__enter__()

    yield open_
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts batch loads (and the files they load), so a test knows the batch path ran."""
    calls = {"batches": 0, "files": 0}
    real = ingest_loading.Loader.load_batch

    def counting(self: Any, files: list, *args: Any) -> Any:
        calls["batches"] += 1
        calls["files"] += len(files)
        return real(self, files, *args)

    monkeypatch.setattr(ingest_loading.Loader, "load_batch", counting)
    return calls


def file_by_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_together, "readable_together", lambda lf: False)


_QUERIES = {
    "events": "select * exclude (ingested_at) from raw.events order by event_key",
    "rejected": "select kind, source_file, source_line, raw_text, reason from raw.rejected "
    "order by source_file, source_line",
    "files": "select * exclude (run_id, ingested_at) from raw.ingested_files "
    "order by path, content_hash",
}


def snapshot(wh: Warehouse) -> dict[str, list[tuple]]:
    return {name: wh.fetchall(sql) for name, sql in _QUERIES.items()}


def outcomes(report: IngestReport) -> list[tuple]:
    return [
        (r.path, r.status, r.lines_read, r.loaded, r.duplicates, r.conflicts, r.rejected, r.note)
        for r in report.files
    ]


def both_ways(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    runs: int = 1,
) -> tuple[list[IngestReport], list[IngestReport], Warehouse]:
    """Ingest `landing` batched and then file by file (`runs` times each, into two warehouses);
    assert identical tables; returns both ways' reports and the batched warehouse."""
    batched_wh = open_wh("batched")
    batched = [ingest_pending(batched_wh, landing) for _ in range(runs)]
    with monkeypatch.context() as m:
        file_by_file(m)
        single_wh = open_wh("single")
        single = [ingest_pending(single_wh, landing) for _ in range(runs)]
    assert [outcomes(r) for r in batched] == [outcomes(r) for r in single]
    got, want = snapshot(batched_wh), snapshot(single_wh)
    for name in _QUERIES:
        assert got[name] == want[name], name
    return batched, single, batched_wh


def hostile_landing(landing: Path) -> None:
    """Clean files of every shape around files each failing one of the fast path's checks."""
    d1, d2 = day(landing, "2026-11-26"), day(landing, "2026-11-27")
    events(d1 / "a.jsonl", [event(f"a{i}", "2026-11-26") for i in range(20)])
    events(d1 / "b.jsonl.gz", [event(f"b{i}", "2026-11-26") for i in range(20)], gz=True)
    (d1 / "c.json").write_text(json.dumps([event(f"c{i}", "2026-11-26") for i in range(5)]))
    write(d1 / "d-malformed.jsonl", [json.dumps(event("d1", "2026-11-26")), '{"oops": '])
    write(d1 / "e-blank.jsonl", [json.dumps(event("e1", "2026-11-26")), ""])
    events(d2 / "f.jsonl", [event("a3", user_id="someone-else"), event("f1"), event("b2")])
    events(d2 / "g-future.jsonl", [event("g1"), event("g2", "2031-01-01")])
    events(d2 / "h-noid.jsonl", [event("h1"), event(None)])
    events(d2 / "i-status.jsonl", [event("i1"), event("i2", response={"status": "abc"})])
    events(d2 / "j.jsonl.gz", [event("d1"), event("j1"), event("j1", user_id="u2")], gz=True)
    packed = gzip.compress(b"".join(json.dumps(event(f"t{i}")).encode() + b"\n" for i in range(30)))
    (d2 / "k-truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (d2 / "l-corrupt.jsonl.gz").write_bytes(b"\x1f\x8b" + b"not deflate" * 5)
    (d2 / "m-empty.jsonl").write_bytes(b"")
    (d2 / "n-crlf.jsonl").write_bytes(
        b"".join(json.dumps(event(f"n{i}")).encode() + b"\r\n" for i in range(3))
    )
    write(d2 / "o-notobject.jsonl", [json.dumps(event("o1")), "[1, 2]"])
    events(d2 / "p[1].jsonl", [event("p1")])  # a glob character: file by file
    events(d2 / "q.jsonl", [event(f"a{i}") for i in range(5, 10)])  # all stored already


# -- the same result as file by file ----------------------------------------------------------
def test_bad_files_among_good_ones_give_exactly_the_per_file_result(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    spy: dict[str, int],
) -> None:
    hostile_landing(landing)

    (report,), _, wh = both_ways(landing, open_wh, monkeypatch)

    # a, b, c | f | j | m, n: the clean files loaded in runs between the others
    assert (spy["batches"], spy["files"]) == (4, 7)
    by_name = {Path(r.path).name: r for r in report.files}
    assert (by_name["d-malformed.jsonl"].rejected, by_name["g-future.jsonl"].rejected) == (1, 1)
    assert by_name["f.jsonl"].conflicts == 2 and by_name["q.jsonl"].duplicates == 5  # other times
    assert by_name["l-corrupt.jsonl.gz"].note.startswith("cannot read file")
    assert wh.fetchall("select count(*) from raw.rejected") == [(6,)]


def test_a_read_error_naming_no_file_sends_the_batch_file_by_file(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    spy: dict[str, int],
) -> None:
    hostile_landing(landing)
    monkeypatch.setattr(read_together, "_named", lambda message, paths: set())

    both_ways(landing, open_wh, monkeypatch)

    assert spy["batches"] == 0


def test_small_batches_and_a_second_run_give_the_per_file_result(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    spy: dict[str, int],
) -> None:
    hostile_landing(landing)
    monkeypatch.setattr(read_together, "BATCH_BYTES", 2000)  # a few files a batch

    (_, second), _, _ = both_ways(landing, open_wh, monkeypatch, runs=2)

    assert spy["batches"] >= 3
    assert {r.status for r in second.files} == {"skipped"}


# -- deduplication ------------------------------------------------------------------------------
def test_duplicates_across_files_of_one_batch_keep_the_first_copy_in_discovery_order(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    spy: dict[str, int],
) -> None:
    d = day(landing, "2026-11-27")
    # The scan reads plain files before gzip ones here (a.jsonl opens the batch), so c.jsonl's
    # rows come before b.jsonl.gz's in the staged table: discovery order must still win.
    events(d / "a.jsonl", [event("a1"), event("x", user_id="from-a"), event("x", user_id="a2")])
    events(d / "b.jsonl.gz", [event("y", user_id="from-b"), event("b1"), event("x")], gz=True)
    events(d / "c.jsonl", [event("y", user_id="from-c"), event("y"), event("c1")])

    (report,), _, wh = both_ways(landing, open_wh, monkeypatch)

    assert spy["batches"] == 1 and spy["files"] == 3
    kept = wh.fetchall(
        "select event_key, user_id, source_file, source_line from raw.events "
        "where event_key in ('x', 'y') order by 1"
    )
    assert kept == [
        ("x", "from-a", "events/dt=2026-11-27/a.jsonl", 2),
        ("y", "from-b", "events/dt=2026-11-27/b.jsonl.gz", 1),
    ]
    counts = [(r.loaded, r.duplicates, r.conflicts) for r in report.files]
    # a: x twice, differing; b: x again (differs from a's); c: y twice (both differ from b's,
    # one counted against the copy kept, one as a second version within c).
    assert counts == [(2, 1, 1), (2, 1, 1), (1, 2, 2)]


def test_duplicates_of_stored_events_are_counted_against_the_copy_kept(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    spy: dict[str, int],
) -> None:
    d = day(landing, "2026-11-27")
    events(d / "a.jsonl", [event("x"), event("y")])
    batched_wh, single_wh = open_wh("batched"), open_wh("single")
    ingest_pending(batched_wh, landing)
    ingest_pending(single_wh, landing)
    events(d / "b.jsonl", [event("x", user_id="other"), event("z")])
    events(d / "c.jsonl", [event("y"), event("z", user_id="other"), event("x")])

    batched = ingest_pending(batched_wh, landing)
    with monkeypatch.context() as m:
        file_by_file(m)
        single = ingest_pending(single_wh, landing)

    assert spy["files"] == 2
    assert outcomes(batched) == outcomes(single)
    assert snapshot(batched_wh) == snapshot(single_wh)
    assert [(r.loaded, r.duplicates, r.conflicts) for r in batched.files[1:]] == [
        (1, 1, 1),
        (0, 3, 1),
    ]


# -- progress, vanishing and changing files -------------------------------------------------------
def test_progress_is_reported_per_file_in_discovery_order(
    landing: Path, open_wh: Callable[[str], Warehouse]
) -> None:
    d = day(landing, "2026-11-27")
    for name in ("a", "b", "c"):
        events(d / f"{name}.jsonl", [event(name)])
    wh = open_wh("batched")
    ingest_pending(wh, landing)
    events(d / "b2.jsonl", [event("b2")])
    events(d / "d.jsonl", [event("d")])
    messages: list[str] = []

    ingest_pending(wh, landing, progress=messages.append)

    assert [m.split("] ")[1].split(":")[0].rsplit("/", 1)[1] for m in messages] == [
        "a.jsonl", "b.jsonl", "b2.jsonl", "c.jsonl", "d.jsonl",
    ]  # fmt: skip
    assert [m.split(": ")[1].split(",")[0] for m in messages] == [
        "skipped", "skipped", "1 lines", "skipped", "1 lines",
    ]  # fmt: skip


def test_files_vanishing_or_changing_around_the_batch_read(
    landing: Path, open_wh: Callable[[str], Warehouse], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = day(landing, "2026-11-27")
    for name in ("a", "b", "c", "e"):
        events(d / f"{name}.jsonl", [event(name)])
    real_stage = read_together.read_new_event_files_together

    def meanwhile(conn: Any, files: list) -> read_together.Staged:
        (d / "b.jsonl").unlink()  # gone before the read: the read names it
        staged = real_stage(conn, files)
        with (d / "c.jsonl").open("a") as f:  # written on after the read
            f.write(json.dumps(event("c2")) + "\n")
        (d / "e.jsonl").unlink()  # gone after the read
        return staged

    monkeypatch.setattr(read_together, "read_new_event_files_together", meanwhile)
    wh = open_wh("batched")
    report = ingest_pending(wh, landing)
    monkeypatch.undo()

    status = {Path(r.path).name: r.status for r in report.files}
    assert status == {"a.jsonl": "loaded", "b.jsonl": "vanished", "c.jsonl": "changing",
                      "e.jsonl": "vanished"}  # fmt: skip
    assert wh.fetchall("select event_key from raw.events") == [("a",)]
    assert wh.fetchall("select path from raw.ingested_files") == [("events/dt=2026-11-27/a.jsonl",)]
    again = ingest_pending(wh, landing)
    assert {Path(r.path).name: r.status for r in again.files} == {
        "a.jsonl": "skipped", "c.jsonl": "loaded",
    }  # fmt: skip


# -- crashes ------------------------------------------------------------------------------------
def test_a_failure_mid_batch_leaves_whole_files_and_the_rerun_equals_a_clean_run(
    landing: Path,
    open_wh: Callable[[str], Warehouse],
    monkeypatch: pytest.MonkeyPatch,
    spy: dict[str, int],
) -> None:
    hostile_landing(landing)
    real = ingest_loading.Loader._record_files
    calls = {"n": 0}

    def fail_in_the_second_batch(self: Any, *args: Any) -> None:
        calls["n"] += 1
        real(self, *args)  # the batch's events and file rows are written...
        if calls["n"] == 2:
            raise RuntimeError("power cut")  # ...and its transaction never commits

    wh = open_wh("crashed")
    with monkeypatch.context() as m:
        m.setattr(ingest_loading.Loader, "_record_files", fail_in_the_second_batch)
        with pytest.raises(RuntimeError, match="power cut"):
            ingest_pending(wh, landing)
    # Whole files or nothing: every recorded file has all its rows, no others are stored.
    recorded = {p for (p,) in wh.fetchall("select path from raw.ingested_files")}
    stored = {p for (p,) in wh.fetchall("select distinct source_file from raw.events")}
    assert recorded and stored <= recorded
    for path, loaded in wh.fetchall("select path, loaded from raw.ingested_files"):
        assert wh.fetchall("select count(*) from raw.events where source_file = ?", [path]) == [
            (loaded,)
        ]

    ingest_pending(wh, landing)

    clean = open_wh("clean")
    ingest_pending(clean, landing)
    assert snapshot(wh) == snapshot(clean)


def test_a_killed_batch_ingest_leaves_nothing_of_the_batch_and_the_rerun_equals_a_clean_run(
    landing: Path, open_wh: Callable[[str], Warehouse], tmp_path: Path
) -> None:
    d = day(landing, "2026-11-27")
    for i in range(6):
        events(d / f"f{i}.jsonl", [event(f"e{i}-{j}") for j in range(50)] + [event("dup")])
    db = tmp_path / "killed.duckdb"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from nudge.ingest import loading, ingest_pending
        from nudge.core.settings import load_settings
        from nudge.core.warehouse import connect

        real = loading.Loader._record_files

        def die(self, *args):
            real(self, *args)  # everything written, nothing committed
            os.kill(os.getpid(), signal.SIGKILL)

        loading.Loader._record_files = die
        with connect(load_settings(warehouse="duckdb:///{db}")) as wh:
            ingest_pending(wh, Path("{landing}"))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=False)
    assert done.returncode == -9

    killed = open_wh("killed")
    assert killed.fetchall("select count(*) from raw.events") == [(0,)]
    assert killed.fetchall("select count(*) from raw.ingested_files") == [(0,)]
    report = ingest_pending(killed, landing)
    assert [r.status for r in report.files] == ["loaded"] * 6
    clean = open_wh("clean")
    ingest_pending(clean, landing)
    assert snapshot(killed) == snapshot(clean)
