"""Exactly once under concurrency (Postgres, real processes): several send processes at once
never take each other's claims, so each entry is accepted once by the SendGrid stand-in and none
is left `claimed` or `unknown`. Before leases, a send run took every row claimed by another run
as left by a crash (-> unknown, or sent again with `on_unknown: resend`).

The stand-in holds every mail send at a gate until all senders are delivering at once (counted
at the gate), which makes the overlap certain rather than a matter of timing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.fake_sendgrid import FakeSendGrid

from email_jobs.ledger import (
    NewEntry,
    State,
    claim_batch,
    claim_for_send,
    ensure_schema,
    insert_entries,
    ledger_key,
    payload_json,
    recover_claims,
)
from nudge.core.settings import Settings
from nudge.core.warehouse import connect

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
API_KEY = "SG.concurrency-test"
CAMPAIGN = "not_activated_7d"  # a seed campaign of the real dbt project
AT = datetime(2026, 3, 12)
WORKERS = 2  # per sender: each holds at most 2 batches of 2 x WORKERS rows


def add_rows(url: str, n: int, state: State, prefix: str) -> list[str]:
    entries = []
    for i in range(n):
        entity = f"{prefix}{i:02}"
        email = f"{entity}@example.com"
        payload = {"entity_id": entity, "email": email, "first_name": entity, "signup_at": None}
        entries.append(NewEntry(ledger_key(CAMPAIGN, entity, AT), CAMPAIGN, entity, AT, 0, "ev",
                                state, None, email, payload_json(payload)))  # fmt: skip
    with connect(Settings(warehouse=url, _env_file=None)) as wh:
        ensure_schema(wh)
        with wh.transaction():
            insert_entries(wh, entries)
    return [e.ledger_key for e in entries]


def ledger(url: str) -> dict[str, dict]:
    with connect(Settings(warehouse=url, _env_file=None)) as wh:
        return {r["ledger_key"]: r for r in wh.fetchdicts("select * from nudge.send_ledger")}


def environment(tmp_path: Path, url: str, sg: FakeSendGrid, key: str = API_KEY) -> dict[str, str]:
    (tmp_path / "landing").mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NUDGE_LANDING_DIR": str(tmp_path / "landing"),
        "NUDGE_WAREHOUSE": url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "NUDGE_EMAIL_BACKEND": "sendgrid",
        "SENDGRID_API_KEY": key,
        "NUDGE_SENDGRID_HOST": sg.url,
        "NUDGE_FROM_EMAIL": "hello@acme.example",
        "NUDGE_SEND_CONCURRENCY": str(WORKERS),
        "NUDGE_MAX_EMAILS_PER_RECIPIENT_PER_DAY": "0",
        "NUDGE_SECRET_KEY": "test-secret-key-for-unsubscribe-links",
        "NUDGE_PUBLIC_URL": "https://nudge.example.com",
    }


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, text=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip


def nudge_release(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return start(["-m", "nudge.app.cli", "release", CAMPAIGN], env, log)


def send_worker(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return start(["-m", "email_jobs.send_worker", "--campaign", CAMPAIGN], env, log)


def open_when_all_deliver(
    sg: FakeSendGrid, procs: list[subprocess.Popen[str]], logs: list[Path], timeout_s: float = 240
) -> None:
    """Keep the gate closed until every sender has requests waiting at it (more than one
    sender's worth), then open it; a sender that exits first fails the test."""
    wanted = WORKERS * (len(procs) - 1) + 1
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while sg.waiting < wanted:
        exited = [(p.returncode, log.read_text()[-2000:]) for p, log in zip(procs, logs,
                  strict=True) if p.poll() is not None]  # fmt: skip
        assert not exited, f"a sender ended before all were delivering: {exited}"
        assert time.monotonic() < deadline, f"only {sg.waiting} requests at the gate"
        tick.wait(0.1)
    sg.open_gate()


def finish(procs: list[subprocess.Popen[str]], logs: list[Path]) -> None:
    for p, log in zip(procs, logs, strict=True):
        assert p.wait(timeout=240) == 0, log.read_text()[-3000:]


def check_each_sent_once(sg: FakeSendGrid, url: str, keys: list[str]) -> None:
    accepted = Counter(m["custom_args"]["nudge_key"] for m in sg.messages)
    assert {k: n for k, n in accepted.items() if n > 1} == {}, "accepted twice"
    assert set(accepted) == set(keys)
    rows = ledger(url)
    assert Counter(r["state"] for r in rows.values()) == Counter({"sent": len(keys)})
    assert {r["lease_expires_at"] for r in rows.values()} == {None}


def test_three_nudge_release_processes_send_each_held_entry_once(
    tmp_path: Path, postgres_database: str, dbt_manifest: None
) -> None:
    url = postgres_database
    keys = add_rows(url, 30, State.HELD, "u")
    with FakeSendGrid(api_key=API_KEY) as sg:
        # A wrong key first: one line naming it, nothing released or sent.
        wrong = subprocess.run(
            [sys.executable, "-m", "nudge.app.cli", "release", CAMPAIGN], cwd=REPO,
            env=environment(tmp_path, url, sg, key="SG.revoked-key"), capture_output=True,
            text=True, timeout=240, check=False,
        )  # fmt: skip
        assert wrong.returncode != 0
        [line] = wrong.stderr.strip().splitlines()
        assert line.startswith("nudge: SENDGRID_API_KEY: SendGrid refused the API key (")
        assert "SG.revoked-key" not in line
        assert {r["state"] for r in ledger(url).values()} == {"held"} and sg.messages == []

        sg.close_gate()
        env = environment(tmp_path, url, sg)
        logs = [tmp_path / f"release{i}.log" for i in range(3)]
        procs = [nudge_release(env, log) for log in logs]
        open_when_all_deliver(sg, procs, logs)
        finish(procs, logs)
        check_each_sent_once(sg, url, keys)


def test_a_release_racing_a_send_worker_sends_each_entry_once(
    tmp_path: Path, postgres_database: str, dbt_manifest: None
) -> None:
    url = postgres_database
    keys = add_rows(url, 20, State.PENDING, "p") + add_rows(url, 10, State.HELD, "h")
    with FakeSendGrid(api_key=API_KEY) as sg:
        wrong = subprocess.run(
            [sys.executable, "-m", "email_jobs.send_worker", "--campaign", CAMPAIGN], cwd=REPO,
            env=environment(tmp_path, url, sg, key="SG.revoked-key"), capture_output=True,
            text=True, timeout=240, check=False,
        )  # fmt: skip
        assert wrong.returncode == 3
        [line] = wrong.stderr.strip().splitlines()
        assert line.startswith("send_worker: SENDGRID_API_KEY: SendGrid refused the API key")
        assert {(r["state"], r["claimed_by"]) for r in ledger(url).values()} == {
            ("pending", None), ("held", None)
        }  # fmt: skip

        sg.close_gate()
        env = environment(tmp_path, url, sg)
        logs = [tmp_path / "worker.log", tmp_path / "release.log"]
        procs = [send_worker(env, logs[0]), nudge_release(env, logs[1])]
        open_when_all_deliver(sg, procs, logs)
        finish(procs, logs)
        check_each_sent_once(sg, url, keys)


# -- the lease, unit by unit --------------------------------------------------------------------


def test_only_a_claim_whose_lease_expired_is_recovered(postgres_database: str) -> None:
    url = postgres_database
    add_rows(url, 2, State.PENDING, "x")
    with connect(Settings(warehouse=url, _env_file=None)) as wh:
        claim_batch(wh, CAMPAIGN, "live-run", 1)
        claim_batch(wh, CAMPAIGN, "dead-run", 1)
        with wh.transaction():
            wh.execute("update nudge.send_ledger set lease_expires_at = "
                       "(now() at time zone 'utc') - interval '1 second' "
                       "where claimed_by = 'dead-run'")  # fmt: skip
        assert recover_claims(wh, CAMPAIGN, "new-run", "hold") == 1
        states = {r["claimed_by"]: r["state"] for r in ledger(url).values()}
    assert states == {"live-run": "claimed", "dead-run": "unknown"}


def test_the_heartbeat_extends_the_lease_of_the_runs_claims(postgres_database: str) -> None:
    from email_jobs.send import _Heartbeat

    url = postgres_database
    add_rows(url, 2, State.PENDING, "y")
    settings = Settings(warehouse=url, _env_file=None)
    with connect(settings) as wh:  # claims whose lease is about to end
        claim_for_send(wh, CAMPAIGN, "beating", 1, lease_s=1)
        claim_for_send(wh, CAMPAIGN, "other", 1, lease_s=1)

    def lease(run: str) -> datetime:
        [value] = [r["lease_expires_at"] for r in ledger(url).values() if r["claimed_by"] == run]
        return value

    before = {run: lease(run) for run in ("beating", "other")}
    stop = threading.Event()
    with _Heartbeat(lambda: connect(settings), "postgres", "beating", 8.0, stop):  # every 2 s
        deadline = time.monotonic() + 30
        tick = threading.Event()
        while lease("beating") == before["beating"]:
            assert time.monotonic() < deadline, "the lease was never renewed"
            tick.wait(0.1)
    assert lease("beating") >= before["beating"] + timedelta(seconds=7)
    assert lease("other") == before["other"]  # another run's lease is not ours to extend
    with connect(settings) as wh:  # "other" expired meanwhile; the beating run's did not
        assert recover_claims(wh, CAMPAIGN, "new-run", "hold") == 1
    assert not stop.is_set()
