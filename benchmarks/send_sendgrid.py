"""Send throughput through the SendGrid backend: the real send loop, ledger and rendering.

    PYTHONPATH=. python benchmarks/send_sendgrid.py [--emails 10000] [--concurrency 32]
        [--latency 0.02] [--warehouse duckdb|postgresql://...]

A local SendGrid stand-in (tests/support/fake_sendgrid.py, its own process) answers every mail
send after `--latency` seconds. The benchmark puts `--emails` pending rows of the seed campaign
too_many_4xx_7d in a fresh ledger and times `email_jobs.send.send_campaign` (claim, render with
the real template, deliver, record) until all are sent. As a same-run baseline it times the raw
HTTP rate of the same server with the same client (SendGridBackend on a pre-rendered message)
and the same concurrency: the ceiling the send loop can approach.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from email_jobs.backends.sendgrid import SendGridBackend
from email_jobs.campaigns import Campaign
from email_jobs.ledger import (
    NewEntry,
    State,
    ensure_schema,
    insert_entries,
    ledger_key,
    payload_json,
    state_counts,
)
from email_jobs.render import render_email
from email_jobs.send import send_campaign
from nudge.core.settings import Settings
from nudge.core.warehouse import connect

REPO = Path(__file__).resolve().parents[1]
API_KEY = "SG.benchmark"
AS_OF = datetime(2026, 3, 11)
CAMPAIGN = Campaign(
    name="too_many_4xx_7d",
    cohort="cohort_too_many_4xx_7d",
    relation_name='"wh"."analytics"."cohort_too_many_4xx_7d"',
    entity="user",
    template="too_many_4xx_7d",
)
ENDPOINTS = json.dumps(
    [
        {"verb": "GET", "endpoint": "/v1/widgets/{id}", "status": 404, "calls": 1200},
        {"verb": "POST", "endpoint": "/v1/orders", "status": 400, "calls": 310},
        {"verb": "PUT", "endpoint": "/v1/widgets/{id}", "status": 405, "calls": 12},
    ]
)


def member(i: int) -> dict:
    return {
        "entity_id": f"user-{i:06d}",
        "email": f"user{i}@customer{i % 97}.example",
        "first_name": f"Name{i}",
        "last_name": "Bench",
        "company_id": f"co-{i % 97}",
        "company_domain": f"customer{i % 97}.example",
        "cc": f"se{i % 5}@vendor.example",
        "calls_4xx": 1000 + i,
        "top_failing_endpoints_json": ENDPOINTS,
    }


def start_fake(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_sendgrid", "--api-key", API_KEY,
         "--delay", str(latency)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def accepted(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_fake/messages", timeout=60) as resp:
        return len(json.loads(resp.read()))


def reset(url: str) -> None:
    req = urllib.request.Request(f"{url}/_fake/reset", data=b"", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def raw_http_rate(url: str, concurrency: int, n: int, settings: Settings) -> float:
    """Requests a second of the same client on one pre-rendered message, same concurrency."""
    backend = SendGridBackend(API_KEY, host=url)
    email = render_email(CAMPAIGN, member(0), settings, ledger_key="baseline")
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda _: backend.send(email).status, range(n)))
    elapsed = time.perf_counter() - started
    assert results.count("sent") == n, f"baseline: {n - results.count('sent')} not accepted"
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per answer")
    parser.add_argument("--warehouse", default="duckdb", help="duckdb or a postgresql:// URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    proc, url = start_fake(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            warehouse = (
                f"duckdb:///{tmp}/bench.duckdb" if args.warehouse == "duckdb" else args.warehouse
            )
            settings = Settings(
                _env_file=None,
                warehouse=warehouse,
                send_concurrency=args.concurrency,
                from_email="hello@acme.example",
            )
            with connect(settings) as wh:
                ensure_schema(wh)
                wh.execute("delete from nudge.send_ledger where campaign = ?", [CAMPAIGN.name])
                with wh.transaction():
                    insert_entries(
                        wh,
                        (
                            NewEntry(ledger_key(CAMPAIGN.name, row["entity_id"], AS_OF),
                                     CAMPAIGN.name, row["entity_id"], AS_OF, 0, "bench",
                                     State.PENDING, None, row["email"], payload_json(row))
                            for row in map(member, range(args.emails))
                        ),
                    )  # fmt: skip

            baseline = raw_http_rate(url, args.concurrency, min(args.emails, 3000), settings)
            reset(url)

            backend = SendGridBackend(API_KEY, host=url)
            started = time.perf_counter()
            report = send_campaign(
                lambda: connect(settings), CAMPAIGN, backend, settings, "bench", as_of=AS_OF
            )
            elapsed = time.perf_counter() - started
            with connect(settings) as wh:
                counts = state_counts(wh, CAMPAIGN.name)
            server = accepted(url)
    finally:
        proc.kill()
        proc.wait()

    rate = report.sent / elapsed
    print(
        f"send loop: {report.sent} emails in {elapsed:.1f} s = {rate:.0f} emails/s "
        f"(concurrency {args.concurrency}, {args.latency * 1000:.0f} ms per answer, "
        f"{warehouse.split(':')[0]} ledger)"
    )
    print(f"baseline: raw HTTP to the same server, same client and concurrency = {baseline:.0f}/s")
    print(f"ratio: {rate / baseline:.2f} of the raw HTTP rate")
    print(f"ledger: {counts}; accepted by the server: {server}")
    if counts != {"sent": args.emails} or server != args.emails:
        print("ERROR: not every email was sent exactly once", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
