"""A Postgres connection lost mid-send (its backend terminated by pg_terminate_backend, as a
failover or an idle-connection reaper does): the send reconnects and records the outcomes of the
sends that finished, nothing is sent twice; when it cannot reconnect, in-flight work is cancelled
at once instead of waiting out its retries. Before: the finished sends stayed `claimed` (later
`unknown`) and the run waited for every in-flight retry."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from urllib.parse import urlparse

import psycopg2
import pytest
from test_send_loop import (  # ledger fixtures and the scripted provider of the send-loop tests
    CAMPAIGN,
    ScriptedBackend,
    add_pending,
    rows,
    templates,  # noqa: F401 - a fixture
)

from email_jobs.message import DeliveryResult, OutgoingEmail
from email_jobs.render import render_email
from email_jobs.send import send_campaign
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect

pytestmark = pytest.mark.postgres


def terminate_other_connections(url: str) -> None:
    """What a failover does to the send's connection: the server ends it."""
    dbname = urlparse(url).path.strip("/")
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = %s and pid <> pg_backend_pid()",
            (dbname,),
        )
        assert cur.fetchall(), "no connection to terminate"
    admin.close()


@pytest.fixture
def pg(postgres_database: str) -> Iterator[tuple[str, Settings]]:
    settings = Settings(warehouse=postgres_database, send_concurrency=1, _env_file=None)
    with connect(settings) as wh:
        from email_jobs.ledger import ensure_schema

        ensure_schema(wh)
    yield postgres_database, settings


def test_the_outcomes_of_finished_sends_are_recorded_after_a_reconnect(pg, templates):  # noqa: F811
    url, settings = pg
    open_wh = functools.partial(connect, settings)
    add_pending(open_wh, ["a", "b", "c", "d", "e", "f"])
    sends = 0

    def on_send(email: OutgoingEmail) -> None:
        nonlocal sends
        sends += 1
        if sends == 2:  # the first batch (a, b) is delivered; its record is next
            terminate_other_connections(url)

    backend = ScriptedBackend(on_send=on_send)
    render = functools.partial(render_email, templates_dir=templates)
    report = send_campaign(
        open_wh, CAMPAIGN, backend, settings, "run-reconnect", batch_size=2, render=render
    )
    assert report.sent == 6
    assert {e: r["state"] for e, r in rows(open_wh).items()} == dict.fromkeys("abcdef", "sent")
    assert sorted(backend.sent.values()) == [1] * 6  # nothing sent twice


def test_without_a_connection_in_flight_retries_are_cancelled_not_waited_out(pg, templates):  # noqa: F811
    url, settings = pg
    settings = settings.model_copy(update={"send_concurrency": 2})
    add_pending(functools.partial(connect, settings), ["a", "b", "c", "d"])
    opened = 0

    def open_wh() -> AbstractContextManager[Warehouse]:
        nonlocal opened
        opened += 1
        if opened > 1:  # the server stays unreachable after the first connection is lost
            raise psycopg2.OperationalError("could not connect to server")
        return connect(settings)

    c_tried = threading.Event()

    def on_send(email: OutgoingEmail) -> None:
        if email.to == ("c@example.com",):
            c_tried.set()
        if email.to == ("b@example.com",):  # the first batch's last: its record fails next,
            assert c_tried.wait(30)  # while "c" (second batch) waits out its backoff
            terminate_other_connections(url)

    # "c" (second batch, in flight meanwhile) asks for a minute's pause, three times over.
    slow = DeliveryResult("retryable", error="busy", retry_after_s=60)
    backend = ScriptedBackend({"c@example.com": [slow]}, on_send=on_send)
    outcome: list[BaseException] = []
    render = functools.partial(render_email, templates_dir=templates)

    def run() -> None:
        try:
            send_campaign(open_wh, CAMPAIGN, backend, settings, "run-lost", batch_size=2,
                          render=render)  # fmt: skip
        except BaseException as exc:
            outcome.append(exc)

    began = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the run went on waiting out its retries"
    assert time.monotonic() - began < 20
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg2.Error), outcome
    assert [e.to for e in backend.attempts].count(("c@example.com",)) <= 1  # never retried
