"""Evaluations never mix instants (contract, "Concurrency and failures").

Cohort tables are rebuilt per instant by the dbt step and read by the evaluation step of the same
run. Several evaluations of different days at once, as real `nudge run --as-of` processes on a
Postgres warehouse with Dagster's storage on Postgres too, must record the membership a one-by-one
run records; an evaluation that finds its cohort built for another instant refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest
from support.dagster_instances import use_docker_instance
from test_guards_dagster import CAMPAIGN, D0, env  # noqa: F401 - `env` is a fixture
from test_guards_dagster import evaluate as evaluate_at

from nudge.app.cli import main as nudge
from nudge.core.evaluation_lock import evaluation_lock, record_builds
from nudge.core.settings import Settings, load_settings
from nudge.core.warehouse import connect
from orchestration.defs.email.assets import build_evaluations
from orchestration.defs.shared.resources import NudgeResource, evaluation_lock_resource
from orchestration.defs.shared.tags import AS_OF_TAG
from synthetic.generate import generate

REPO = Path(__file__).resolve().parents[2]


def membership(url: str) -> dict[tuple[str, str], list[str]]:
    """{(campaign, as_of): sorted entity ids} as recorded in nudge.cohort_membership."""
    settings = load_settings(warehouse=url)
    out: dict[tuple[str, str], list[str]] = {}
    with connect(settings) as wh:
        for campaign, as_of, entity in wh.fetchall(
            "select campaign, as_of, entity_id from nudge.cohort_membership "
            "order by campaign, as_of, entity_id"
        ):
            out.setdefault((campaign, as_of.isoformat()), []).append(entity)
    return out


@pytest.mark.postgres
def test_concurrent_evaluations_of_different_days_record_what_one_by_one_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str, dbt_manifest: None
) -> None:
    use_docker_instance(monkeypatch, tmp_path / "home", postgres_database).dispose()
    landing = tmp_path / "landing"
    start = date(2026, 3, 1)
    # Small, but with cohorts that change every day (sign-ups enter not_activated_7d daily).
    report = generate(landing, users=40, days=14, events_per_day=300, seed=11, start=start)
    monkeypatch.setenv("NUDGE_LANDING_DIR", str(landing))
    monkeypatch.setenv("NUDGE_WAREHOUSE", postgres_database)
    monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "outbox")
    monkeypatch.setenv("NUDGE_OUTBOX_DIR", str(tmp_path / "outbox"))

    # Ingest everything and evaluate the last day: the days below are then backfills (their
    # entries stale-skipped, nothing mailed) with nothing left to ingest.
    assert nudge(["run", "--as-of", report.end.isoformat()]) == 0
    days = [report.end - timedelta(days=n) for n in (4, 5, 6)]

    # All at once, as separate processes: each builds its cohorts and evaluates them.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nudge.app.cli", "run", "--as-of", d.isoformat()],
            cwd=REPO,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for d in days
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(days), "\n".join(outputs)
    together = membership(postgres_database)

    # One by one, the same days again: each evaluation replaces its instant's membership.
    for d in days:
        assert nudge(["run", "--as-of", d.isoformat()]) == 0
    one_by_one = membership(postgres_database)

    instants = {k for k in one_by_one if k[1][:10] != (report.end + timedelta(days=1)).isoformat()}
    assert len(instants) == 2 * len(days)  # two seed campaigns x three days
    assert {k: together.get(k) for k in instants} == {k: one_by_one[k] for k in instants}
    # The days differ, so a mix-up would show.
    assert len({tuple(one_by_one[("not_activated_7d", k[1])]) for k in instants}) > 1


def test_an_evaluation_refuses_a_cohort_built_for_another_instant(env: Settings) -> None:  # noqa: F811
    assert evaluate_at(env, 1, ["u1"]).success  # day 1: built and evaluated
    end = D0 + timedelta(days=2)
    with connect(env) as wh:
        # Day 2's evaluation finds its cohort rebuilt for day 3, as a concurrent evaluation's
        # dbt build would leave it.
        record_builds(wh, [CAMPAIGN.cohort], end + timedelta(days=1), "other-run")
        recorded = wh.fetchall("select as_of from nudge.evaluations")
    result = dg.materialize(
        [build_evaluations([CAMPAIGN])],
        resources={"nudge": NudgeResource(), "evaluation_lock": evaluation_lock_resource},
        partition_key=(end - timedelta(days=1)).date().isoformat(),
        tags={AS_OF_TAG: end.isoformat() + "Z"},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    text = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert "built for 2026-04-04T00:00:00Z (run other-run), not for this evaluation's" in text
    assert "2026-04-03T00:00:00Z" in text
    with connect(env) as wh:  # nothing recorded for day 2
        assert wh.fetchall("select as_of from nudge.evaluations") == recorded


def test_the_evaluation_lock_excludes_a_second_holder(env: Settings) -> None:  # noqa: F811
    # Another process holds the lock: this one waits, then gives up after its wait.
    code = (
        "import sys; from nudge.core.settings import load_settings; "
        "from nudge.core.evaluation_lock import evaluation_lock\n"
        "with evaluation_lock(load_settings()):\n"
        "    print('held', flush=True); sys.stdin.readline()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError), evaluation_lock(env, wait_s=0.5):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with evaluation_lock(env, wait_s=5):  # released with its holder
        pass
