"""`dbt build` on Spark against DuckDB, on the same raw data, in the same invocation.

    python benchmarks/dbt_spark.py [--users 200] [--days 14] [--events-per-day 4000]

Generates a landing folder, ingests it into a DuckDB warehouse (nudge.ingest), copies its raw
tables into an embedded Spark started for the run (Parquet tables, raw.events partitioned by dt,
as tests/support/spark_seed.py writes them), then times on each engine, in fresh processes: a
full `dbt build` (models, data tests, unit tests), then `dbt run` of the incremental rollups with
nothing new (the fixed cost of a daily run's rollups). Prints the seconds and Spark's ratio to
DuckDB; the machine is shared, so only the ratio of the same invocation means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import spark_seed  # noqa: E402

from nudge.core.settings import Settings  # noqa: E402
from nudge.core.spark import ensure_local_server, spark_session, stop_local_server  # noqa: E402
from nudge.core.warehouse import connect  # noqa: E402
from nudge.ingest import ingest_pending  # noqa: E402
from synthetic.generate import generate  # noqa: E402

DBT_PROJECT = REPO / "dbt_project"
ROLLUPS = "fct_user_daily_activity fct_user_daily_endpoint_status fct_hourly_event_volume"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dbt(args: list[str], env: dict[str, str], work: Path, as_of: str) -> float:
    """Seconds of one dbt command in its own process (as the pipeline runs it)."""
    exe = Path(sys.executable).with_name("dbt")
    cmd = [str(exe), *args, "--project-dir", str(DBT_PROJECT), "--profiles-dir",
           str(DBT_PROJECT), "--target-path", str(work / "target"), "--log-path",
           str(work / "logs"), "--vars", json.dumps({"nudge_as_of": as_of})]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        env={**os.environ, **env, "DO_NOT_TRACK": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"dbt {args[0]} failed:\n{proc.stdout[-4000:]}")
    return time.monotonic() - started


def copy_raw_to_spark(duck: Settings, spark: Settings) -> int:
    """raw.events, raw.users, raw.companies from DuckDB into Spark; the events copied."""
    session = spark_session(spark)
    spark_seed.create_raw_tables(session)
    copied = 0
    with connect(duck) as wh:
        for table in ("events", "users", "companies"):
            rows = wh.fetchdicts(f"select * from raw.{table}")
            columns = {name for name, _ in spark_seed.TABLES[f"raw.{table}"]}
            rows = [{k: v for k, v in row.items() if k in columns} for row in rows]
            spark_seed.write_rows(session, f"raw.{table}", rows, mode="overwrite")
            copied += len(rows) if table == "events" else 0
    spark_seed.create_state_tables(session)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--events-per-day", type=int, default=4000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nudge-dbt-spark-") as tmp:
        work = Path(tmp)
        start = date(2026, 3, 1)
        generate(work / "landing", users=args.users, days=args.days,
                 events_per_day=args.events_per_day, start=start, today=start)  # fmt: skip
        as_of = (start + timedelta(days=args.days - 1)).isoformat()
        duck = Settings(warehouse=f"duckdb:///{work / 'wh.duckdb'}", _env_file=None)
        with connect(duck) as wh:
            ingest_pending(wh, work / "landing")
        spark = Settings(
            warehouse="spark://local[2]",
            spark_dir=str(work / "spark"),
            spark_connect_port=free_port(),
            state_store=f"duckdb:///{work / 'state.duckdb'}",
            _env_file=None,
        )
        remote = ensure_local_server(spark)
        try:
            events = copy_raw_to_spark(duck, spark)
            envs = {
                "duckdb": {"NUDGE_DBT_TARGET": "duckdb",
                           "NUDGE_DBT_DUCKDB_PATH": str(work / "wh.duckdb")},
                "spark": {"NUDGE_DBT_TARGET": "spark", "SPARK_REMOTE": remote},
            }  # fmt: skip
            with connect(duck) as wh:  # the outcome models read the nudge schema
                from email_jobs.ledger import ensure_schema

                ensure_schema(wh)
            times: dict[str, dict[str, float]] = {}
            for engine, env in envs.items():
                out = work / engine
                times[engine] = {
                    "dbt build": dbt(["build"], env, out, as_of),
                    "dbt run (rollups, nothing new)": dbt(
                        ["run", "--select", ROLLUPS], env, out, as_of
                    ),
                }
        finally:
            stop_local_server(spark)
    print(f"{events} events, {args.users} users, {args.days} days; as of the end of {as_of}")
    print(f"{'step':34} {'duckdb s':>9} {'spark s':>9} {'spark/duckdb':>13}")
    for step in times["duckdb"]:
        d, s = times["duckdb"][step], times["spark"][step]
        print(f"{step:34} {d:9.1f} {s:9.1f} {s / d:12.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
