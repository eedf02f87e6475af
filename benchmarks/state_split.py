"""What the state store split costs: one campaign's evaluations of a large cohort, and the copy of
the state for the outcome models, with the state in the warehouse (one DuckDB file: the
membership is an insert-select) against the state on Postgres beside a DuckDB warehouse (the
cohort read into Python, written in batches), in the same invocation.

    python benchmarks/state_split.py [--members 100000] [--rounds 2] [--pg postgresql://...]

Each round: a fresh DuckDB warehouse holding a cohort of --members rows, and a baseline
evaluation then a diff evaluation (a tenth of the members replaced). Prints the best seconds per
setup and their ratio; the machine is shared, so only the ratio of one invocation means anything.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import psycopg2

from email_jobs.campaigns import Campaign
from email_jobs.evaluate import evaluate_campaign
from email_jobs.guards import GuardInputs, GuardLimits
from email_jobs.state_copy import copy_state
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect_both

D0 = datetime(2026, 1, 1)
CAMPAIGN = Campaign(
    name="bench",
    cohort="cohort_bench",
    relation_name='"wh"."analytics"."cohort_bench"',
    entity="user",
    template="x",
    cooldown_days=30,
    columns=("entity_id", "email"),
    max_sends_per_evaluation=10**9,
    max_entry_share=1.0,
)


def set_cohort(wh: Warehouse, members: int, offset: int) -> None:
    """`members` rows, ids from `offset`, built in SQL (no rows cross into Python)."""
    with wh.transaction():
        wh.execute("create schema if not exists analytics")
        wh.execute("drop table if exists analytics.cohort_bench")
        wh.execute(
            "create table analytics.cohort_bench as select "
            "'u' || cast(i as varchar) as entity_id, "
            "'u' || cast(i as varchar) || '@example.com' as email "
            f"from generate_series({offset}, {offset + members - 1}) as t(i)"
        )


def quiet(end: datetime) -> GuardInputs:
    return GuardInputs(end, end.date(), 10, 10, (10,) * 7, None, None, None, None)


def one_round(settings: Settings, members: int) -> dict[str, float]:
    times: dict[str, float] = {}
    with connect_both(settings) as (wh, state):
        for n, offset in enumerate((0, members // 10)):
            set_cohort(wh, members, offset)
            end = D0 + timedelta(days=n)
            t0 = time.perf_counter()
            evaluate_campaign(wh, CAMPAIGN, end, GuardLimits(), "b", guard_inputs=quiet(end),
                              state=state)  # fmt: skip
            times[f"evaluation {n}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        copy_state(state, wh)
        times["state copy"] = time.perf_counter() - t0
    return times


def best(rounds: int, make: Callable[[], tuple[Settings, Callable[[], None]]], members: int):
    out: dict[str, float] = {}
    for _ in range(rounds):
        settings, cleanup = make()
        try:
            for k, v in one_round(settings, members).items():
                out[k] = min(out.get(k, v), v)
        finally:
            cleanup()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-split-"))
    admin_url = args.pg

    def one_db() -> tuple[Settings, Callable[[], None]]:
        path = tmp / f"{uuid.uuid4().hex}.duckdb"
        return Settings(warehouse=f"duckdb:///{path}", _env_file=None), lambda: None

    def split() -> tuple[Settings, Callable[[], None]]:
        name = f"nudge_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(admin_url)
        admin.autocommit = True
        admin.cursor().execute(f'create database "{name}"')
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
        path = tmp / f"{uuid.uuid4().hex}.duckdb"
        settings = Settings(warehouse=f"duckdb:///{path}", state_store=url, _env_file=None)

        def drop() -> None:
            admin.cursor().execute(f'drop database if exists "{name}" with (force)')
            admin.close()

        return settings, drop

    base = best(args.rounds, one_db, args.members)
    other = best(args.rounds, split, args.members)
    print(f"{args.members} members, best of {args.rounds}")
    print(f"{'step':<14} {'one DuckDB':>11} {'DuckDB+PG':>11} {'ratio':>7}")
    for key in other:
        b = base.get(key)
        ratio = f"{other[key] / b:7.2f}" if b and b >= 0.01 else "      -"
        shown = f"{b:10.2f}s" if b is not None else "          -"
        print(f"{key:<14} {shown} {other[key]:10.2f}s {ratio}")


if __name__ == "__main__":
    main()
