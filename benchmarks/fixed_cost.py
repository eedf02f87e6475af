"""The fixed cost of a `nudge run`, this tree against another commit, in the same invocation.

    python benchmarks/fixed_cost.py [--ref e77197f] [--rounds 3] [--days 3]

Both trees run from this machine's .venv (the other commit is checked out into a temporary
worktree, first on sys.path). On a tiny landing folder (20 users), each round runs, alternating
the two trees, in fresh processes and a fresh DAGSTER_HOME and warehouse each: one `nudge run`
per day for --days days (the first one ingests and builds from nothing, the later ones are the
daily fixed cost). It prints the best wall time per tree and their ratio; the machine is shared,
so only the ratio of the same invocation means anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_module(tree: Path) -> str:
    return "nudge.app.cli" if (tree / "nudge" / "app" / "cli.py").exists() else "nudge.cli"


def nudge_runs(tree: Path, landing: Path, days: list[date], work: Path) -> list[float]:
    """Seconds of each `nudge run --as-of DAY` of `tree`, in a fresh home and warehouse."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "NUDGE_LANDING_DIR": str(landing),
        "NUDGE_WAREHOUSE": f"duckdb:///{work / 'wh.duckdb'}",
        "NUDGE_OUTBOX_DIR": str(work / "outbox"),
        "DAGSTER_HOME": str(work / "home"),
        "NUDGE_EMAIL_BACKEND": "outbox",
    }
    times = []
    for day in days:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", cli_module(tree), "run", "--as-of", day.isoformat()],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ref", default="e77197f", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nudge-fixed-cost-"))
    other = tmp / "other"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(other), args.ref], cwd=REPO, check=True
    )
    try:
        last = date.today() - timedelta(days=1)
        landing = tmp / "landing"
        subprocess.run(
            [sys.executable, "-m", cli_module(REPO), "generate", "--out", str(landing),
             "--users", "20", "--days", str(args.days + 10), "--events-per-day", "200",
             "--seed", "3"],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        days = [last - timedelta(days=i) for i in reversed(range(args.days))]
        # Both trees parse the same dbt project; each keeps its own target/ manifest.
        for tree in (REPO, other):
            subprocess.run(
                [str(Path(sys.executable).parent / "dbt"), "parse", "--quiet", "--project-dir",
                 str(tree / "dbt_project"), "--profiles-dir", str(tree / "dbt_project")],
                check=True, capture_output=True,
            )  # fmt: skip
        best: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for name, tree in (("this tree", REPO), (args.ref, other)):
                runs = nudge_runs(tree, landing, days, tmp / "work")
                print(f"round {r + 1} {name:>10}: " + ", ".join(f"{t:.1f}s" for t in runs))
                prev = best.get(name)
                best[name] = runs if prev is None else [min(a, b) for a, b in zip(prev, runs)]
        ours, theirs = best["this tree"], best[args.ref]
        print(f"first run (ingest + build from nothing): {ours[0]:.1f}s vs {theirs[0]:.1f}s "
              f"= {ours[0] / theirs[0]:.2f}x")  # fmt: skip
        if len(ours) > 1:
            a, b = sum(ours[1:]) / len(ours[1:]), sum(theirs[1:]) / len(theirs[1:])
            print(f"each later day (the fixed cost): {a:.1f}s vs {b:.1f}s = {a / b:.2f}x")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
