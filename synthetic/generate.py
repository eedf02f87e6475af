"""`nudge generate`: a synthetic landing folder of Moesif-shaped dumps (contract: "Inputs").

    events/dt=YYYY-MM-DD/events-YYYY-MM-DD-NN.jsonl[.gz]   (and now and then a .json array)
    users/users-0001.jsonl, users/users-0002-updates.jsonl
    companies/companies-0001.jsonl, companies/companies-0002-updates.jsonl

Deterministic for a seed (and DuckDB version). Profiles and the per-user daily plan are built in
Python (`generate_profiles`); the events themselves are rendered and written by DuckDB
(`generate_events`), so 10M events take seconds, not minutes. The data is shaped for the demo:
both seed cohorts gain and lose members on many different days (see generate_profiles).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from synthetic.events import (
    EventFile,
    build_events,
    event_files,
    write_event_files,
)
from synthetic.profiles import (
    build_plan,
    build_population,
    company_profiles,
    user_profiles,
)

log = logging.getLogger(__name__)

LANDING_SUBDIRS = ("events", "users", "companies")
MIN_USERS = 20  # room for every archetype the demo relies on


@dataclass(frozen=True)
class GenerateReport:
    out_dir: Path
    start: date  # first day with events
    end: date  # last day with events (inclusive)
    days: int
    users: int  # user profiles (distinct user_id)
    companies: int
    events: int  # distinct events (by transaction_id)
    event_lines: int  # event lines and array elements written, duplicates and bad lines included
    duplicates: int  # extra copies of an event in a second file
    late_events: int  # events in the folder of the day after their request.time
    anonymous_events: int  # events without user_id
    bad_lines: int  # malformed lines (only with inject_bad_lines)
    event_files: int
    user_rows: int  # profile versions written
    company_rows: int
    storm_users: tuple[str, ...]  # users with 400/404/405 storms (enter too_many_4xx_7d)
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        """A few lines for people (what `nudge generate` prints)."""
        return "\n".join(
            [
                f"Wrote {self.out_dir}: {self.days} days, {self.start} .. {self.end}",
                f"  events: {self.events:,} in {self.event_files} files "
                f"({self.event_lines:,} lines: {self.duplicates:,} duplicated, "
                f"{self.bad_lines} malformed); {self.late_events:,} late, "
                f"{self.anonymous_events:,} without user_id",
                f"  profiles: {self.users} users ({self.user_rows} versions), "
                f"{self.companies} companies ({self.company_rows} versions)",
                f"  error storms (too_many_4xx_7d): {', '.join(self.storm_users) or 'none'}",
                f"  in {self.seconds:.1f}s ({self.events_per_second:,.0f} events/s)",
            ]
        )


def default_start(days: int, today: date | None = None) -> date:
    """The first day, such that the last day is yesterday (UTC)."""
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=days)


def generate(
    out_dir: Path,
    *,
    users: int = 200,
    days: int = 35,
    events_per_day: int = 4000,
    seed: int = 7,
    start: date | None = None,
    files_per_day: int = 3,
    today: date | None = None,
    inject_bad_lines: bool = False,
    overwrite: bool = False,
    gzip_all: bool = False,
) -> GenerateReport:
    """Write a landing folder under out_dir and say what is in it.

    Refuses to write into a landing folder that already holds events or profiles unless
    overwrite=True (which deletes its events/, users/ and companies/ first).
    """
    _check_args(users=users, days=days, events_per_day=events_per_day, files_per_day=files_per_day)
    began = time.perf_counter()
    out_dir = Path(out_dir)
    start = start or default_start(days, today)
    _prepare(out_dir, overwrite)

    population = build_population(users=users, days=days, seed=seed, start=start)
    plan = build_plan(population, events_per_day, seed)
    files = event_files(out_dir, start, days, files_per_day, gzip_all=gzip_all)

    with tempfile.TemporaryDirectory(prefix="nudge-generate-") as spill:
        con = duckdb.connect(config={"temp_directory": spill})
        try:
            build_events(con, plan, seed=seed, days=days, files_per_day=files_per_day)
            write_event_files(con, files, population, seed=seed, start=start)
            counts = con.execute(
                """
                select count(*) filter (where not is_copy),
                       count(*),
                       count(*) filter (where is_copy),
                       count(*) filter (where late and not is_copy),
                       count(*) filter (where uid < 0 and not is_copy)
                from ev
                """
            ).fetchone()
        finally:
            con.close()
    assert counts is not None
    events, lines, duplicates, late, anonymous = (int(c) for c in counts)

    bad = _inject_bad_lines(files, start, days) if inject_bad_lines else 0
    user_base, user_updates = user_profiles(population, seed)
    company_base, company_updates = company_profiles(population, seed)
    _write_jsonl(out_dir / "users" / "users-0001.jsonl", user_base)
    _write_jsonl(out_dir / "users" / "users-0002-updates.jsonl", user_updates)
    _write_jsonl(out_dir / "companies" / "companies-0001.jsonl", company_base)
    _write_jsonl(out_dir / "companies" / "companies-0002-updates.jsonl", company_updates)

    report = GenerateReport(
        out_dir=out_dir,
        start=start,
        end=start + timedelta(days=days - 1),
        days=days,
        users=len(population.users),
        companies=len(population.companies),
        events=events,
        event_lines=lines + bad,
        duplicates=duplicates,
        late_events=late,
        anonymous_events=anonymous,
        bad_lines=bad,
        event_files=len(files) + (1 if bad and not _has_plain(files, days // 2) else 0),
        user_rows=len(user_base) + len(user_updates),
        company_rows=len(company_base) + len(company_updates),
        storm_users=tuple(population.storm_users),
        seconds=time.perf_counter() - began,
    )
    log.info(
        "generated %d events (%d lines, %d files) for %d users, %s..%s, in %.1fs (%.0f events/s)",
        report.events,
        report.event_lines,
        report.event_files,
        report.users,
        report.start,
        report.end,
        report.seconds,
        report.events_per_second,
    )
    return report


def _check_args(*, users: int, days: int, events_per_day: int, files_per_day: int) -> None:
    if users < MIN_USERS:
        raise ValueError(f"users={users}: at least {MIN_USERS} are needed for a useful demo")
    if days < 1:
        raise ValueError(f"days={days}: must be at least 1")
    if events_per_day < 0:
        raise ValueError(f"events_per_day={events_per_day}: must not be negative")
    if files_per_day < 1:
        raise ValueError(f"files_per_day={files_per_day}: must be at least 1")


def _prepare(out_dir: Path, overwrite: bool) -> None:
    for sub in LANDING_SUBDIRS:
        path = out_dir / sub
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{path} already holds files; choose an empty --out folder or overwrite"
                )
            shutil.rmtree(path)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _has_plain(files: list[EventFile], day: int) -> bool:
    return any(f.dt == day and f.kind == "jsonl" for f in files)


def _inject_bad_lines(files: list[EventFile], start: date, days: int) -> int:
    """Append malformed lines to a plain .jsonl file in the middle of the period (or write them
    to a file of their own when that day has none)."""
    day = days // 2
    dt = (start + timedelta(days=day)).isoformat()
    plain = [f for f in files if f.dt == day and f.kind == "jsonl"]
    target = (
        plain[0].path
        if plain
        else files[0].path.parents[1] / f"dt={dt}" / (f"events-{dt}-99.jsonl")
    )
    lines = [
        # cut off mid-object, as a crashed exporter leaves it
        '{"request": {"time": "' + dt + 'T10:00:00.000", "uri": "http://api.example.com/v1/wid',
        "this is not json",
        # an event without request.time
        '{"request": {"uri": "http://api.example.com/v1/widgets", "verb": "GET"}, '
        '"response": {"status": 200}, "user_id": "usr_broken", "transaction_id": "bad-no-time"}',
        # a time that is not a time
        '{"request": {"time": "yesterday-ish", "uri": "http://api.example.com/health", '
        '"verb": "GET"}, "response": {"status": 200}, "transaction_id": "bad-time"}',
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return len(lines)
