"""The synthetic dump generator: contract layout, Moesif-shaped lines, and data that makes the
demo show cohort entries and exits on many different days.

The cohort checks below re-implement the contract's two seed cohorts in plain DuckDB SQL over the
generated files, independently of the dbt models.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from synthetic.generate import GenerateReport, default_start, generate

SMALL = {
    "users": 40,
    "days": 28,
    "events_per_day": 400,
    "seed": 11,
    "files_per_day": 3,
    "today": date(2026, 3, 1),
}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$")  # as the middleware writes it
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
EVENT_KEYS = {
    "request",
    "response",
    "session_token",
    "tags",
    "user_id",
    "company_id",
    "metadata",
    "direction",
    "weight",
    "blocked_by",
    "transaction_id",
}


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateReport]:
    out = tmp_path_factory.mktemp("landing")
    return out, generate(out, **SMALL)


def _event_files(root: Path) -> list[Path]:
    return sorted((root / "events").rglob("*.json*"))


def _read_events(path: Path) -> list[str]:
    """The raw JSON text of each event in a file (a line, or an element of an array file)."""
    if path.name.endswith(".json"):
        return [json.dumps(e) for e in json.loads(path.read_text(encoding="utf-8"))]
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def _load(root: Path) -> duckdb.DuckDBPyConnection:
    """Every event line with its file and dt folder, and the users' sign-up times."""
    con = duckdb.connect()
    fields = """
        json_extract_string(json, '$.transaction_id') as tx,
        json_extract_string(json, '$.user_id') as user_id,
        cast(json_extract_string(json, '$.request.time') as timestamp) as t,
        cast(json_extract(json, '$.response.status') as integer) as status,
        filename as file,
        cast(regexp_extract(filename, 'dt=(\\d{4}-\\d{2}-\\d{2})', 1) as date) as dt
    """
    con.execute(
        f"""
        create table lines as
        select {fields} from read_ndjson_objects('{root}/events/*/*.jsonl*', filename = true)
        union all
        select {fields}
        from read_json_objects('{root}/events/*/*.json', format = 'array', filename = true)
        """
    )
    # Deduplicated by transaction_id, as the contract says.
    con.execute(
        "create table events as select tx, any_value(user_id) as user_id, any_value(t) as t, "
        "any_value(status) as status from lines group by tx"
    )
    con.execute(
        f"""
        create table signups as
        select json_extract_string(json, '$.user_id') as user_id,
               min(cast(replace(json_extract_string(json, '$.metadata.created'), 'Z', '')
                   as timestamp)) as signup
        from read_ndjson_objects('{root}/users/*.jsonl')
        group by 1
        """
    )
    return con


NOT_ACTIVATED = """
    select s.user_id from signups s
    where s.signup > $end - interval 28 day and s.signup < $end - interval 7 day
      and not exists (
          select 1 from events e
          where e.user_id = s.user_id and e.t >= $end - interval 28 day and e.t < $end)
"""
TOO_MANY_4XX = """
    select user_id from events
    where user_id is not null and status in (400, 404, 405)
      and t >= $end - interval 7 day and t < $end
    group by user_id having count(*) >= 1000
"""


def _day_by_day(
    con: duckdb.DuckDBPyConnection, sql: str, report: GenerateReport
) -> list[tuple[date, set[str], set[str]]]:
    """(as-of day, entered, exited) for each day after the first (the baseline)."""
    out, previous = [], None
    for i in range(report.days):
        day = report.start + timedelta(days=i)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time())
        members = {r[0] for r in con.execute(sql, {"end": end}).fetchall()}
        if previous is not None:
            out.append((day, members - previous, previous - members))
        previous = members
    return out


def _max_7_day_count(con: duckdb.DuckDBPyConnection, statuses: str) -> dict[str, int]:
    rows = con.execute(
        f"""
        with daily as (
            select user_id, cast(t as date) as d, count(*) as n from events
            where user_id is not null and status in ({statuses}) group by all
        )
        select user_id, max(w) from (
            select user_id, sum(n) over (partition by user_id order by d
                range between interval 6 day preceding and current row) as w
            from daily
        ) group by user_id
        """
    ).fetchall()
    return {user: int(n) for user, n in rows}


def test_same_seed_writes_the_same_bytes(
    landing: tuple[Path, GenerateReport], tmp_path: Path
) -> None:
    root, _ = landing
    again = generate(tmp_path / "again", **SMALL)
    first = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    second = {
        p.relative_to(again.out_dir): p.read_bytes()
        for p in again.out_dir.rglob("*")
        if p.is_file()
    }
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []

    other = generate(tmp_path / "other", **(SMALL | {"seed": 12}))
    day_file = next(iter(sorted(other.out_dir.glob("events/*/*.jsonl"))))
    assert day_file.read_bytes() != (root / day_file.relative_to(other.out_dir)).read_bytes()


def test_gzip_all_writes_the_same_lines_compressed(
    landing: tuple[Path, GenerateReport], tmp_path: Path
) -> None:
    root, _ = landing
    packed = generate(tmp_path / "packed", **SMALL, gzip_all=True).out_dir

    def lines(folder: Path) -> dict[str, bytes]:
        out = {}
        for p in folder.glob("events/*/*"):
            data = p.read_bytes()
            out[p.name.removesuffix(".gz")] = gzip.decompress(data) if p.suffix == ".gz" else data
        return out

    assert not list(packed.glob("events/*/*.jsonl"))  # every JSON-lines file is gzipped
    assert lines(packed) == lines(root)


def test_layout_follows_the_contract(landing: tuple[Path, GenerateReport]) -> None:
    root, report = landing
    assert report.end == date(2026, 2, 28)  # yesterday, relative to `today`
    assert report.start == date(2026, 2, 1) == default_start(28, date(2026, 3, 1))
    folders = sorted(p.name for p in (root / "events").iterdir())
    assert folders == [f"dt={report.start + timedelta(days=i)}" for i in range(report.days)]
    files = _event_files(root)
    assert len(files) == report.event_files == report.days * SMALL["files_per_day"]
    kinds = {re.sub(r"^events-\d{4}-\d{2}-\d{2}-\d{2}\.", "", p.name) for p in files}
    assert kinds == {"jsonl", "jsonl.gz", "json"}
    assert sorted(p.name for p in (root / "users").iterdir()) == [
        "users-0001.jsonl",
        "users-0002-updates.jsonl",
    ]
    assert sorted(p.name for p in (root / "companies").iterdir()) == [
        "companies-0001.jsonl",
        "companies-0002-updates.jsonl",
    ]
    assert not list(root.rglob(".*")), "no temporary files left behind"


def test_every_event_is_shaped_like_moesif_middleware_output(
    landing: tuple[Path, GenerateReport],
) -> None:
    root, report = landing
    lines, transaction_ids = 0, set()
    for path in _event_files(root):
        dt = date.fromisoformat(path.parent.name.removeprefix("dt="))
        for text in _read_events(path):
            lines += 1
            event = json.loads(text)
            assert set(event) == EVENT_KEYS, path
            req, resp = event["request"], event["response"]
            assert TIME.match(req["time"]) and TIME.match(resp["time"]), text[:200]
            assert resp["time"] >= req["time"]
            when = datetime.fromisoformat(req["time"]).date()
            assert when in (dt, dt - timedelta(days=1)), f"{path}: {req['time']}"
            assert req["uri"].startswith("http://api.example.com/")
            assert req["verb"] in {"GET", "POST", "PUT", "DELETE"}
            assert isinstance(resp["status"], int)
            assert UUID.match(event["transaction_id"])
            header_id = req["headers"]["X-Moesif-Transaction-Id"]
            assert header_id == resp["headers"]["X-Moesif-Transaction-Id"]
            assert header_id != event["transaction_id"]
            for part in (req, resp):
                body, encoding = part["body"], part["transfer_encoding"]
                if isinstance(body, dict | list):
                    assert encoding == "json"
                elif isinstance(body, str):
                    assert encoding == "base64"
                    base64.b64decode(body, validate=True)
            if isinstance(resp["body"], dict | list):
                compact = json.dumps(resp["body"], separators=(",", ":"))
                assert resp["headers"]["Content-Length"] == str(len(compact))
            assert (event["user_id"] is None) == (event["session_token"] is None)
            transaction_ids.add(event["transaction_id"])
    assert lines == report.event_lines
    assert len(transaction_ids) == report.events


def test_both_cohorts_gain_and_lose_members_on_many_days(
    landing: tuple[Path, GenerateReport],
) -> None:
    root, report = landing
    con = _load(root)

    not_activated = _day_by_day(con, NOT_ACTIVATED, report)
    entry_days = {day for day, entered, _ in not_activated if entered}
    assert len(entry_days) >= 8, not_activated
    assert sum(len(exited) for _, _, exited in not_activated) >= 3
    # some of those who entered called later (exit by activating), not only by ageing out
    activated = [
        user
        for day, _, exited in not_activated
        for user in exited
        if con.execute(
            "select count(*) from events where user_id = ? and t < ?",
            [user, datetime.combine(day + timedelta(days=1), datetime.min.time())],
        ).fetchone()[0]
    ]
    assert activated

    errors = _day_by_day(con, TOO_MANY_4XX, report)
    entries = [(day, user) for day, entered, _ in errors for user in entered]
    assert len({day for day, _ in entries}) >= 3, errors
    assert sum(len(exited) for _, _, exited in errors) >= 2
    assert {user for _, user in entries} <= set(report.storm_users)


def test_other_errors_do_not_count_and_one_user_stays_just_under(
    landing: tuple[Path, GenerateReport],
) -> None:
    con = _load(landing[0])
    counted = _max_7_day_count(con, "400, 404, 405")
    other = _max_7_day_count(con, "401, 403, 422, 429")
    noisy = [u for u, n in other.items() if n >= 1000]
    assert noisy, "users flooding 401/403/422/429"
    assert all(counted.get(u, 0) < 1000 for u in noisy)
    assert 990 <= max(n for n in counted.values() if n < 1000) <= 999


def test_late_duplicated_and_anonymous_events_are_there(
    landing: tuple[Path, GenerateReport],
) -> None:
    root, report = landing
    con = _load(root)
    late = con.execute(
        "select count(distinct tx) from lines where cast(t as date) < dt"
    ).fetchone()[0]
    assert late == report.late_events > 0
    twice = con.execute(
        "select count(*) from (select tx from lines group by tx "
        "having count(*) = 2 and count(distinct file) = 2)"
    ).fetchone()[0]
    assert twice == report.duplicates > 0
    thrice = "select count(*) from lines group by tx having count(*) > 2"
    assert con.execute(thrice).fetchall() == []
    anonymous = con.execute("select count(*) from events where user_id is null").fetchone()[0]
    assert anonymous == report.anonymous_events > 0


def test_profiles_look_like_moesif_profiles(landing: tuple[Path, GenerateReport]) -> None:
    root, report = landing

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    users = rows(root / "users" / "users-0001.jsonl")
    updates = rows(root / "users" / "users-0002-updates.jsonl")
    companies = rows(root / "companies" / "companies-0001.jsonl")
    company_updates = rows(root / "companies" / "companies-0002-updates.jsonl")
    assert len(users) == len({u["user_id"] for u in users}) == report.users
    assert report.user_rows == len(users) + len(updates)
    assert report.company_rows == len(companies) + len(company_updates)
    assert any("email" not in u["metadata"] for u in users)
    assert any(not u["company_id"] for u in users)
    names = "".join(u["metadata"]["first_name"] + u["metadata"]["last_name"] for u in users)
    assert re.search(r"[^\x00-\x7f]", names), "names with accents or CJK characters"

    def newest(row: dict) -> datetime:
        return datetime.fromisoformat(row["modified_time"]).replace(tzinfo=None)

    first = {u["user_id"]: u for u in users}
    assert updates and all(u["user_id"] in first for u in updates)
    assert any(newest(u) > newest(first[u["user_id"]]) for u in updates)
    assert any(newest(u) < newest(first[u["user_id"]]) for u in updates), "a stale replay"

    by_id = {c["company_id"]: c for c in companies}
    assert all(u["company_id"] in by_id for u in users if u["company_id"])
    assert all(c["company_domain"].endswith(".example") for c in companies)
    with_se = [c for c in companies if c["metadata"].get("solutions_engineer_email")]
    assert len(companies) / 2 < len(with_se) < len(companies)
    storm_companies = {first[u]["company_id"] for u in report.storm_users}
    assert any(by_id[c]["metadata"].get("solutions_engineer_email") for c in storm_companies)
    assert any(not by_id[c]["metadata"].get("solutions_engineer_email") for c in storm_companies)

    # every event's user has a profile (events without user_id aside)
    con = _load(root)
    orphans = con.execute(
        "select count(*) from events where user_id is not null "
        "and user_id not in (select user_id from signups)"
    ).fetchone()[0]
    assert orphans == 0


def test_volume_is_events_per_day_times_days(tmp_path: Path) -> None:
    report = generate(tmp_path, users=30, days=21, events_per_day=3000, today=date(2026, 3, 1))
    # storms and floods come out of the day's total, as long as they fit in half of it
    assert abs(report.events - 63_000) <= 63_000 * 0.02
    assert report.event_lines == report.events + report.duplicates


def test_malformed_lines_only_when_asked(tmp_path: Path) -> None:
    report = generate(
        tmp_path,
        users=20,
        days=4,
        events_per_day=200,
        today=date(2026, 3, 1),
        inject_bad_lines=True,
    )
    bad = 0
    for path in _event_files(tmp_path):
        for text in _read_events(path):
            try:
                event = json.loads(text)
                datetime.fromisoformat(event["request"]["time"])
            except (ValueError, KeyError):
                bad += 1
    assert bad == report.bad_lines > 0
    assert report.event_lines == report.events + report.duplicates + report.bad_lines


def test_refuses_a_folder_with_dumps_unless_told_to_overwrite(tmp_path: Path) -> None:
    small = {"users": 20, "days": 2, "events_per_day": 50, "today": date(2026, 3, 1)}
    generate(tmp_path, **small)
    with pytest.raises(FileExistsError, match="events"):
        generate(tmp_path, **small)
    report = generate(tmp_path, **(small | {"days": 3}), overwrite=True)
    assert len(list((tmp_path / "events").iterdir())) == report.days == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"users": 5}, "users=5"),
        ({"days": 0}, "days=0"),
        ({"events_per_day": -1}, "events_per_day=-1"),
        ({"files_per_day": 0}, "files_per_day=0"),
    ],
)
def test_bad_arguments_say_which(tmp_path: Path, args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, **args)
