"""Bad configuration (issue 7): one clear line naming the setting and what to do, a non-zero
exit, and no work started (no Dagster instance, no warehouse file, no run)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from support.fake_sendgrid import FakeSendGrid
from support.net import free_port

from nudge.app.cli import main as nudge

REPO = Path(__file__).resolve().parents[2]
SEED_CAMPAIGNS = {"not_activated_7d", "too_many_4xx_7d"}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid configuration to spoil one setting at a time; returns the folder it lives in."""
    for name in list(os.environ):
        if name.startswith("NUDGE_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    (tmp_path / "landing").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("NUDGE_LANDING_DIR", str(tmp_path / "landing"))
    monkeypatch.setenv("NUDGE_WAREHOUSE", f"duckdb:///{tmp_path / 'wh.duckdb'}")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "outbox")
    monkeypatch.setenv("NUDGE_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    return tmp_path


CLOSED_PORT = free_port()  # nothing listens there

CASES = [
    # (id, settings, words the one line must hold)
    ("unknown backend", {"NUDGE_EMAIL_BACKEND": "carrier-pigeon"},
     ["NUDGE_EMAIL_BACKEND", "carrier-pigeon", "use outbox, smtp or sendgrid"]),
    ("warehouse scheme", {"NUDGE_WAREHOUSE": "mysql://db/nudge"},
     ["NUDGE_WAREHOUSE", "duckdb:///path.duckdb, postgresql://", "spark://local[N] or sc://"]),
    ("spark without a state store", {"NUDGE_WAREHOUSE": "spark://local[2]"},
     ["NUDGE_STATE_STORE", "postgresql://"]),
    ("spark master", {"NUDGE_WAREHOUSE": "spark://yarn"},
     ["NUDGE_WAREHOUSE", "spark://local[N]"]),
    # pyspark's own messages for a bad Spark Connect URL echo it whole, token included.
    ("spark connect option", {"NUDGE_WAREHOUSE": "sc://h:443/;token=s3cret==;use_ssl=true"},
     ["NUDGE_WAREHOUSE='sc://h:443/;token=***;use_ssl=true'", "key=value with one '='"]),
    ("spark connect host", {"NUDGE_WAREHOUSE": "sc://@:443/;token=s3cret"},
     ["NUDGE_WAREHOUSE", "sc://HOST:PORT"]),
    ("spark connect down", {"NUDGE_WAREHOUSE": f"sc://127.0.0.1:{CLOSED_PORT}/;token=s3cret",
                            "NUDGE_STATE_STORE": "postgresql://postgres@127.0.0.1:5432/postgres"},
     ["NUDGE_WAREHOUSE", "cannot reach the Spark Connect server", f"127.0.0.1:{CLOSED_PORT}"]),
    ("state store on spark", {"NUDGE_STATE_STORE": "sc://127.0.0.1:15002"},
     ["NUDGE_STATE_STORE", "transactional"]),
    ("state store scheme", {"NUDGE_STATE_STORE": "sqlite:///x.db"},
     ["NUDGE_STATE_STORE", "unknown scheme"]),
    ("warehouse no path", {"NUDGE_WAREHOUSE": "duckdb://"},
     ["NUDGE_WAREHOUSE", "duckdb:///path/to/file.duckdb"]),
    ("warehouse no database", {"NUDGE_WAREHOUSE": "postgresql://postgres@127.0.0.1:5432"},
     ["NUDGE_WAREHOUSE", "postgresql://user@host:port/database"]),
    ("warehouse port", {"NUDGE_WAREHOUSE": "postgresql://u:s3cret@127.0.0.1:port/db"},
     ["NUDGE_WAREHOUSE", "port is not a number"]),
    ("warehouse folder", {"NUDGE_WAREHOUSE": "duckdb:///{tmp}/a-file/wh.duckdb"},
     ["NUDGE_WAREHOUSE", "not a writable folder"]),
    ("postgres down", {"NUDGE_WAREHOUSE": "postgresql://postgres@127.0.0.1:1/nudge"},
     ["NUDGE_WAREHOUSE", "cannot reach Postgres", "127.0.0.1:1", "check that the server runs"]),
    ("sendgrid key", {"NUDGE_EMAIL_BACKEND": "sendgrid"},
     ["NUDGE_EMAIL_BACKEND=sendgrid needs SENDGRID_API_KEY", "create an API key"]),
    ("smtp down", {"NUDGE_EMAIL_BACKEND": "smtp", "NUDGE_SMTP_HOST": "127.0.0.1",
                   "NUDGE_SMTP_PORT": str(CLOSED_PORT)},
     ["NUDGE_SMTP_HOST", f"127.0.0.1:{CLOSED_PORT}", "check the relay's address"]),
    ("smtp unknown host", {"NUDGE_EMAIL_BACKEND": "smtp", "NUDGE_SMTP_HOST": "relay.invalid"},
     ["NUDGE_SMTP_HOST", "relay.invalid:25"]),
    ("smtp port", {"NUDGE_EMAIL_BACKEND": "smtp", "NUDGE_SMTP_PORT": "twenty-five"},
     ["NUDGE_SMTP_PORT='twenty-five'", "valid integer"]),
    ("outbox", {"NUDGE_OUTBOX_DIR": "{tmp}/a-file/outbox"},
     ["NUDGE_OUTBOX_DIR", "not a writable folder", "point it at a folder"]),
    ("landing", {"NUDGE_LANDING_DIR": "{tmp}/no-such-landing"},
     ["NUDGE_LANDING_DIR", "no such folder", "nudge generate"]),
    ("guard knob", {"NUDGE_MAX_REJECTED_SHARE": "lots"},
     ["NUDGE_MAX_REJECTED_SHARE='lots'", "valid number"]),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_setting_fails_in_one_line_before_any_work(
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, str],
    words: list[str],
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value.format(tmp=env))

    code = nudge(["run", "--as-of", "2026-03-10"])

    out, err = capsys.readouterr()
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nudge: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "s3cret" not in err  # a password in the URL is never echoed
    assert out == ""
    # Nothing started: no Dagster instance (so no run), no warehouse, no outbox.
    assert not (env / "dagster_home").exists()
    assert not (env / "wh.duckdb").exists()
    assert not (env / "outbox").exists()


def test_as_a_command_the_exit_status_is_non_zero_and_stderr_is_one_line(env: Path) -> None:
    run_env = {**os.environ, "NUDGE_EMAIL_BACKEND": "sendgrid", "PYTHONPATH": str(REPO)}
    run_env.pop("SENDGRID_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "nudge.app.cli", "run"],
        env=run_env,
        cwd=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "nudge: NUDGE_EMAIL_BACKEND=sendgrid needs SENDGRID_API_KEY: create an API key with "
        "Mail Send permission in SendGrid and set it"
    ]
    assert not (env / "dagster_home").exists()


# -- smtp and sendgrid without signed unsubscribe links (contract "After the send") --------------


class _Sink:
    """An SMTP relay that keeps what it is handed."""

    def __init__(self) -> None:
        self.envelopes: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 OK"


@contextmanager
def _provider(backend: str) -> Iterator[tuple[dict[str, str], Callable[[], int]]]:
    """A real relay for `backend`: the settings that reach it, and how many messages it got."""
    if backend == "sendgrid":
        with FakeSendGrid(api_key="SG.test") as sg:
            yield (
                {"SENDGRID_API_KEY": "SG.test", "NUDGE_SENDGRID_HOST": sg.url},
                lambda: len(sg.messages),
            )
        return
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield (
            {"NUDGE_SMTP_HOST": "127.0.0.1", "NUDGE_SMTP_PORT": str(controller.port)},
            lambda: len(sink.envelopes),
        )
    finally:
        controller.stop()


@pytest.mark.parametrize("backend", ["smtp", "sendgrid"])
@pytest.mark.parametrize(
    ("keys", "refusal"),
    [
        ({}, "NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL: the {backend} backend needs them for the "
         "unsubscribe link of every message (campaign 'not_activated_7d' names no "
         "unsubscribe_group_id)"),
        ({"NUDGE_SECRET_KEY": "a-long-random-secret-for-links"},
         "NUDGE_PUBLIC_URL: unsubscribe links need both NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL"),
    ],
    ids=["neither", "no public url"],
)  # fmt: skip
def test_run_refuses_smtp_and_sendgrid_without_signed_unsubscribe_links(
    env: Path, backend: str, keys: dict[str, str], refusal: str
) -> None:
    """The seed campaigns name no SendGrid unsubscribe_group_id: without a secret and a public
    URL their messages would carry no unsubscribe link, so `nudge run` refuses before any work."""
    with _provider(backend) as (reach, delivered):
        run_env = {**os.environ, "PYTHONPATH": str(REPO), "NUDGE_EMAIL_BACKEND": backend}
        run_env.update(**reach, **keys)
        done = subprocess.run(
            [sys.executable, "-m", "nudge.app.cli", "run", "--as-of", "2026-03-10"],
            env=run_env, cwd=env, check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert delivered() == 0
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("nudge: " + refusal.format(backend=backend)), line
    assert "a-long-random-secret" not in done.stderr
    assert done.stdout == ""
    # No run: no Dagster instance, no warehouse, nothing in the outbox.
    assert not (env / "dagster_home").exists()
    assert not (env / "wh.duckdb").exists()
    assert not (env / "outbox").exists()


@pytest.mark.integration
def test_run_sends_without_signed_links_when_every_campaign_has_an_unsubscribe_group(
    tmp_path: Path,
) -> None:
    """Every enabled campaign names a SendGrid unsubscribe group (SendGrid adds its own link):
    the same settings that were refused above run, and mail goes out under the group."""
    from support.project_copy import copy_project
    from support.scenario import land_until, write_profiles

    root = copy_project(tmp_path / "nudge")
    yml = root / "dbt_project" / "models" / "cohorts" / "_cohorts__models.yml"
    text = yml.read_text()
    for campaign in SEED_CAMPAIGNS:  # the enabled ones; the playbooks ship disabled
        marker = f"              template: {campaign}\n"
        assert marker in text
        text = text.replace(marker, marker + "              unsubscribe_group_id: 4242\n")
    yml.write_text(text)
    landing = tmp_path / "landing"
    write_profiles(landing)
    with FakeSendGrid(api_key="SG.test") as sg:
        run_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NUDGE_", "DAGSTER_", "SENDGRID_"))
        }
        run_env.update(
            PYTHONPATH=str(root),
            NUDGE_LANDING_DIR=str(landing),
            NUDGE_WAREHOUSE=f"duckdb:///{tmp_path / 'wh.duckdb'}",
            DAGSTER_HOME=str(tmp_path / "dagster_home"),
            NUDGE_EMAIL_BACKEND="sendgrid",
            SENDGRID_API_KEY="SG.test",
            NUDGE_SENDGRID_HOST=sg.url,
        )
        for day in ("2026-03-10", "2026-03-11"):  # the baseline, then one entry a campaign
            land_until(landing, date.fromisoformat(day))
            done = subprocess.run(
                [sys.executable, "-m", "nudge.app.cli", "run", "--as-of", day],
                cwd=root, env=run_env, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
        messages = list(sg.messages)
    assert {m["custom_args"]["nudge_campaign"] for m in messages} == SEED_CAMPAIGNS
    for m in messages:
        assert m["asm"] == {"group_id": 4242}
        for p in m["personalizations"]:
            assert "List-Unsubscribe" not in (p.get("headers") or {})


def test_a_report_before_any_evaluation_says_so_in_one_line(env: Path) -> None:
    run_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NUDGE_WAREHOUSE": f"duckdb:///{env / 'wh.duckdb'}",
        "DAGSTER_HOME": str(env / "dagster_home"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "nudge.app.cli", "report", "--json"],
        env=run_env,
        cwd=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "nudge: nothing to report yet: no evaluation has run (`nudge run` first)"
    ]
