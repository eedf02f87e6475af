"""Each guard through Dagster: the entries it holds (or skips, or defers), the asset check that
fails with the reason, and `release` sending exactly the held entries; then `nudge release` and
`nudge test-send` through the real command line."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from support.warehouse_seed import seed_events

from email_jobs.campaigns import Campaign
from email_jobs.ledger import ensure_schema
from email_jobs.send import release
from nudge.core.evaluation_lock import record_builds
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect
from orchestration.defs.email.assets import build_evaluations, build_sends
from orchestration.defs.shared.resources import NudgeResource, evaluation_lock_resource
from orchestration.defs.shared.tags import AS_OF_TAG, INGEST_RUNS_TAG

D0 = datetime(2026, 4, 1)
CAMPAIGN = Campaign(
    name="not_activated_7d",
    cohort="cohort_not_activated_7d",
    relation_name='"wh"."analytics"."cohort_not_activated_7d"',
    entity="user",
    template="not_activated_7d",
    columns=("entity_id", "email", "first_name", "signup_at"),
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("NUDGE_WAREHOUSE", f"duckdb:///{tmp_path / 'wh.duckdb'}")
    monkeypatch.setenv("NUDGE_LANDING_DIR", str(tmp_path / "landing"))
    monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "outbox")
    monkeypatch.setenv("NUDGE_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "landing").mkdir()
    settings = Settings(_env_file=None)
    with connect(settings) as wh:
        seed_events(wh, D0 - timedelta(days=30), D0 + timedelta(days=5))
        ensure_schema(wh)
        set_members(wh, [])
    return settings


def set_members(wh: Warehouse, entities: list[str]) -> None:
    with wh.transaction():
        wh.execute("create schema if not exists analytics")
        wh.execute(
            "create or replace table analytics.cohort_not_activated_7d "
            "(entity_id varchar, email varchar, first_name varchar, signup_at timestamp)"
        )
        for e in entities:
            wh.execute(
                "insert into analytics.cohort_not_activated_7d values (?, ?, ?, ?)",
                [e, f"{e}@example.com", e.title(), D0 - timedelta(days=10)],
            )


def evaluate(settings: Settings, day: int, members: list[str], campaign=CAMPAIGN, tags=None):
    end = D0 + timedelta(days=day)
    with connect(settings) as wh:
        set_members(wh, members)
        # What the dbt asset records after building the cohort for this instant.
        record_builds(wh, [campaign.cohort], end, "test")
    partition = (end - timedelta(days=1)).date().isoformat()
    return dg.materialize(
        [build_evaluations([campaign])],
        resources={"nudge": NudgeResource(), "evaluation_lock": evaluation_lock_resource},
        partition_key=partition,
        tags={AS_OF_TAG: end.isoformat() + "Z", **(tags or {})},
        raise_on_error=False,
    )


def send(campaign=CAMPAIGN) -> dg.ExecuteInProcessResult:
    return dg.materialize([build_sends([campaign])], resources={"nudge": NudgeResource()})


def check(result: dg.ExecuteInProcessResult, name: str = "guards") -> tuple[bool, str]:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation.passed, evaluation.description or ""


def outbox_entities(settings: Settings) -> list[str]:
    found = []
    for path in sorted(Path(settings.outbox_dir).glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found.append(str(msg["X-Nudge-Entity"]))
    return sorted(found)


def states(settings: Settings) -> dict[str, tuple[str, str | None]]:
    with connect(settings) as wh:
        rows = wh.fetchall("select entity_id, state, reason from nudge.send_ledger")
    return {e: (s, r) for e, s, r in rows}


def test_blast_radius_holds_fails_its_check_and_release_sends_exactly_the_held(env):
    limited = replace(CAMPAIGN, max_sends_per_evaluation=2)
    assert evaluate(env, 0, ["old"], limited).success  # baseline
    result = evaluate(env, 1, ["old", "a", "b", "c"], limited)
    passed, reason = check(result)
    assert not passed and reason.startswith("blast radius: 3 sendable entries")
    assert {s for s, _ in states(env).values()} == {"held"}
    assert send(limited).success and outbox_entities(env) == []
    # An entry of a later evaluation, within the limit, goes out on its own; the held wait.
    assert check(evaluate(env, 2, ["old", "a", "b", "c", "d"], limited))[0]
    send(limited)
    assert outbox_entities(env) == ["d"]
    with connect(env) as wh:
        assert release(wh, limited) == 3
    send(limited)
    assert outbox_entities(env) == ["a", "b", "c", "d"]
    assert {s for s, _ in states(env).values()} == {"sent"}


def test_broken_export_holds_and_fails_its_check(env):
    assert evaluate(env, 0, []).success
    with connect(env) as wh, wh.transaction():
        wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, run_id, ingested_at) values "
            "('events', 'x.jsonl', null, 1, 0, 'h', 1000, 950, 0, 50, 'ingest-7', ?)",
            [D0],
        )
    result = evaluate(env, 1, ["a"], tags={INGEST_RUNS_TAG: "ingest-7"})
    passed, reason = check(result)
    assert not passed and reason.startswith("broken export: 5.00% of the lines read")
    assert states(env) == {"a": ("held", "broken_export")}
    with connect(env) as wh:
        assert release(wh, CAMPAIGN) == 1
    send()
    assert outbox_entities(env) == ["a"]


def test_stale_evaluation_records_skips_and_fails_its_check(env):
    assert evaluate(env, 0, []).success
    with connect(env) as wh, wh.transaction():
        wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, ingested_at) values "
            "('events', 'late.jsonl', ?, 1, 0, 'h', 1, 1, 0, 0, ?)",
            [date(2026, 4, 20), D0],
        )
    result = evaluate(env, 1, ["a"])
    passed, reason = check(result)
    assert not passed and reason.startswith("stale evaluation: 2026-04-02T00:00:00Z")
    assert states(env) == {"a": ("skipped", "stale")}
    with connect(env) as wh:
        assert release(wh, CAMPAIGN) == 0  # nothing held: a backfill never mails
    send()
    assert outbox_entities(env) == []


def test_freshness_defers_the_evaluation_and_fails_its_check(env):
    assert evaluate(env, 0, []).success
    result = evaluate(env, 20, ["a"])  # no event in the 48 hours before
    assert not result.success
    passed, reason = check(result)
    assert not passed and "freshness: no event with a time in the 48 hours" in reason
    assert states(env) == {}


def test_unknown_sends_fail_the_sends_check(env):
    assert evaluate(env, 0, []).success
    evaluate(env, 1, ["a", "b"])
    with connect(env) as wh:
        wh.execute("update nudge.send_ledger set state = 'claimed', claimed_by = 'dead'")
    result = send()
    passed, reason = check(result, "no_unknown_sends")
    assert not passed
    assert reason.startswith("2 send(s) in state unknown: run `nudge release not_activated_7d")


# -- the real command line ---------------------------------------------------------------------


@pytest.mark.integration
def test_nudge_release_and_test_send_through_the_cli(env, dbt_manifest, capsys, monkeypatch):
    from support.fake_sendgrid import FakeSendGrid

    from nudge.app.cli import main as nudge

    limited = replace(CAMPAIGN, max_sends_per_evaluation=1)
    evaluate(env, 0, [], limited)
    evaluate(env, 1, ["a", "b"], limited)
    assert {s for s, _ in states(env).values()} == {"held"}
    assert nudge(["release", "not_activated_7d"]) == 0
    assert "released 2 entries of not_activated_7d" in capsys.readouterr().out
    assert outbox_entities(env) == ["a", "b"]
    assert nudge(["release", "not_activated_7d"]) == 0  # nothing held any more: nothing sent
    assert outbox_entities(env) == ["a", "b"]

    # test-send: one rendered example, outside the ledger, to the outbox...
    before = states(env)
    assert nudge(["test-send", "not_activated_7d", "--to", "qa@acme.example", "--entity", "a"]) == 0
    assert "sent to qa@acme.example" in capsys.readouterr().out
    tests = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in Path(env.outbox_dir).glob("*.eml")
    ]
    [test_msg] = [m for m in tests if str(m["To"]) == "qa@acme.example"]
    assert str(test_msg["X-Nudge-Entity"]) == "a" and "A, your first" in str(test_msg["Subject"])
    assert states(env) == before

    # ... and to SendGrid.
    with FakeSendGrid(api_key="SG.cli") as sg:
        monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "sendgrid")
        monkeypatch.setenv("SENDGRID_API_KEY", "SG.cli")
        monkeypatch.setenv("NUDGE_SECRET_KEY", "guards-secret-key-01234567")
        monkeypatch.setenv("NUDGE_PUBLIC_URL", "https://nudge.example.test")
        monkeypatch.setenv("NUDGE_SENDGRID_HOST", sg.url)
        assert nudge(["test-send", "not_activated_7d", "--to", "qa@acme.example"]) == 0
        [body] = sg.messages
    [personalization] = body["personalizations"]  # the tester's copy, with the tester's link
    assert personalization["to"] == [{"email": "qa@acme.example"}]
    assert personalization["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["custom_args"]["nudge_campaign"] == "not_activated_7d"
    assert body["custom_args"]["nudge_key"] == ""  # outside the ledger
    assert f"provider id {sg.message_ids[0]}" in capsys.readouterr().out
    assert states(env) == before
