"""The spine's acceptance scenario: exact emails over a sequence of `nudge run` evaluations.

Users sit on each side of every cohort boundary (see tests/support/scenario.py). The same
scenario runs with the outbox backend and with SMTP against a real local SMTP server, and with
the warehouse (DuckDB) and the state store (Postgres) in two databases.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support.net import free_port
from support.scenario import EXPECTED, SE, Email, land_until, write_profiles

from email_jobs.unsubscribe import verify_token
from nudge.app.cli import main as nudge

pytestmark = pytest.mark.integration


def _parse(raw: bytes) -> tuple[Email, email.message.EmailMessage]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    key = (
        str(msg["To"]),
        str(msg["Cc"] or ""),
        str(msg["X-Nudge-Campaign"]),
        str(msg["X-Nudge-Entity"]),
    )
    return key, msg  # type: ignore[return-value]


def _run_scenario(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    delivered: Callable[[], list[bytes]],
    stores: dict[str, str] | None = None,
    alternate: list[dict[str, str]] | None = None,
) -> dict[Email, email.message.EmailMessage]:
    """Every evaluation of the scenario; `stores` sets NUDGE_WAREHOUSE (and NUDGE_STATE_STORE,
    Spark's settings...) when not the default DuckDB file; evaluation i also gets
    `alternate[i % len(alternate)]` (two ways to one warehouse, taking turns)."""
    landing = tmp_path / "landing"
    write_profiles(landing)
    monkeypatch.setenv("NUDGE_LANDING_DIR", str(landing))
    monkeypatch.setenv("NUDGE_WAREHOUSE", f"duckdb:///{tmp_path / 'wh.duckdb'}")
    monkeypatch.delenv("NUDGE_STATE_STORE", raising=False)
    for name, value in (stores or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))

    expected: set[Email] = set()
    messages: dict[Email, email.message.EmailMessage] = {}
    for i, (day, new) in enumerate(EXPECTED):
        for name, value in (alternate[i % len(alternate)] if alternate else {}).items():
            monkeypatch.setenv(name, value)
        land_until(landing, day)
        assert nudge(["run", "--as-of", day.isoformat()]) == 0, f"nudge run --as-of {day} failed"
        expected |= new
        parsed = [_parse(raw) for raw in delivered()]
        keys = [k for k, _ in parsed]
        assert len(keys) == len(set(keys)), f"an email went out twice by {day}: {sorted(keys)}"
        assert set(keys) == expected, f"emails after the evaluation of {day}"
        messages.update(parsed)
    return messages


def _check_content(messages: dict[Email, email.message.EmailMessage]) -> None:
    m = messages[("ux.1000@acme.example", SE, "too_many_4xx_7d", "ux_1000")]
    text = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    for body in (text, html):
        assert "/v1/widgets/{id}" in body  # the failing endpoint, ids folded
        assert "404" in body and "1000" in body.replace(",", "")


@pytest.mark.parametrize(
    "state", ["warehouse", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_scenario_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, request, state: str
) -> None:
    """On DuckDB, with the state in the warehouse file or on its own Postgres."""
    stores = (
        {"NUDGE_STATE_STORE": request.getfixturevalue("postgres_database")}
        if state == "postgres"
        else None
    )
    run_outbox_scenario(tmp_path, monkeypatch, capsys, stores)


def run_outbox_scenario(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stores: dict[str, str] | None = None,
) -> None:
    """The scenario through the outbox: exact emails, then `nudge status --json`'s counts."""
    outbox = tmp_path / "outbox"
    monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "outbox")
    monkeypatch.setenv("NUDGE_OUTBOX_DIR", str(outbox))
    messages = _run_scenario(
        tmp_path,
        monkeypatch,
        lambda: [p.read_bytes() for p in sorted(outbox.glob("*.eml"))],
        stores,
    )
    _check_content(messages)
    check_status(capsys)
    stores = stores or {}
    if "NUDGE_STATE_STORE" in stores and "NUDGE_WAREHOUSE" not in stores:
        # The ledger lives in the state store, and nothing of it in the DuckDB warehouse.
        import duckdb

        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
            assert not con.execute(
                "select count(*) from information_schema.tables where table_name = 'send_ledger'"
            ).fetchone()[0]


def check_status(capsys: pytest.CaptureFixture[str]) -> None:
    """`nudge status --json` after the scenario: its line accounting and ledger counts."""
    capsys.readouterr()
    assert nudge(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    ing = status["ingest"]
    assert ing["rejected"] == 1  # the malformed line
    assert ing["duplicates"] >= 1  # the copied ux_dup event
    assert ing["lines_read"] == ing["events_loaded"] + ing["duplicates"] + ing["rejected"]
    sends = {c["campaign"]: c["sends"] for c in status["campaigns"]}
    assert sends["not_activated_7d"]["sent"] == 2
    assert sends["not_activated_7d"]["skipped"] == 1  # ua_noemail
    assert sends["too_many_4xx_7d"]["sent"] == 2
    assert sends["too_many_4xx_7d"]["skipped"] == 1  # ux_1000's re-entry inside the cooldown


def test_scenario_smtp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_smtp_scenario(tmp_path, monkeypatch)


def run_smtp_scenario(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stores: dict[str, str] | None = None,
    alternate: list[dict[str, str]] | None = None,
) -> None:
    """The scenario through a real SMTP server: exact emails, CC copies, unsubscribe links."""
    from aiosmtpd.controller import Controller

    received: list[tuple[list[str], bytes]] = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            raw = envelope.original_content or envelope.content
            received.append((list(envelope.rcpt_tos), raw))
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "smtp")
        monkeypatch.setenv("NUDGE_SECRET_KEY", "acceptance-secret-key-0123")
        monkeypatch.setenv("NUDGE_PUBLIC_URL", "https://nudge.example.test")
        monkeypatch.setenv("NUDGE_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("NUDGE_SMTP_PORT", str(controller.port))
        # Each recipient gets their own copy (their own unsubscribe link): one email is the
        # copy its To receives; the CC'd engineer's copies are checked below.
        messages = _run_scenario(
            tmp_path,
            monkeypatch,
            lambda: [raw for rcpts, raw in received if rcpts != [SE]],
            stores,
            alternate,
        )
    finally:
        controller.stop()
    _check_content(messages)
    # The CC'd solutions engineer is a real envelope recipient, not only a header: one copy of
    # the message that CCs them, with the same Message-ID, To and Cc as the To's copy.
    to_copy = [m for (to, cc, _, _), m in messages.items() if cc == SE]
    se_copies = [_parse(raw)[1] for rcpts, raw in received if rcpts == [SE]]
    assert len(se_copies) == len(to_copy) == 1
    assert se_copies[0]["Message-ID"] == to_copy[0]["Message-ID"]
    assert (str(se_copies[0]["To"]), str(se_copies[0]["Cc"])) == ("ux.1000@acme.example", SE)
    # Every copy's List-Unsubscribe link unsubscribes its own envelope recipient, no one else.
    for rcpts, raw in received:
        link = str(_parse(raw)[1]["List-Unsubscribe"]).strip("<>")
        target = verify_token("acceptance-secret-key-0123", link.rsplit("/u/", 1)[1])
        assert target is not None and [target.address] == rcpts
