"""Hostile and broken dump files at the ingestion level (issue 7), beyond
tests/ingest/test_ingest.py.

Covered here: gzip streams that break off, files still being written, implausible event times,
loosely typed values, and a seeded fuzz pass over mutations of the real Moesif samples in which
every physical line must be accounted for.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nudge.core.settings import load_settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest import IngestReport, file_scan, ingest_pending, landing

SAMPLES = Path("/work/shared/samples")
if not SAMPLES.exists():
    SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
DT = "2026-11-27"  # the samples' day


def event(tx: str, time: str = f"{DT}T05:20:06.525", **extra: object) -> dict:
    e: dict = {
        "transaction_id": tx,
        "request": {"time": time, "uri": "https://api.example/v1/widgets/7", "verb": "GET"},
        "response": {"time": time, "status": 200},
        "user_id": "u1",
    }
    e.update(extra)
    return e


def jsonl(events: list[dict]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in events).encode()


@pytest.fixture
def duck(tmp_path: Path) -> Iterator[Warehouse]:
    with connect(load_settings(warehouse=f"duckdb:///{tmp_path / 'duck.duckdb'}")) as w:
        yield w


@pytest.fixture
def day(tmp_path: Path) -> Path:
    d = tmp_path / "landing" / "events" / f"dt={DT}"
    d.mkdir(parents=True)
    return d


def landing_of(day: Path) -> Path:
    return day.parents[1]


def accounted(report: IngestReport, wh: Warehouse) -> None:
    """lines_read = loaded + duplicates + rejected, per file, in the report and the file rows;
    and raw.rejected holds exactly the rejected lines of each file version."""
    for r in report.files:
        assert r.lines_read == r.loaded + r.duplicates + r.rejected, r
    for f in wh.fetchdicts("select * from raw.ingested_files"):
        assert f["lines_read"] == f["loaded"] + f["duplicates"] + f["rejected"], f
        (n,) = wh.fetchone(
            "select count(*) from raw.rejected where source_file = ? and run_id = ?",
            [f["path"], f["run_id"]],
        ) or (0,)
        assert n == f["rejected"], f


# -- gzip streams that break off ---------------------------------------------------------------
def test_a_truncated_gzip_loads_its_complete_lines_and_says_it_was_truncated(
    wh: Warehouse, day: Path
) -> None:
    whole = jsonl([event(f"t{i:03d}") for i in range(300)])
    packed = gzip.compress(whole)
    (day / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])  # an upload cut off

    report = ingest_pending(wh, landing_of(day), run_id="r1")

    r = report.files[0]
    assert r.status == "loaded" and r.rejected == 1 and r.loaded > 0
    assert r.lines_read == r.loaded + 1
    got = [tx for (tx,) in wh.fetchall("select transaction_id from raw.events order by 1")]
    assert got == [f"t{i:03d}" for i in range(r.loaded)]  # the complete lines, in order
    (line, raw_text, reason), *more = wh.fetchall(
        "select source_line, raw_text, reason from raw.rejected"
    )
    assert not more
    assert line == r.loaded + 1  # the line the stream breaks off in
    assert reason.startswith("file truncated: its gzip stream ends early")
    assert "export the file again" in reason
    assert raw_text and whole.decode().splitlines()[line - 1].startswith(raw_text)
    accounted(report, wh)

    # The complete file arrives under the same name: the rest loads, nothing twice.
    (day / "cut.jsonl.gz").write_bytes(packed)
    again = ingest_pending(wh, landing_of(day), run_id="r2")
    a = again.files[0]
    assert (a.loaded, a.duplicates, a.rejected) == (300 - r.loaded, r.loaded, 0)
    assert wh.fetchall("select count(distinct transaction_id) from raw.events") == [(300,)]
    accounted(again, wh)


def test_a_gzip_missing_only_its_trailer_loads_every_line(duck: Warehouse, day: Path) -> None:
    packed = gzip.compress(jsonl([event(f"t{i}") for i in range(20)]))
    (day / "notrailer.jsonl.gz").write_bytes(packed[:-8])  # CRC and size lost

    r = ingest_pending(duck, landing_of(day)).files[0]

    assert (r.loaded, r.rejected) == (20, 1)
    (reason, raw_text), *_ = duck.fetchall("select reason, raw_text from raw.rejected")
    assert reason.startswith("file truncated") and raw_text == ""


def test_a_gzip_damaged_mid_stream_keeps_what_came_before(duck: Warehouse, day: Path) -> None:
    # Two members, the second one's deflate data overwritten: the first member's lines load.
    first = gzip.compress(jsonl([event(f"a{i}") for i in range(10)]))
    second = bytearray(gzip.compress(jsonl([event(f"b{i}") for i in range(10)])))
    second[12:40] = b"\xff" * 28
    (day / "damaged.jsonl.gz").write_bytes(first + bytes(second))

    report = ingest_pending(duck, landing_of(day))

    r = report.files[0]
    assert (r.loaded, r.rejected) == (10, 1)
    (reason,) = duck.fetchone("select reason from raw.rejected") or ("",)
    assert reason.startswith("file damaged: its gzip stream is corrupt")
    accounted(report, duck)


def test_read_broken_gzip_follows_members_and_finds_none_broken(tmp_path: Path) -> None:
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(b"a\nb\n") + gzip.compress(b"c\n"))
    assert landing.read_broken_gzip(path, tmp_path / "out") is None
    path.write_bytes(gzip.compress(b"x\ny\nzz")[:-4])
    broken = landing.read_broken_gzip(path, tmp_path / "out")
    assert broken is not None and broken.lines == 2 and broken.tail == b"zz"
    assert (tmp_path / "out").read_bytes() == b"x\ny\n"


# -- a file still being written ----------------------------------------------------------------
def test_a_file_that_grows_while_read_is_not_recorded_and_is_taken_whole_later(
    wh: Warehouse, day: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = day / "done.jsonl"
    done.write_bytes(jsonl([event("d1")]))
    growing = day / "growing.jsonl"
    growing.write_bytes(jsonl([event("g1")]) + b'{"transaction_id": "g2", "requ')
    real_scan = file_scan.scan  # hashes the file (and counts its lines) before it is parsed

    def writer_appends_meanwhile(path: Path) -> file_scan.Scanned:
        scanned = real_scan(path)
        if path == growing:  # the uploader goes on writing while Nudge reads
            with path.open("ab") as f:
                f.write(b'est": {"time": "2026-11-27T06:00:00"}}\n')
        return scanned

    monkeypatch.setattr(file_scan, "scan", writer_appends_meanwhile)
    report = ingest_pending(wh, landing_of(day), run_id="r1")
    monkeypatch.undo()

    status = {Path(r.path).name: r.status for r in report.files}
    assert status == {"done.jsonl": "loaded", "growing.jsonl": "changing"}
    assert "1 still being written" in report.summary()
    # Nothing of the half file is kept: no events, no rejected cut-off line, no file row.
    assert wh.fetchall("select transaction_id from raw.events") == [("d1",)]
    assert wh.fetchall("select count(*) from raw.rejected") == [(0,)]
    assert wh.fetchall("select path from raw.ingested_files") == [(f"events/dt={DT}/done.jsonl",)]

    again = ingest_pending(wh, landing_of(day), run_id="r2")

    g = next(r for r in again.files if r.path.endswith("growing.jsonl"))
    assert (g.status, g.lines_read, g.loaded, g.rejected) == ("loaded", 2, 2, 0)
    assert wh.fetchall("select count(*) from raw.rejected") == [(0,)]
    accounted(again, wh)


# -- values ----------------------------------------------------------------------------------------
def test_implausible_event_times_are_rejected_with_the_reason(wh: Warehouse, day: Path) -> None:
    cases = [
        event("in-day", f"{DT}T23:59:59.999Z"),
        event("next-day", "2026-11-28T23:59:59.999"),  # a skewed clock: a day late is fine
        event("late-offset", "2026-11-29T01:00:00+02:00"),  # 2026-11-28T23:00Z: fine
        event("two-days-on", "2026-11-29T00:00:00Z"),  # reject: after the dump was written
        event("far-future", "2099-01-01T00:00:00"),  # reject
        event("y2k", "2000-01-01T00:00:00Z"),  # the earliest plausible instant
        event("pre-2000", "1999-12-31T23:59:59Z"),  # reject
        event("epoch", "1970-01-01T00:00:00"),  # reject: a clock reset / default value
    ]
    (day / "times.jsonl").write_bytes(jsonl(cases))
    (day / "times.json").write_text(json.dumps([event("arr-future", "2030-01-01")], indent=2))

    report = ingest_pending(wh, landing_of(day))

    loaded = {tx for (tx,) in wh.fetchall("select transaction_id from raw.events")}
    assert loaded == {"in-day", "next-day", "late-offset", "y2k"}
    rej = wh.fetchall("select source_file, source_line, reason from raw.rejected order by 1, 2")
    after = f"request.time is more than a day after the end of its dump's day (dt={DT}): "
    before = "request.time is before 2000-01-01 (a clock reset or a default value): "
    assert rej == [
        (f"events/dt={DT}/times.json", 1, after + "2030-01-01"),
        (f"events/dt={DT}/times.jsonl", 4, after + "2026-11-29T00:00:00Z"),
        (f"events/dt={DT}/times.jsonl", 5, after + "2099-01-01T00:00:00"),
        (f"events/dt={DT}/times.jsonl", 7, before + "1999-12-31T23:59:59Z"),
        (f"events/dt={DT}/times.jsonl", 8, before + "1970-01-01T00:00:00"),
    ]
    accounted(report, wh)


def test_loosely_typed_values_load_as_moesif_writes_them(duck: Warehouse, day: Path) -> None:
    cases = [
        event("num-user", user_id=12345, company_id=7),
        event("null-response", response=None),
        {k: v for k, v in event("absent-response").items() if k != "response"},
        event("float-status", response={"status": 404.0}),
        event("unknown-keys", extra_top={"x": [1, {"y": None}]}, _private=True, ü="ü"),
        event("null-user", user_id=None),
        event("bool-status", response={"status": True}),  # rejected
        event("object-request", request={"time": {"$date": "2026-11-27"}}),  # rejected
    ]
    (day / "types.jsonl").write_bytes(jsonl(cases))

    report = ingest_pending(duck, landing_of(day))

    got = {
        tx: (user, company, status)
        for tx, user, company, status in duck.fetchall(
            "select transaction_id, user_id, company_id, status from raw.events"
        )
    }
    assert got == {
        "num-user": ("12345", "7", 200),
        "null-response": ("u1", None, None),
        "absent-response": ("u1", None, None),
        "float-status": ("u1", None, 404),
        "unknown-keys": ("u1", None, 200),
        "null-user": (None, None, 200),
    }
    rej = duck.fetchall("select source_line, reason from raw.rejected order by 1")
    assert rej == [
        (7, "response.status is not an integer: true"),
        (8, 'request.time is not an ISO 8601 time: {"$date":"2026-11-27"}'),
    ]
    accounted(report, duck)


# -- fuzz ----------------------------------------------------------------------------------------
SAMPLE_LINES = (SAMPLES / "real_events.jsonl").read_bytes().splitlines()
FIELDS = [
    ("transaction_id",),
    ("user_id",),
    ("request",),
    ("request", "time"),
    ("response",),
    ("response", "status"),
    ("company_id",),
    ("metadata",),
]
SWAPS: list[object] = [None, 0, -1, 3.5, "", "abc", "404", True, [], [1, "x"], {}, {"a": 1}]


@dataclass
class Case:
    name: str
    data: bytes  # as written
    text: bytes  # uncompressed content (what the physical lines are)
    gz: bool
    truncated_gz: bool
    untouched: set[int]  # 1-based numbers of lines byte-identical to a sample line


def _swap(obj: dict, path: tuple[str, ...], rng: random.Random, delete: bool) -> None:
    *parents, last = path
    for p in parents:
        nxt = obj.get(p)
        if not isinstance(nxt, dict):
            return
        obj = nxt
    if delete:
        obj.pop(last, None)
    else:
        obj[last] = rng.choice(SWAPS)


def _mutate_line(line: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["flip", "cut", "delete", "swap", "noise"])
    if kind == "flip":  # byte flips, possibly invalid UTF-8; never a line break
        b = bytearray(line)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([c for c in range(256) if c not in (10, 13)])
        return bytes(b)
    if kind == "cut":
        return line[: rng.randrange(len(line))]
    if kind == "noise":
        return rng.choice([b"null", b"[]", b"42", b'"str"', b"{", b"}", b"\x00\x00", b"\xef"])
    obj = json.loads(line)
    _swap(obj, rng.choice(FIELDS), rng, delete=kind == "delete")
    return json.dumps(obj).encode()


def _case(i: int, rng: random.Random) -> Case:
    picks = rng.sample(range(len(SAMPLE_LINES)), rng.randint(1, 12))
    lines: list[bytes] = []
    untouched: set[int] = set()
    for p in picks:
        line = SAMPLE_LINES[p]
        roll = rng.random()
        if roll < 0.35:
            line = _mutate_line(line, rng)
        elif roll < 0.45:
            lines.append(line)  # a duplicated line
            untouched.add(len(lines))
        elif roll < 0.5:
            lines.append(b"  ")  # blank lines are not lines read
        lines.append(line)
        if line == SAMPLE_LINES[p]:
            untouched.add(len(lines))
    eol = b"\r\n" if rng.random() < 0.2 else b"\n"
    text = (b"\xef\xbb\xbf" if rng.random() < 0.1 else b"") + eol.join(lines) + eol
    gz = rng.random() < 0.25
    data = gzip.compress(text) if gz else text
    truncated_gz = gz and rng.random() < 0.3
    if truncated_gz:
        data = data[: rng.randrange(len(data))]
    elif not gz and rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]  # a plain file cut anywhere
        text = data
        untouched = {n for n in untouched if _complete(text, n)}
    return Case(f"f{i:03d}.jsonl", data, text, gz, truncated_gz, untouched)


def _complete(text: bytes, n: int) -> bool:
    """Line n of `text` is followed by a line break (it was not cut)."""
    return text.count(b"\n") >= n


def _physical_lines(text: bytes) -> list[bytes]:
    body = text.removeprefix(b"\xef\xbb\xbf")
    parts = body.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.removesuffix(b"\r") for p in parts]


def test_fuzzed_real_events_never_crash_and_every_line_is_accounted_for(
    duck: Warehouse, day: Path
) -> None:
    rng = random.Random(20260307)
    cases = {c.name: c for c in (_case(i, rng) for i in range(300))}
    for c in cases.values():
        (day / c.name).write_bytes(c.data)

    report = ingest_pending(duck, landing_of(day), run_id="fuzz")

    assert len(report.files) == len(cases) and {r.status for r in report.files} == {"loaded"}
    accounted(report, duck)
    loaded_lines: dict[str, set[int]] = {}
    for src, line in duck.fetchall("select source_file, source_line from raw.events"):
        loaded_lines.setdefault(Path(src).name, set()).add(line)
    rejected: dict[str, dict[int | None, tuple[str, str]]] = {}
    for src, line, raw_text, reason in duck.fetchall(
        "select source_file, source_line, raw_text, reason from raw.rejected"
    ):
        assert reason, (src, line)
        assert raw_text is None or len(raw_text) <= 4096
        rejected.setdefault(Path(src).name, {})[line] = (raw_text, reason)
    tx_by_line = {
        (Path(f).name, n): tx
        for f, n, tx in duck.fetchall(
            "select source_file, source_line, transaction_id from raw.events"
        )
    }
    for r in report.files:
        c = cases[Path(r.path).name]
        good, bad = loaded_lines.get(Path(r.path).name, set()), rejected.get(c.name, {})
        assert not good & set(bad), r  # a line is loaded or rejected, never both
        if c.truncated_gz:
            continue  # its line count depends on where the stream broke off
        physical = _physical_lines(c.text)
        nonblank = {n for n, p in enumerate(physical, 1) if p.strip(b" \t\r\n")}
        assert r.lines_read == len(nonblank), (c.name, r)
        assert good | set(bad) <= nonblank, (c.name, r)
        for n in c.untouched:  # a real event, untouched: loaded or a duplicate, never rejected
            assert n not in bad, (c.name, n, bad[n])
        for n in good:  # the numbering holds: line n really is the event loaded from it
            tx = json.loads(physical[n - 1]).get("transaction_id")
            if tx is not None and not isinstance(tx, str):  # other types: kept as JSON text
                tx = json.dumps(tx, separators=(",", ":"))
            assert (tx or None) == tx_by_line[(c.name, n)], (c.name, n)  # "" means none
        for n, (raw_text, _) in bad.items():
            assert raw_text is not None and n is not None
            want = physical[n - 1].decode("utf-8", "replace")
            assert want.startswith(raw_text) or "\ufffd" in want, (c.name, n)
