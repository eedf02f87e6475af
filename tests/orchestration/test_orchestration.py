"""The Dagster wiring: definitions load, partitions, the landing sensor, the schedule, backfills
that never mail, and two runs started together on one DuckDB warehouse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest
from support.scenario import land_until, write_profiles

from nudge.core.instant import day_partition
from nudge.ingest.watch import changes_since, event_file_versions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    landing = tmp_path / "landing"
    write_profiles(landing)
    monkeypatch.setenv("NUDGE_LANDING_DIR", str(landing))
    monkeypatch.setenv("NUDGE_WAREHOUSE", f"duckdb:///{tmp_path / 'wh.duckdb'}")
    monkeypatch.setenv("NUDGE_OUTBOX_DIR", str(tmp_path / "outbox"))
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return landing


def test_definitions_load_with_every_job_schedule_and_sensor(dbt_manifest) -> None:
    from orchestration.definitions import defs

    d = defs()
    d.validate_loadable(d)
    assert {j.name for j in d.jobs} >= {"nudge_ingest", "nudge_evaluate", "nudge_send"}
    assert {s.name for s in d.schedules} == {"nudge_daily"}
    assert {s.name for s in d.sensors} == {
        "landing_files",
        "send_after_evaluation",
        "record_run_failures",
        "outcomes_after_send",
    }
    keys = {k.to_user_string() for k in d.resolve_all_asset_keys()}
    assert {"raw/events", "raw/users", "raw/companies"} <= keys
    assert {"evaluations/too_many_4xx_7d", "sends/too_many_4xx_7d"} <= keys
    # Did it work: every campaign's sends -> the delivery events -> the outcomes.
    graph = d.resolve_asset_graph()
    sends = {k for k in graph.get_all_asset_keys() if k.path[0] == "sends"}
    assert {"sends/too_many_4xx_7d", "sends/not_activated_7d"} <= {
        k.to_user_string() for k in sends
    }
    events = graph.get(dg.AssetKey(["email_events"]))
    assert events.parent_keys == sends
    assert events.group_name == "email"
    entries = graph.get(dg.AssetKey(["outcomes", "fct_campaign_entries"]))
    assert dg.AssetKey(["email_events"]) in entries.parent_keys
    assert not entries.parent_keys & sends  # through the events, not around them
    # The state tables the outcomes read: copied after the sends and the events (state_copy),
    # under the keys of their dbt sources.
    ledger = graph.get(dg.AssetKey(["nudge", "send_ledger"]))
    assert ledger.parent_keys == sends | {dg.AssetKey(["email_events"])}
    assert ledger.key in entries.parent_keys

    # The outcomes job loads the events before it builds on them; an evaluation does neither.
    def job_keys(name: str) -> set[str]:
        return {k.to_user_string() for k in d.resolve_job_def(name).asset_layer.selected_asset_keys}

    assert {"email_events", "nudge/send_ledger", "outcomes/fct_campaign_lift"} <= job_keys(
        "nudge_outcomes"
    )
    assert not {"email_events", "nudge/send_ledger", "outcomes/fct_campaign_lift"} & job_keys(
        "nudge_evaluate"
    )
    lift = graph.get(dg.AssetKey(["outcomes", "fct_campaign_lift"]))
    assert {k.to_user_string() for k in lift.parent_keys} == {"outcomes/fct_campaign_entries"}


def test_an_instant_belongs_to_the_day_it_closes() -> None:
    assert day_partition(datetime(2026, 3, 12)) == "2026-03-11"
    assert day_partition(datetime(2026, 3, 12, 14, 30)) == "2026-03-12"


def test_dbt_builds_once_at_the_instant_without_unit_tests() -> None:
    from nudge.core.dbt_project import dbt_invocation_env
    from nudge.core.settings import load_settings
    from orchestration.defs.transform.assets import dbt_build_args

    args = dbt_build_args()
    assert args[0] == "build"
    assert args[args.index("--exclude-resource-type") + 1] == "unit_test"
    assert args[args.index("--exclude") + 1] == "source:raw"
    assert "--vars" not in args  # changed --vars would make dbt re-parse the project each run
    env = dbt_invocation_env(load_settings(), datetime(2026, 3, 12))
    assert env["NUDGE_AS_OF"] == "2026-03-12T00:00:00Z"
    assert env["NUDGE_DBT_TARGET"] == "duckdb"


def test_other_dbt_vars_go_as_vars() -> None:
    from nudge.core.dbt_project import dbt_vars

    assert dbt_vars() == []
    shadow = json.loads(dbt_vars(nudge_shadow_model="cohort_x")[1])
    assert shadow == {"nudge_shadow_model": "cohort_x"}


def test_a_runs_instant_is_its_tag_else_the_end_of_its_day_partition() -> None:
    from nudge.core.instant import AS_OF_TAG, instant_of, instant_tags

    assert instant_of({}, "2026-03-11") == datetime(2026, 3, 12)
    tagged = instant_tags(datetime(2026, 3, 11, 6))
    assert tagged == {AS_OF_TAG: "2026-03-11T06:00:00Z"}
    assert instant_of(tagged, "2026-03-11") == datetime(2026, 3, 11, 6)  # the tag wins
    assert instant_of({}, None) is None  # `nudge release`: no instant


def test_changed_files_are_grouped_by_dt_and_trigger_once_per_version(tmp_path: Path) -> None:
    land_until(tmp_path, date(2026, 3, 11), first=date(2026, 3, 10))
    first = changes_since({}, event_file_versions(tmp_path))
    assert set(first.dts) == {date(2026, 3, 10), date(2026, 3, 11)}
    again = changes_since(first.cursor, event_file_versions(tmp_path))
    assert again.dts == {}

    changed = tmp_path / "events" / "dt=2026-03-11" / "part-0.jsonl"
    changed.write_text(changed.read_text() + changed.read_text().splitlines()[0] + "\n")
    after = changes_since(first.cursor, event_file_versions(tmp_path))
    assert after.dts == {date(2026, 3, 11): ["events/dt=2026-03-11/part-0.jsonl"]}
    # The same file version asks with the same run key (Dagster then runs it once).
    assert after.run_key(date(2026, 3, 11)) == changes_since(
        first.cursor, event_file_versions(tmp_path)
    ).run_key(date(2026, 3, 11))


def test_landing_sensor_requests_exactly_the_changed_partitions(env: Path, dbt_manifest) -> None:
    from orchestration.defs.ingest.sensors import landing_files

    land_until(env, date(2026, 3, 11), first=date(2026, 3, 9))
    with dg.instance_for_test() as instance:
        result = landing_files(dg.build_sensor_context(instance=instance, cursor=None))
        assert sorted(r.partition_key for r in result.run_requests) == [
            "2026-03-09",
            "2026-03-10",
            "2026-03-11",
        ]
        # The cursor survives a restart: the next tick from it asks for nothing new.
        quiet = landing_files(dg.build_sensor_context(instance=instance, cursor=result.cursor))
        assert quiet.run_requests == []
        land_until(env, date(2026, 3, 12), first=date(2026, 3, 9))
        newer = landing_files(dg.build_sensor_context(instance=instance, cursor=result.cursor))
        assert [r.partition_key for r in newer.run_requests] == ["2026-03-12"]


def test_daily_schedule_evaluates_the_day_that_just_ended(dbt_manifest) -> None:
    from orchestration.defs.email.schedules import daily_schedule

    schedule = daily_schedule("0 6 * * *")
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 3, 12, 6, tzinfo=UTC))
    request = schedule(ctx)
    assert request.partition_key == "2026-03-11"


@pytest.mark.integration
def test_backfill_of_past_days_reingests_and_reevaluates_without_sending(
    env: Path, tmp_path: Path, dbt_manifest
) -> None:
    from nudge.app.cli import main as nudge
    from nudge.app.runner import execute
    from nudge.core.settings import load_settings
    from nudge.core.warehouse import connect

    for day in ("2026-03-10", "2026-03-11", "2026-03-12"):
        land_until(env, date.fromisoformat(day))
        assert nudge(["run", "--as-of", day]) == 0
    # Only the first run had older dt= folders to catch up on; later days each brought their
    # own folder only, which their evaluation run ingests: no separate ingest run for them.
    instance = dg.DagsterInstance.get()
    ingest_runs = instance.get_runs(dg.RunsFilter(job_name="nudge_ingest"))
    assert len(ingest_runs) == 1
    # dbt kept its parse state from the first run (this warehouse path is not the one the project
    # was parsed with at install, and each day is a new instant), so the later runs did not parse
    # the whole project again.
    dbt_output = (tmp_path / "dagster_home" / "last-nudge_evaluate.log").read_text()
    assert "Registered adapter" in dbt_output  # it is dbt's output
    assert "Unable to do partial parsing" not in dbt_output
    outbox = tmp_path / "outbox"
    sent_before = sorted(p.name for p in outbox.glob("*.eml"))
    assert sent_before  # the scenario mails on 03-11 and 03-12

    def counts() -> tuple[int, int]:
        with connect(load_settings()) as wh:
            events = wh.fetchone("select count(*) from raw.events")[0]
            ledger = wh.fetchone("select count(*) from nudge.send_ledger")[0]
        return events, ledger

    events_before, _ = counts()
    # What a backfill launched from the UI does for each past day: a run of that partition.
    # ua_old (signed up 02-12) enters the not-activated cohort at the end of 02-19.
    for day in ("2026-02-18", "2026-02-19"):
        assert execute("nudge_evaluate", instance, {}, partition_key=day).success
        assert execute("nudge_send", instance, {}).success
    events_after, _ = counts()
    assert events_after == events_before  # re-ingested without duplicating
    assert sorted(p.name for p in outbox.glob("*.eml")) == sent_before  # nobody mailed
    with connect(load_settings()) as wh:
        evaluated = {
            r[0]
            for r in wh.fetchall(
                "select distinct as_of from nudge.evaluations where as_of < ?",
                [datetime(2026, 3, 1)],
            )
        }
        backfilled = wh.fetchall(
            "select campaign, entity_id, state, reason from nudge.send_ledger "
            "where entry_as_of < ?",
            [datetime(2026, 3, 1)],
        )
    assert evaluated == {datetime(2026, 2, 19), datetime(2026, 2, 20)}  # as of each day's end
    assert [(c, e, s) for c, e, s, _ in backfilled] == [("not_activated_7d", "ua_old", "skipped")]
    assert "stale" in backfilled[0][3]


@pytest.mark.integration
def test_two_runs_started_together_on_duckdb_both_succeed(env: Path, tmp_path: Path) -> None:
    land_until(env, date(2026, 3, 11))
    nudge = [sys.executable, "-m", "nudge.app.cli", "run", "--as-of"]
    procs = [
        subprocess.Popen(
            [*nudge, day],
            cwd=REPO,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for day in ("2026-03-10", "2026-03-11")
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    from nudge.core.settings import load_settings
    from nudge.core.warehouse import connect

    with connect(load_settings()) as wh:
        instants = {r[0] for r in wh.fetchall("select distinct as_of from nudge.evaluations")}
    assert instants == {datetime(2026, 3, 11), datetime(2026, 3, 12)}


@pytest.mark.integration
def test_a_failed_run_is_recorded_where_nudge_status_shows_it(
    env: Path, dbt_manifest, capsys
) -> None:
    from nudge.app.cli import main as nudge
    from nudge.app.runner import execute
    from orchestration.defs.email.sensors import record_run_failures

    # No events at all before the instant: the freshness guard defers, and the run fails.
    instance = dg.DagsterInstance.get()
    outcome = execute("nudge_evaluate", instance, {}, partition_key="2026-03-10")
    assert not outcome.success
    run = instance.get_run_by_id(outcome.run_id)
    failure = next(
        e.dagster_event
        for e in instance.all_logs(outcome.run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="record_run_failures",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()
    record_run_failures(context)

    capsys.readouterr()
    assert nudge(["status", "--json"]) == 0
    last = json.loads(capsys.readouterr().out)["last_failure"]
    assert last["run_id"] == outcome.run_id and last["job"] == "nudge_evaluate"


def test_a_daemon_launched_run_materializes_every_model_and_its_sends_carry_its_instant(
    env: Path, dbt_manifest
) -> None:
    """A partition run as the schedule or a backfill starts it (no tag): every dbt model
    materialized with its checks, and the send run the sensor starts evaluates at the same
    instant (the end of the partition's day), not at the campaign's newest evaluation."""
    from nudge.app.runner import execute
    from nudge.core.instant import AS_OF_TAG
    from orchestration.defs.email.sensors import send_after_evaluation
    from orchestration.defs.transform.assets import nudge_dbt_models

    land_until(env, date(2026, 3, 11))
    instance = dg.DagsterInstance.get()
    outcome = execute("nudge_evaluate", instance, {}, partition_key="2026-03-10")
    assert outcome.success, outcome.error

    materialized, checks = set(), set()
    for record in instance.all_logs(outcome.run_id):
        event = record.dagster_event
        if event and event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialized.add(event.asset_key.to_user_string())
        if event and event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.event_specific_data
            checks.add((data.asset_key.to_user_string(), data.check_name, data.passed))
    assert {k.to_user_string() for k in nudge_dbt_models.keys} <= materialized
    assert checks and all(passed for _, _, passed in checks)

    context = dg.build_run_status_sensor_context(
        sensor_name="send_after_evaluation",
        dagster_event=next(
            e.dagster_event
            for e in instance.all_logs(outcome.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_SUCCESS
        ),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(outcome.run_id),
    )
    request = send_after_evaluation(context)
    assert request.tags[AS_OF_TAG] == "2026-03-11T00:00:00Z"
    assert request.tags["nudge/evaluation_run"] == outcome.run_id


CHILD_SIGNALS = """
import subprocess, sys
import dagster as dg
from nudge.app.cli import main

if sys.argv[1] == "nudge":
    main(["generate", "--out", sys.argv[2], "--users", "1", "--days", "1"])

@dg.asset
def one() -> int:
    return 1

dg.materialize([one])  # what `nudge run` does: a Dagster job in this process
status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
print(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")))
"""


@pytest.mark.parametrize("entry", ["nudge", "bare dagster"])
def test_a_background_run_leaves_its_children_stoppable_by_sigterm(
    entry: str, tmp_path: Path
) -> None:
    """`nudge run &` in a script starts with SIGINT ignored; Dagster copies SIGINT's handler to
    SIGTERM, and an ignored signal survives exec: without Nudge's guard, dbt and every other
    child would ignore `kill` and `timeout`."""
    script = tmp_path / "child.py"
    script.write_text(CHILD_SIGNALS)
    argv = [sys.executable, str(script), entry.split()[0], str(tmp_path / "landing")]
    shell = subprocess.run(
        ["sh", "-c", '"$@" & wait $!', "sh", *argv],  # a background job: SIGINT ignored
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    ignored = int(shell.stdout.split()[-1], 16)
    sigterm_ignored = bool(ignored & (1 << (signal.SIGTERM - 1)))  # bit n-1: signal n
    assert sigterm_ignored == (entry == "bare dagster"), shell.stdout
