"""The send loop: claim, render, deliver, record; crashes, retries, release, and the promise
that no entry is ever sent twice (a hypothesis property over evaluation sequences)."""

from __future__ import annotations

import functools
import itertools
import uuid
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from support.scripted_backend import ScriptedBackend

from email_jobs.backends.outbox import OutboxBackend
from email_jobs.campaigns import Campaign
from email_jobs.evaluate import evaluate_campaign
from email_jobs.guards import GuardLimits
from email_jobs.ledger import (
    NewEntry,
    State,
    claim_batch,
    ensure_schema,
    insert_entries,
    ledger_key,
    payload_json,
    state_counts,
)
from email_jobs.message import DeliveryResult, OutgoingEmail
from email_jobs.render import render_email
from email_jobs.send import BACKOFF_CAP_S, backoff_delay, release, send_campaign
from nudge.core.settings import Settings, WarehouseUrl
from nudge.core.warehouse import Warehouse, connect_both, connect_state
from nudge.ingest.schema import DDL as RAW_DDL

D0 = datetime(2026, 1, 1)
CAMPAIGN = Campaign(
    name="hello",
    cohort="cohort_hello",
    relation_name='"wh"."analytics"."cohort_hello"',
    entity="user",
    template="hello",
    cooldown_days=30,
    columns=("entity_id", "email", "first_name"),
)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("templates")
    (root / "hello").mkdir()
    (root / "hello" / "subject.txt").write_text("Hello {{ first_name }}")
    (root / "hello" / "body.html").write_text("<p>Hi {{ first_name }} ({{ entity_id }})</p>")
    (root / "hello" / "body.txt").write_text("Hi {{ first_name }}")
    return root


# The exactly-once tests run again with the state store (the ledger) on Postgres and the
# warehouse on DuckDB: `@STATES` on a test parametrizes `settings`.
STATES = pytest.mark.parametrize(
    "settings", ["warehouse", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    state = getattr(request, "param", "warehouse")
    return Settings(
        warehouse=f"duckdb:///{tmp_path}/wh.duckdb",
        state_store=request.getfixturevalue("postgres_database") if state == "postgres" else None,
        outbox_dir=tmp_path / "outbox",
        send_concurrency=4,
        # What smtp and sendgrid need to start (signed unsubscribe links).
        secret_key="test-secret-key-0123456789",
        public_url="https://nudge.example.test",
        _env_file=None,
    )


@pytest.fixture
def open_wh(settings: Settings):
    """Opens the state store (the ledger), as the send loop does."""
    with connect_state(settings) as wh:
        ensure_schema(wh)
    return lambda: connect_state(settings)


def add_pending(
    open_wh,
    entities: list[str],
    *,
    state: State = State.PENDING,
    as_of: datetime = D0,
    campaign: Campaign = CAMPAIGN,
) -> None:
    with open_wh() as wh, wh.transaction():
        insert_entries(
            wh,
            [
                NewEntry(
                    ledger_key(campaign.name, e, as_of),
                    campaign.name,
                    e,
                    as_of,
                    0,
                    "ev",
                    state,
                    "blast_radius" if state == State.HELD else None,
                    f"{e}@example.com",
                    payload_json(
                        {"entity_id": e, "email": f"{e}@example.com", "first_name": e.title()}
                    ),
                )
                for e in entities
            ],
        )


def serial(settings: Settings) -> Settings:
    return settings.model_copy(update={"send_concurrency": 1})


def rows(open_wh) -> dict[str, dict]:
    with open_wh() as wh:
        return {r["entity_id"]: r for r in wh.fetchdicts("select * from nudge.send_ledger")}


def send(open_wh, backend, settings, templates, campaign=CAMPAIGN, run_id=None, sleeps=None, **kw):
    return send_campaign(
        open_wh,
        campaign,
        backend,
        settings,
        run_id or f"run-{uuid.uuid4().hex[:6]}",
        render=functools.partial(render_email, templates_dir=templates),
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        rand=lambda: 0.5,
        **kw,
    )


# -- sending --------------------------------------------------------------------------------


@STATES
def test_sends_every_pending_row_once_in_batches(open_wh, settings, templates):
    entities = [f"u{i:02}" for i in range(45)]
    add_pending(open_wh, entities)
    backend = ScriptedBackend()
    report = send(open_wh, backend, settings, templates, batch_size=20)
    assert (report.pending_at_start, report.claimed, report.sent) == (45, 45, 45)
    assert set(backend.sent.values()) == {1} and len(backend.sent) == 45
    ledger = rows(open_wh)
    assert {r["state"] for r in ledger.values()} == {"sent"}
    assert ledger["u07"]["provider_message_id"] == "id-hello|u07|2026-01-01T00:00:00Z|0"
    assert backend.attempts[0].subject.startswith("Hello U")
    assert backend.attempts[0].headers["X-Nudge-Campaign"] == "hello"
    # A second run finds nothing to send.
    again = send(open_wh, backend, settings, templates)
    assert (again.sent, len(backend.attempts)) == (0, 45)


@STATES
def test_the_claim_is_committed_before_the_provider_is_called(open_wh, settings, templates):
    add_pending(open_wh, ["a", "b"])
    seen: list[str] = []

    def look(email: OutgoingEmail) -> None:
        if settings.state_store_url.kind == "postgres":  # another session
            with connect_state(settings) as other:
                row = other.fetchone(
                    "select state from nudge.send_ledger where ledger_key = ?", [email.ledger_key]
                )
            seen.append(row[0] if row else "")
            return
        # Another connection sees the row claimed while the provider call is in flight. (The
        # send holds Nudge's DuckDB file lock; a second in-process connection shares the
        # database and sees only what was committed.)
        conn = duckdb.connect(
            str(settings.state_store_url.path),
            config={
                "memory_limit": settings.duckdb_memory_limit,
                "preserve_insertion_order": False,
            },
        )
        try:
            seen.append(
                conn.execute(
                    "select state from nudge.send_ledger where ledger_key = ?", [email.ledger_key]
                ).fetchone()[0]
            )
        finally:
            conn.close()

    send(open_wh, ScriptedBackend(on_send=look), serial(settings), templates)
    assert seen == ["claimed", "claimed"]


@STATES
def test_through_evaluation_render_and_the_outbox(open_wh, settings, templates):
    limits = GuardLimits.from_settings(settings)
    with connect_both(settings) as (wh, state):
        _seed_events(wh, D0 - timedelta(days=10), D0 + timedelta(days=10))
        _set_cohort(wh, "cohort_hello", {"a": "a@example.com"})
        evaluate_campaign(wh, CAMPAIGN, D0, limits, "r", state=state)
        _set_cohort(wh, "cohort_hello", {"a": "a@example.com", "b": "b@example.com"})
        evaluate_campaign(wh, CAMPAIGN, D0 + timedelta(days=1), limits, "r", state=state)
    backend = OutboxBackend(settings.outbox_dir)
    assert send(open_wh, backend, settings, templates).sent == 1
    (eml,) = settings.outbox_dir.glob("*.eml")
    text = eml.read_text()
    assert "X-Nudge-Entity: b" in text and "Hello B" in text
    assert rows(open_wh)["b"]["state"] == "sent"


# -- outcomes -------------------------------------------------------------------------------


def test_retryable_errors_are_retried_with_backoff_then_sent(open_wh, settings, templates):
    add_pending(open_wh, ["a"])
    backend = ScriptedBackend(
        {
            "a@example.com": [
                DeliveryResult("retryable", error="429 slow down", retry_after_s=7),
                DeliveryResult("retryable", error="503"),
                "sent",
            ]
        }
    )
    sleeps: list[float] = []
    report = send(open_wh, backend, settings, templates, sleeps=sleeps)
    assert (report.sent, report.attempts) == (1, 3)
    assert sleeps == [7, backoff_delay(2, None, 0.5)]  # the provider's Retry-After is honoured
    row = rows(open_wh)["a"]
    assert (row["state"], row["attempts"]) == ("sent", 3)


def test_retries_end_for_the_run_then_give_up_after_the_total_cap(open_wh, settings, templates):
    add_pending(open_wh, ["a", "b"])
    backend = ScriptedBackend({"a@example.com": ["retryable"]})
    first = send(open_wh, backend, settings, templates, max_attempts_per_run=4)
    assert (first.sent, first.retry_later, first.pending_left) == (1, 1, 1)
    row = rows(open_wh)["a"]
    assert (row["state"], row["attempts"], row["last_error"]) == (
        "pending",
        4,
        "retryable from provider",
    )
    assert send(open_wh, backend, settings, templates).retry_later == 1
    third = send(open_wh, backend, settings, templates)  # 2 attempts left of 10
    assert (third.failed, third.attempts) == (1, 2)
    row = rows(open_wh)["a"]
    assert (row["state"], row["reason"], row["attempts"]) == ("failed", "gave_up", 10)
    assert send(open_wh, backend, settings, templates).claimed == 0


def test_permanent_errors_fail_with_the_providers_text(open_wh, settings, templates):
    add_pending(open_wh, ["a"])
    backend = ScriptedBackend(
        {"a@example.com": [DeliveryResult("failed", error="550 5.1.1 no such user")]}
    )
    assert send(open_wh, backend, settings, templates).failed == 1
    row = rows(open_wh)["a"]
    assert (row["state"], row["reason"], row["last_error"], row["attempts"]) == (
        "failed",
        "permanent_error",
        "550 5.1.1 no such user",
        1,
    )


def test_a_row_that_cannot_render_fails_without_a_provider_call(open_wh, settings, templates):
    with open_wh() as wh, wh.transaction():
        insert_entries(
            wh,
            [
                NewEntry(
                    ledger_key("hello", "x", D0),
                    "hello",
                    "x",
                    D0,
                    0,
                    "ev",
                    State.PENDING,
                    None,
                    "x@example.com",
                    payload_json({"entity_id": "x", "email": "x@example.com"}),
                )
            ],
        )
    backend = ScriptedBackend()
    assert send(open_wh, backend, settings, templates).failed == 1
    assert backend.attempts == []
    row = rows(open_wh)["x"]
    assert row["reason"] == "render_error" and "first_name" in row["last_error"]


def test_a_backend_that_raises_leaves_the_row_unknown(open_wh, settings, templates):
    add_pending(open_wh, ["a", "b"])
    backend = ScriptedBackend({"a@example.com": [ConnectionResetError("reset mid-response")]})
    report = send(open_wh, backend, settings, templates)
    assert (report.sent, report.delivery_unknown, report.unknown) == (1, 1, 1)
    assert rows(open_wh)["a"]["state"] == "unknown"
    assert "reset mid-response" in rows(open_wh)["a"]["last_error"]
    assert send(open_wh, backend, settings, templates).claimed == 0  # never resent by itself


# -- crashes and release --------------------------------------------------------------------


class Crash(BaseException):
    """The process dying mid-batch (not an error the loop may classify)."""


def test_a_crash_after_the_claim_leaves_unknown_rows_not_a_second_send(
    open_wh, settings, templates
):
    add_pending(open_wh, ["a", "b", "c"])
    dying = ScriptedBackend({"b@example.com": [Crash()]})
    with pytest.raises(Crash):
        send(open_wh, dying, serial(settings), templates, run_id="dead")
    assert {r["state"] for r in rows(open_wh).values()} == {"claimed"}
    backend = ScriptedBackend()
    report = send(open_wh, backend, settings, templates)
    assert (report.recovered_unknown, report.unknown, report.sent) == (3, 3, 0)
    assert backend.attempts == []  # "a" may well have gone out: we do not send it again
    with open_wh() as wh:
        assert release(wh, CAMPAIGN, include_unknown=True) == 3
    assert send(open_wh, backend, settings, templates).sent == 3


def test_on_unknown_resend_puts_a_dead_runs_claims_back(open_wh, settings, templates):
    resend = replace(CAMPAIGN, on_unknown="resend")
    add_pending(open_wh, ["a", "b"])
    with open_wh() as wh:
        claim_batch(wh, "hello", "dead-run", 10)
    report = send(open_wh, ScriptedBackend(), settings, templates, campaign=resend)
    assert (report.recovered_resend, report.sent, report.unknown) == (2, 2, 0)


@STATES
def test_held_rows_go_out_only_after_release(open_wh, settings, templates):
    add_pending(open_wh, ["a", "b"], state=State.HELD)
    add_pending(open_wh, ["c"])
    backend = ScriptedBackend()
    report = send(open_wh, backend, settings, templates)
    assert (report.sent, report.held) == (1, 2)
    with open_wh() as wh:
        assert release(wh, "hello") == 2
        assert release(wh, "hello") == 0
    assert send(open_wh, backend, settings, templates).sent == 2
    with open_wh() as wh:
        assert state_counts(wh, "hello") == {"sent": 3}


def test_backoff_is_exponential_capped_and_jittered():
    assert backoff_delay(1, None, 0.0) == 0.5
    assert backoff_delay(1, None, 0.999) == pytest.approx(1.0, abs=1e-3)
    assert backoff_delay(3, None, 0.5) == 4 * 0.75
    assert backoff_delay(30, None, 0.999) <= BACKOFF_CAP_S
    assert backoff_delay(1, 42.0, 0.0) == 42.0


# -- the promise, as a property ------------------------------------------------------------------

ENTITIES = ("a", "b", "c")


def _seed_events(wh: Warehouse, start: datetime, stop: datetime) -> None:
    with wh.transaction():
        for stmt in RAW_DDL:
            wh.execute(stmt)
    n = int((stop - start) / timedelta(hours=6))
    rows = [(f"e{i}", start + timedelta(hours=6 * i), i, start) for i in range(n)]
    with wh.transaction():  # one multi-row insert: much faster than executemany on DuckDB
        wh.execute(
            "insert into raw.events (event_key, request_time, source_file, source_line, "
            f"ingested_at) values {', '.join(['(?, ?, ?, ?, ?)'] * n)}",
            [v for key, t, i, at in rows for v in (key, t, "f", i, at)],
        )


def _set_cohort(wh: Warehouse, table: str, members: dict[str, str | None]) -> None:
    with wh.transaction():
        wh.execute("create schema if not exists analytics")
        wh.execute(
            f"create table if not exists analytics.{table} "
            "(entity_id varchar, email varchar, first_name varchar)"
        )
        wh.execute(f"delete from analytics.{table}")
        for e, email in members.items():
            wh.execute(f"insert into analytics.{table} values (?, ?, ?)", [e, email, e.title()])


step = st.tuples(
    st.integers(min_value=0, max_value=40),  # evaluation day: repeats and any order
    st.frozensets(st.sampled_from(ENTITIES)),  # members at that instant
    st.booleans(),  # crash the send after the claim?
)


@hyp_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(step, min_size=1, max_size=9),
    cooldown=st.sampled_from([0, 3, 7, 30]),
    baseline=st.booleans(),
    outcomes=st.lists(
        st.sampled_from(["sent", "sent", "retryable", "failed"]), min_size=1, max_size=5
    ),
)
def test_no_entry_is_sent_twice_and_no_resend_inside_the_cooldown(
    templates, steps, cooldown, baseline, outcomes
):
    wh = Warehouse(WarehouseUrl("duckdb:///unused.duckdb"), duckdb.connect())
    exactly_once(wh, wh, templates, steps, cooldown, baseline, outcomes)


@pytest.mark.postgres
@hyp_settings(
    max_examples=10,  # the same property; the split costs a Postgres round trip per statement
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(step, min_size=1, max_size=6),
    cooldown=st.sampled_from([0, 3, 7, 30]),
    baseline=st.booleans(),
    outcomes=st.lists(
        st.sampled_from(["sent", "sent", "retryable", "failed"]), min_size=1, max_size=5
    ),
)
def test_exactly_once_with_the_state_store_on_postgres(
    templates, postgres_database, steps, cooldown, baseline, outcomes
):
    settings = Settings(
        warehouse="duckdb:///unused.duckdb", state_store=postgres_database, _env_file=None
    )
    wh = Warehouse(WarehouseUrl("duckdb:///unused.duckdb"), duckdb.connect())
    with connect_state(settings) as state:
        state.execute("drop schema if exists nudge cascade")  # one database for every example
        state.commit()
        exactly_once(wh, state, templates, steps, cooldown, baseline, outcomes)


def exactly_once(wh, state, templates, steps, cooldown, baseline, outcomes) -> None:
    """Evaluate and send through `steps` (the cohort in `wh`, the ledger in `state`); no entry
    goes out twice, none inside the cooldown."""
    campaign = replace(CAMPAIGN, cooldown_days=cooldown, baseline_first_run=baseline)
    settings = Settings(_env_file=None, send_concurrency=2)
    _seed_events(wh, D0 - timedelta(days=10), D0 + timedelta(days=42))
    cycle = iter(outcomes * 1000)
    backend = ScriptedBackend(
        {f"{e}@example.com": [next(cycle) for _ in range(30)] for e in ENTITIES}
    )
    for day, members, crash in steps:
        _set_cohort(wh, "cohort_hello", {e: f"{e}@example.com" for e in sorted(members)})
        evaluate_campaign(
            wh,
            campaign,
            D0 + timedelta(days=day),
            GuardLimits.from_settings(settings),
            "eval",
            state=state,
        )
        if crash:  # a run that claimed, delivered, and died before recording
            for row in claim_batch(state, campaign.name, f"dead-{uuid.uuid4().hex}", 2):
                backend.send(
                    render_email(
                        campaign,
                        row.payload,
                        settings,
                        ledger_key=row.ledger_key,
                        templates_dir=templates,
                    )
                )
        send(lambda: nullcontext(state), backend, settings, templates, campaign=campaign)

    # What the provider accepted (including what dead runs delivered but never recorded).
    assert all(n == 1 for n in backend.sent.values()), backend.sent
    ledger = {
        k: (e, a, st_)
        for k, e, a, st_ in state.fetchall(
            "select ledger_key, entity_id, entry_as_of, state from nudge.send_ledger"
        )
    }
    assert {k for k, (_, _, s) in ledger.items() if s == "sent"} <= set(backend.sent)
    by_entity: dict[str, list[datetime]] = {}
    for key in backend.sent:
        entity, entry, _ = ledger[key]
        by_entity.setdefault(entity, []).append(entry)
    for entity, entries in by_entity.items():
        entries.sort()
        for earlier, later in itertools.pairwise(entries):
            assert later - earlier >= timedelta(days=cooldown), (entity, entries)
