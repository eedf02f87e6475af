"""Send every campaign's pending ledger rows, without Dagster: the send step of `nudge run`.

    python -m email_jobs.send_worker [--campaign NAME]... [--as-of INSTANT] [--batch-size N]

It runs `email_jobs.send.send_campaign`, the code the `campaign_sends` asset runs, with the same
settings, campaigns (from the dbt manifest) and backend, and prints one JSON line per campaign
(the SendReport). It exists for the fault-injection tests, which kill hundreds of send runs
(`NUDGE_FAULT_KILL_AT`, see email_jobs.faults) and cannot afford a Dagster run each, and for
operators who want to drain the ledger by hand.
The tests' fork server that runs it hundreds of times is tests/support/send_fork_server.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from email_jobs.backends import make_backend
from email_jobs.campaigns import Campaign
from email_jobs.message import CredentialError
from email_jobs.send import send_campaign
from email_jobs.template_columns import load_campaigns
from nudge.core.dbt_project import MANIFEST
from nudge.core.instant import parse_as_of
from nudge.core.settings import ConfigError, load_settings
from nudge.core.warehouse import connect_state

log = logging.getLogger(__name__)


def manifest_campaigns(names: Sequence[str] = (), manifest: Path = MANIFEST) -> list[Campaign]:
    if not manifest.exists():
        raise ConfigError(f"no dbt manifest at {manifest}; run `nudge run` (or dbt parse) first")
    campaigns = load_campaigns(json.loads(manifest.read_text(encoding="utf-8")))
    if not names:
        return campaigns
    known = {c.name: c for c in campaigns}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(
            f"unknown campaign(s) {', '.join(missing)}; campaigns: {', '.join(sorted(known))}"
        )
    return [known[n] for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m email_jobs.send_worker", description=__doc__)
    parser.add_argument("--campaign", action="append", default=[], help="only this campaign")
    parser.add_argument("--as-of", help="the send run's evaluation instant (frequency cap)")
    parser.add_argument("--batch-size", type=int, help="rows per claim")
    parser.add_argument("--run-id", help="default: a fresh id")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="dbt manifest.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        campaigns = manifest_campaigns(args.campaign, args.manifest)
        as_of = parse_as_of(args.as_of) if args.as_of else None
    except (ConfigError, ValueError) as exc:
        print(f"send_worker: {exc}", file=sys.stderr)  # noqa: T201 - a command's one-line error
        return 2
    run_id = args.run_id or f"send-worker-{uuid.uuid4().hex[:12]}"
    backend = make_backend(settings)
    try:
        for campaign in campaigns:  # each verifies the credential before claiming anything
            report = send_campaign(
                lambda: connect_state(settings),
                campaign,
                backend,
                settings,
                run_id,
                as_of=as_of,
                batch_size=args.batch_size,
            )
            print(json.dumps(report.metadata(), default=str), flush=True)  # noqa: T201
    except CredentialError as exc:  # the rows stay pending for a run with a good credential
        print(f"send_worker: {exc}", file=sys.stderr)  # noqa: T201 - one line, no secret
        return 3
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
