"""`nudge demo`'s wall time, this tree against another commit, in the same invocation.

    python benchmarks/demo_time.py [--ref 7322809] [--rounds 1] [--variant "--every 3" ...]

Both trees run from this machine's .venv (the other commit is checked out into a temporary
worktree, first on sys.path), each `nudge demo` in a fresh process and a fresh working folder
(its data/ there), alternating the trees; each --variant is one more run of this tree with
those `nudge demo` arguments (none: its defaults). It prints each run's wall time, the
simulation's own time as the demo reports it ("Done in" / "Simulated in"), and the ratios; the
machine is shared, so only the ratios of the same invocation mean anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SIMULATED = re.compile(r"(?:Done|Simulated) in (\d+)s")


def run_demo(tree: Path, work: Path, args: list[str]) -> tuple[float, float | None]:
    """(wall seconds, the simulation's seconds as printed) of one `nudge demo` of `tree`."""
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUDGE_", "DAGSTER_"))}
    env |= {"PYTHONPATH": str(tree), "NUDGE_EMAIL_BACKEND": "outbox"}
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "nudge.app.cli", "demo", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - began
    found = _SIMULATED.search(proc.stdout)
    return wall, float(found.group(1)) if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ref", default="7322809", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--variant", action="append", help="`nudge demo` arguments of a run of this tree"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nudge-demo-time-"))
    other = tmp / "other"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(other), args.ref], cwd=REPO, check=True
    )
    runs = [(args.ref, other, "")] + [("this", REPO, v) for v in (args.variant or [""])]
    results: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    try:
        for r in range(args.rounds):
            for i, (name, tree, extra) in enumerate(runs):
                wall, simulated = run_demo(tree, tmp / f"{i}-{r}", shlex.split(extra))
                results.setdefault((name, extra), []).append((wall, simulated))
                print(f"round {r + 1} {name} {extra!r}: wall {wall:.1f}s, simulation {simulated}s")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO, check=False)
    ref_wall, ref_sim = min(results[(args.ref, "")])
    for (name, extra), times in results.items():
        wall, sim = min(times)
        ratio = f", simulation ratio {sim / ref_sim:.2f}" if sim and ref_sim else ""
        print(f"best {name} {extra!r}: wall {wall:.1f}s (ratio {wall / ref_wall:.2f}){ratio}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
