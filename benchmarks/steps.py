"""The measured steps, each run by `benchmarks/run.py` in a fresh Python process.

    python benchmarks/steps.py STEP JSON_ARGS

prints one JSON object (the step's figures) as its last line. The parent measures wall time and
peak RSS (the child's and its own children's, from wait4).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.floor import bare_read_sql, cohorts_sql  # noqa: E402


def _duckdb(path: str, memory_limit: str) -> Any:
    import duckdb

    con = duckdb.connect(
        path, config={"memory_limit": memory_limit, "preserve_insertion_order": False}
    )
    con.execute("set TimeZone = 'UTC'")
    return con


def generate(args: dict[str, Any]) -> dict[str, Any]:
    from synthetic.generate import generate as gen

    report = gen(
        Path(args["out"]),
        users=args["users"],
        days=args["days"],
        events_per_day=args["events_per_day"],
        seed=args.get("seed", 7),
        start=date.fromisoformat(args["start"]),
        gzip_all=bool(args.get("gzip")),
    )
    return {"events": report.events, "lines": report.event_lines, "seconds": report.seconds}


def bare(args: dict[str, Any]) -> dict[str, Any]:
    """read_json of every event file into a table of a fresh database file."""
    Path(args["db"]).unlink(missing_ok=True)
    con = _duckdb(args["db"], args["memory_limit"])
    t0 = time.perf_counter()
    for sql in bare_read_sql(Path(args["landing"])):
        con.execute(sql)
    con.execute("checkpoint")
    seconds = time.perf_counter() - t0
    rows = con.execute("select count(*) from bare").fetchone()[0]
    con.close()
    return {"rows": rows, "seconds": seconds}


def ingest(args: dict[str, Any]) -> dict[str, Any]:
    """`ingest_pending` (quarantine, hashing, dedup) of the landing folder into a new warehouse."""
    from nudge.core.settings import load_settings
    from nudge.core.warehouse import connect
    from nudge.ingest import ingest_pending

    Path(args["db"]).unlink(missing_ok=True)
    settings = load_settings(
        warehouse=f"duckdb:///{args['db']}", duckdb_memory_limit=args["memory_limit"]
    )
    t0 = time.perf_counter()
    with connect(settings) as wh:
        report = ingest_pending(wh, Path(args["landing"]))
        wh.execute("checkpoint")
    seconds = time.perf_counter() - t0
    t = report.totals["events"]
    return {"rows": t.loaded, "lines": t.lines_read, "rejected": t.rejected, "seconds": seconds}


def floor(args: dict[str, Any]) -> dict[str, Any]:
    """Both cohorts' members at `end` in one query over the same files, in memory."""
    con = _duckdb(":memory:", args["memory_limit"])
    con.execute(f"set temp_directory = '{args['temp_dir']}'")
    end = datetime.fromisoformat(args["end"])
    t0 = time.perf_counter()
    rows = con.execute(cohorts_sql(Path(args["landing"]), end)).fetchall()
    seconds = time.perf_counter() - t0
    members: dict[str, list[str]] = {"not_activated_7d": [], "too_many_4xx_7d": []}
    for cohort, user_id in rows:
        members[cohort].append(user_id)
    return {"members": {k: sorted(v) for k, v in members.items()}, "seconds": seconds}


def _spark_settings(args: dict[str, Any]) -> Any:
    from nudge.core.settings import Settings

    return Settings(
        warehouse="spark://local[2]",
        state_store=args["nudge_state_store"],
        spark_dir=args["nudge_spark_dir"],
        spark_connect_port=int(args["nudge_spark_connect_port"]),
        _env_file=None,
    )


def spark_start(args: dict[str, Any]) -> dict[str, Any]:
    """Start the embedded Spark (JVM and Spark Connect): a cost a `nudge run` pays once."""
    from nudge.core.spark import ensure_local_server

    ensure_local_server(_spark_settings(args))  # its URL carries the server's token: not shown
    return {"started": True}


def spark_stop(args: dict[str, Any]) -> dict[str, Any]:
    from nudge.core.spark import stop_local_server

    return {"stopped": stop_local_server(_spark_settings(args))}


STEPS = {
    "generate": generate,
    "bare": bare,
    "ingest": ingest,
    "floor": floor,
    "spark_start": spark_start,
    "spark_stop": spark_stop,
}


if __name__ == "__main__":
    result = STEPS[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(result))
