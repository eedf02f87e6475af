"""Send every campaign's pending ledger rows, without Dagster: the send step of `nudge run`.

    python -m email_jobs.send_worker [--campaign NAME]... [--as-of INSTANT] [--batch-size N]

It runs `email_jobs.send.send_campaign`, the code the `campaign_sends` asset runs, with the same
settings, campaigns (from the dbt manifest) and backend, and prints one JSON line per campaign
(the SendReport). It exists for the fault-injection tests, which kill hundreds of send runs
(`NUDGE_FAULT_KILL_AT`, see email_jobs.faults) and cannot afford a Dagster run each, and for
operators who want to drain the ledger by hand.

    python -m email_jobs.send_worker --serve

reads one JSON object a line, `{"argv": [...], "env": {...}, "kill_at": "POINT:N"}`, forks a
child that runs the worker with that environment and kill point (email_jobs.faults), and answers
`{"returncode": N}` (-9 for a SIGKILL). The fork skips the interpreter start and imports, which
are most of a short run's cost; the child is a real process, killed for real.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path

from email_jobs.backends import make_backend
from email_jobs.campaigns import Campaign
from email_jobs.message import CredentialError
from email_jobs.send import send_campaign
from email_jobs.template_columns import load_campaigns
from nudge.asof import parse_as_of
from nudge.manifest import MANIFEST
from nudge.settings import ConfigError, load_settings
from nudge.warehouse import connect

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


def serve() -> int:
    """The fork server of the fault-injection tests (see the module docstring)."""
    from email_jobs import faults

    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: its output must not mix with the answers
            code = 1
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, sys.stdout.fileno())
                os.environ.update(command.get("env") or {})
                faults.arm(command.get("kill_at"))
                code = main(command.get("argv") or [])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)  # noqa: T201 - the protocol
    return 0


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
                lambda: connect(settings),
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
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
