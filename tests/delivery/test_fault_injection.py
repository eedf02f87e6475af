"""Kill real send processes (SIGKILL, no cleanup) at hundreds of points of the send path, run
again, and check the promise: no entry was accepted twice by the (fake) SendGrid server, every
entry ends sent, skipped, failed, held or unknown, and the unknown ones are reported.

The bulk runs the send code of `nudge run` without a Dagster run each: processes forked by
`python -m tests.support.send_fork_server` (no interpreter start per kill), each killed for real;
a few kills go through a real `nudge run`. Kill points come from the test hook
NUDGE_FAULT_KILL_AT=POINT:N (email_jobs/faults.py). SendGrid accepts are counted from the file
the fake server records them to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.fake_sendgrid import FakeSendGrid, Fault

from email_jobs.faults import POINTS
from email_jobs.ledger import NewEntry, State, ensure_schema, insert_entries, ledger_key
from email_jobs.ledger import payload_json as to_json
from email_jobs.status import collect_status
from email_jobs.template_columns import load_campaigns
from nudge.core.settings import Settings
from nudge.core.warehouse import connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
API_KEY = "SG.fault-test"
CAMPAIGNS = ("fault_a", "fault_b")
D0 = datetime(2026, 5, 1)
ROWS_PER_CAMPAIGN = 4  # new entries per campaign per evaluation
BATCH_SIZE = 2
# Occurrences of each point in one run (2 campaigns x 4 rows in batches of 2): a claim is
# tried 3 times a campaign (the last finds nothing), a batch is recorded twice a campaign.
SPAN = {
    "before_claim": 6,
    "after_claim": 6,
    "before_send": 8,
    "after_accept": 8,
    "before_record": 4,
    "mid_record": 4,
    "after_record": 4,
}
KILLS_PER_POINT = 30
FINAL_STATES = {"sent", "skipped", "failed", "held", "unknown"}


def write_manifest(path: Path) -> None:
    """Two campaigns on one cohort, both with the seed template not_activated_7d."""
    columns = ("entity_id", "email", "first_name", "signup_at")
    node = {
        "name": "cohort_fault",
        "unique_id": "model.nudge.cohort_fault",
        "resource_type": "model",
        "relation_name": '"wh"."analytics"."cohort_fault"',
        "columns": {c: {"name": c} for c in columns},
        "config": {
            "meta": {
                "nudge": {
                    "entity": "user",
                    "campaigns": [{"name": n, "template": "not_activated_7d"} for n in CAMPAIGNS],
                }
            }
        },
    }
    path.write_text(json.dumps({"nodes": {node["unique_id"]: node}}), encoding="utf-8")


class Chain:
    """One warehouse and a sequence of send runs, each killed at POINT:N, then a clean one."""

    def __init__(self, root: Path, sg_url: str, point: str, record: Path) -> None:
        self.root, self.point, self.record = root, point, record
        root.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(warehouse=f"duckdb:///{root}/wh.duckdb", _env_file=None)
        self.manifest = root / "manifest.json"
        write_manifest(self.manifest)
        self.env = {  # what the send run's child process gets on top of the server's
            "NUDGE_WAREHOUSE": self.settings.warehouse,
            "NUDGE_EMAIL_BACKEND": "sendgrid",
            "SENDGRID_API_KEY": API_KEY,
            "NUDGE_SECRET_KEY": "fault-injection-secret-key",
            "NUDGE_PUBLIC_URL": "https://nudge.example.test",
            "NUDGE_SENDGRID_HOST": sg_url,
            "NUDGE_SEND_CONCURRENCY": "3",
            "NUDGE_FROM_EMAIL": "hello@acme.example",
        }
        self.kills = 0
        self.runs = 0
        with connect(self.settings) as wh:
            ensure_schema(wh)

    def add_entries(self, k: int) -> datetime:
        at = D0 + timedelta(days=k)
        entries = []
        for campaign in CAMPAIGNS:
            for i in range(ROWS_PER_CAMPAIGN):
                entity = f"{self.point}-u{k}_{i}"  # chains share the server's record
                email = f"{campaign}.{entity}@example.com"
                row = {"entity_id": entity, "email": email, "first_name": entity, "signup_at": None}
                entries.append(
                    NewEntry(ledger_key(campaign, entity, at), campaign, entity, at, 0, "ev",
                             State.PENDING, None, email, to_json(row))
                )  # fmt: skip
        with connect(self.settings) as wh, wh.transaction():
            insert_entries(wh, entries)
        return at

    def send(self, server: Server, at: datetime, kill_at: str | None) -> int:
        argv = ["--manifest", str(self.manifest), "--as-of", at.isoformat() + "Z",
                "--batch-size", str(BATCH_SIZE)]  # fmt: skip
        returncode = server.run(argv, self.env, kill_at)
        self.runs += 1
        if returncode == -signal.SIGKILL:
            self.kills += 1
        else:
            assert returncode == 0, server.errors()
        return returncode

    def ledger(self) -> dict[str, dict[str, Any]]:
        with connect(self.settings) as wh:
            return {r["ledger_key"]: r for r in wh.fetchdicts("select * from nudge.send_ledger")}

    def run(self, server: Server) -> None:
        span = SPAN[self.point]
        for k in range(KILLS_PER_POINT):
            at = self.add_entries(k)
            self.send(server, at, f"{self.point}:{1 + (k * 5) % span}")
            check_no_double_send(self.ledger(), self.record)
        self.send(server, D0 + timedelta(days=KILLS_PER_POINT), None)


class Server:
    """`python -m tests.support.send_fork_server`: forks a real child process per send run."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.send_fork_server"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
        )  # fmt: skip

    def run(self, argv: list[str], env: dict[str, str], kill_at: str | None) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        command = {"argv": argv, "env": env, "kill_at": kill_at}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the send worker server died: {self.errors()}"
        return int(json.loads(answer)["returncode"])

    def errors(self) -> str:
        return self.log.read_text(encoding="utf-8")[-3000:]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def accepted(record: Path) -> dict[str, list[str]]:
    """ledger key -> the message ids the server accepted for it (every chain's)."""
    out: dict[str, list[str]] = {}
    if record.exists():
        lines = record.read_text(encoding="utf-8").split("\n")
        # The other chain's server may be writing a line right now: the last piece is either
        # empty (file ends in a newline) or a line still being written, counted next time.
        for line in lines[:-1]:
            item = json.loads(line)
            out.setdefault(item["body"]["custom_args"]["nudge_key"], []).append(item["message_id"])
    return out


def check_no_double_send(ledger: dict[str, dict[str, Any]], record: Path) -> None:
    taken = accepted(record)
    twice = {k: ids for k, ids in taken.items() if len(ids) > 1}
    assert not twice, f"accepted twice: {twice}"
    for key in taken.keys() & ledger.keys():
        # Accepted but not recorded sent: only a kill between accept and record does that,
        # and then the row must never be sent again without a person deciding.
        assert ledger[key]["state"] in ("sent", "unknown", "claimed"), (key, ledger[key])
    for key, row in ledger.items():
        if row["state"] == "sent":
            assert taken.get(key) == [row["provider_message_id"]], (key, row)


def test_hundreds_of_kill_points_never_send_an_entry_twice(tmp_path: Path) -> None:
    record = tmp_path / "accepted.jsonl"
    with FakeSendGrid(api_key=API_KEY, record_path=record) as sg:
        chains = [Chain(tmp_path / p, sg.url, p, record) for p in POINTS]
        errors: list[BaseException] = []

        def work(mine: list[Chain], n: int) -> None:
            server = Server(tmp_path / f"server{n}.log")
            try:
                for chain in mine:
                    chain.run(server)
            except BaseException as exc:
                errors.append(exc)
            finally:
                server.close()

        # Two chains at a time: one per core.
        threads = [threading.Thread(target=work, args=(chains[i::2], i)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    kills = Counter({c.point: c.kills for c in chains})
    assert sum(kills.values()) >= 200, kills
    assert all(n >= KILLS_PER_POINT - 2 for n in kills.values()), kills
    campaigns = load_campaigns(json.loads(chains[0].manifest.read_text()))
    for chain in chains:
        ledger = chain.ledger()
        check_no_double_send(ledger, record)
        states = Counter(r["state"] for r in ledger.values())
        assert set(states) <= FINAL_STATES, (chain.point, states)
        assert states["sent"] > 0
        with connect(chain.settings) as wh:
            status = collect_status(wh, campaigns)
        for c in status["campaigns"]:
            unknown = [k for k, r in ledger.items() if r["state"] == "unknown"
                       and r["campaign"] == c["campaign"]]  # fmt: skip
            assert c["sends"]["unknown"] == len(unknown)
            assert {u["ledger_key"] for u in c["unknown"]} <= set(unknown)
        if chain.point == "after_accept":
            assert states["unknown"] > 0, states  # accepted, then killed before the record


# -- through the real `nudge run` ----------------------------------------------------------------


def test_killing_a_real_nudge_run_mid_send(tmp_path: Path, capsys) -> None:
    from support.scenario import land_until, write_profiles

    landing = tmp_path / "landing"
    write_profiles(landing)
    record = tmp_path / "accepted.jsonl"
    with FakeSendGrid(api_key=API_KEY, record_path=record) as sg:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NUDGE_LANDING_DIR": str(landing),
            "NUDGE_WAREHOUSE": f"duckdb:///{tmp_path / 'wh.duckdb'}",
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "NUDGE_EMAIL_BACKEND": "sendgrid",
            "SENDGRID_API_KEY": API_KEY,
            "NUDGE_SECRET_KEY": "fault-injection-secret-key",
            "NUDGE_PUBLIC_URL": "https://nudge.example.test",
            "NUDGE_SENDGRID_HOST": sg.url,
        }
        sg.fail_next(Fault.server_error(503))  # and a retry on the way

        def nudge_run(day: str, kill_at: str | None) -> int:
            land_until(landing, datetime.fromisoformat(day).date())
            run_env = dict(env, **({"NUDGE_FAULT_KILL_AT": kill_at} if kill_at else {}))
            proc = subprocess.run(
                [sys.executable, "-m", "nudge.app.cli", "run", "--as-of", day],
                cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if kill_at:
                assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
            else:
                assert proc.returncode == 0, proc.stderr[-3000:]
            return proc.returncode

        nudge_run("2026-03-10", None)  # baseline
        nudge_run("2026-03-11", "after_accept:1")  # accepted, never recorded
        nudge_run("2026-03-11", None)
        nudge_run("2026-03-12", "before_send:1")  # claimed, never sent
        nudge_run("2026-03-12", None)

        status_proc = subprocess.run(
            [sys.executable, "-m", "nudge.app.cli", "status", "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
    status = json.loads(status_proc.stdout)
    sends = {c["campaign"]: c["sends"] for c in status["campaigns"]}
    unknown_keys = {u["ledger_key"] for c in status["campaigns"] for u in c["unknown"]}
    taken = accepted(record)
    assert all(len(ids) == 1 for ids in taken.values()), taken
    # Each kill left its campaign's claimed row unknown (the scenario sends one a campaign).
    assert sum(s["unknown"] for s in sends.values()) == len(unknown_keys) == 2
    # Of the 03-11 kill's two claimed rows, the one accepted before the kill is unknown, not
    # sent again; the 03-12 kill's rows were never sent.
    # (An evaluation --as-of D enters members at the end of D: keys carry D + 1 day.)
    assert any("|2026-03-12T" in k for k in unknown_keys & set(taken))
    assert {k for k in unknown_keys if "|2026-03-13T" in k}
    assert not {k for k in unknown_keys if "|2026-03-13T" in k} & set(taken)
    assert all(s["pending"] == 0 and s["claimed"] == 0 for s in sends.values())
