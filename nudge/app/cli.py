"""The `nudge` command (contract: "Command line")."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from nudge.app.session import UserError, command_settings, dagster_instance, prepare_pipeline
from nudge.core.settings import ConfigError

log = logging.getLogger("nudge")


# -- shared setup: nudge.app.session ------------------------------------------------------------


def _campaign(name: str):
    from nudge.app.runner import definitions  # noqa: F401 - validates the code location loads
    from orchestration.defs.email.campaigns import manifest_campaigns

    campaigns = {c.name: c for c in manifest_campaigns()}
    if name not in campaigns:
        known = ", ".join(sorted(campaigns)) or "none"
        raise UserError(f"unknown campaign {name!r}; campaigns: {known}")
    return campaigns[name]


def _report(outcomes: Sequence) -> int:
    failed = [o for o in outcomes if not o.success]
    for o in failed:
        print(f"nudge: {o.job} failed (run {o.run_id}): {o.error}", file=sys.stderr)
    return 1 if failed else 0


# -- commands ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from nudge.app.runner import run_evaluation
    from nudge.core.instant import parse_as_of, to_iso

    settings = command_settings()
    end = parse_as_of(args.as_of)
    prepare_pipeline(settings)
    outcomes = run_evaluation(end, dagster_instance(), settings)
    code = _report(outcomes)
    if code == 0:
        from nudge.app.summary import evaluation_lines

        for line in evaluation_lines(settings, end):
            print(line)
        print(f"evaluated at {to_iso(end)}; runs: {', '.join(o.run_id for o in outcomes)}")
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from nudge.app.demo import run_demo

    return run_demo(
        days=args.days, users=args.users, events_per_day=args.events_per_day, every=args.every
    )


def cmd_ui(args: argparse.Namespace) -> int:
    settings = command_settings()
    prepare_pipeline(settings)
    workspace = Path(__file__).resolve().parents[2] / "workspace.yaml"
    dagster = Path(sys.executable).parent / "dagster"
    argv = [str(dagster), "dev", "-w", str(workspace), "--port", str(args.port)]
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_serve(args: argparse.Namespace) -> int:
    from nudge.app.serve import serve

    serve(command_settings(), args.host, args.port)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from synthetic.generate import generate

    try:
        report = generate(
            Path(args.out),
            users=args.users,
            days=args.days,
            events_per_day=args.events_per_day,
            seed=args.seed,
            overwrite=args.overwrite,
            gzip_all=args.gzip,
        )
    except (FileExistsError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(report.describe())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from email_jobs.status import collect_status
    from nudge.core.warehouse import connect_both

    settings = command_settings()
    from nudge.core.dbt_project import ensure_manifest

    ensure_manifest()
    from orchestration.defs.email.campaigns import manifest_campaigns

    with connect_both(settings) as (wh, state):
        status = collect_status(state, manifest_campaigns(), raw=wh)
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    from nudge.app.summary import format_status

    print(format_status(status))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from nudge.app.preview import preview

    settings = command_settings()
    prepare_pipeline(settings)
    paths = preview(settings, _campaign(args.campaign), args.entity, args.as_of, Path(args.out))
    for p in paths:
        print(p)
    return 0


def cmd_test_send(args: argparse.Namespace) -> int:
    from nudge.app.preview import test_send

    settings = command_settings()
    prepare_pipeline(settings)
    result = test_send(settings, _campaign(args.campaign), args.to, args.entity)
    if result.status != "sent":
        print(f"nudge: test send {result.status}: {result.error}", file=sys.stderr)
        return 1
    print(f"sent to {args.to} (provider id {result.provider_message_id})")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from email_jobs.send import release
    from nudge.app.runner import run_sends
    from nudge.core.warehouse import connect_state

    settings = command_settings()
    prepare_pipeline(settings)
    campaign = _campaign(args.campaign)
    if not campaign.enabled:
        raise UserError(
            f"campaign {campaign.name} is disabled (enabled: false in its yml): it sends nothing; "
            f"turn it on with NUDGE_ENABLED_CAMPAIGNS={campaign.name} or `enabled: true`"
        )
    with connect_state(settings) as wh:
        released = release(wh, campaign, include_unknown=args.unknown)
    print(f"released {released} entr{'y' if released == 1 else 'ies'} of {campaign.name}")
    outcome = run_sends(dagster_instance(), campaign.name)
    return _report([outcome])


def cmd_diff_cohort(args: argparse.Namespace) -> int:
    from nudge.app.diff_cohort import diff_cohort
    from nudge.core.instant import parse_as_of

    settings = command_settings()
    as_of = parse_as_of(args.as_of) if args.as_of else None
    diff = diff_cohort(settings, args.model, as_of, keep=args.keep)
    for line in diff.lines():
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nudge.app.outcomes import make_report, report_json
    from nudge.app.report_text import format_report
    from nudge.core.dbt_project import MANIFEST, ensure_manifest
    from nudge.core.instant import parse_as_of

    settings = command_settings()
    ensure_manifest()
    from orchestration.defs.email.campaigns import manifest_campaigns

    names = [c.name for c in manifest_campaigns()]
    if args.campaign and args.campaign not in names:
        print(
            f"nudge: no campaign {args.campaign!r} (campaigns: {', '.join(names) or 'none'})",
            file=sys.stderr,
        )
        return 2
    manifest = json.loads(MANIFEST.read_text())
    as_of = parse_as_of(args.as_of) if args.as_of else None
    report = make_report(settings, [args.campaign] if args.campaign else names, manifest, as_of)
    if args.html:
        from email_jobs.report_html import render_html

        Path(args.html).write_text(render_html(report.data, report.lift), encoding="utf-8")
    if args.json:
        print(report_json(report))
    else:
        print(format_report(report.data))
        if args.html:
            print(f"charts: {args.html}")
    return 0


def _operator() -> str:
    """Who runs this command, for the suppression list's records."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"


def cmd_suppress(args: argparse.Namespace) -> int:
    from email_jobs.suppressions import (
        SuppressionError,
        add_suppression,
        lift_suppression,
        list_suppressions,
    )
    from nudge.core.warehouse import connect_state

    if args.action == "list" and args.address:
        raise UserError("nudge suppress list takes no ADDRESS")
    if args.action != "list" and not args.address:
        raise UserError(f"nudge suppress {args.action} needs an ADDRESS")
    if args.action == "remove" and not (args.reason or "").strip():
        raise UserError("nudge suppress remove needs --reason TEXT: lifting is recorded")
    settings = command_settings()
    by = args.by or _operator()
    try:
        with connect_state(settings) as wh:
            if args.action == "add":
                added = add_suppression(wh, args.address, args.reason, by)
                print(f"{args.address}: {'suppressed' if added else 'already suppressed'}")
                return 0
            if args.action == "remove":
                sources = lift_suppression(wh, args.address, args.reason, by)
                print(f"lifted the suppression of {args.address} ({', '.join(sources)})")
                return 0
            rows = list_suppressions(wh, include_lifted=args.all)
    except SuppressionError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for r in rows:
        line = f"{r['email']}\t{r['source']}\t{r['reason'] or ''}\t{r['first_seen_at'] or ''}"
        if r["lifted_at"] is not None:
            line += f"\tlifted {r['lifted_at']} by {r['lifted_by']}: {r['lifted_reason']}"
        print(line)
    return 0


def cmd_spark(args: argparse.Namespace) -> int:
    from nudge.core.settings import load_settings
    from nudge.core.spark import local_server_status, stop_local_server

    # Only the warehouse's settings matter here: no state store or email backend is needed
    # to stop a server, and loading them must not start one (command_settings would).
    settings = load_settings(check=False)
    url = settings.warehouse_url
    if url.kind != "spark":
        raise UserError(
            f"NUDGE_WAREHOUSE={url.shown!r} is not a Spark warehouse; `nudge spark` manages the "
            "embedded Spark of NUDGE_WAREHOUSE=spark://local[N]"
        )
    if url.spark_remote:
        if args.action == "status":
            print(f"Spark Connect server: {url.shown} (run by its operator, not by Nudge)")
            return 0
        raise UserError(
            f"NUDGE_WAREHOUSE={url.shown!r} is a Spark Connect server run by someone else; "
            "`nudge spark stop` stops only the embedded Spark (spark://local[N])"
        )
    server = local_server_status(settings)
    if args.action == "stop":
        if stop_local_server(settings):
            print(f"stopped the embedded Spark (pid {server.pid}) on 127.0.0.1:{server.port}")
        else:
            print(f"the embedded Spark was not running (folder {server.folder})")
        return 0
    if server.running:
        listening = "answering" if server.answers else "not answering yet: starting"
        print(f"embedded Spark ({url.spark_master}): running, pid {server.pid}")
    else:
        listening = (
            "another program listens there: choose another NUDGE_SPARK_CONNECT_PORT"
            if server.answers
            else "free"
        )
        print(f"embedded Spark ({url.spark_master}): not running")
    print(f"port: 127.0.0.1:{server.port} ({listening})")
    print(f"folder: {server.folder} (tables, metastore, connect-server.log)")
    return 0 if server.running else 3


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nudge",
        description="Behavioral email for API products: Moesif dumps -> dbt cohorts -> emails.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add(
        "demo",
        cmd_demo,
        "simulate weeks of API traffic that responds to the emails; end with the report",
    )
    sp.add_argument("--days", type=int, default=28)
    sp.add_argument("--users", type=int, default=600)
    sp.add_argument("--every", type=int, default=3, help="evaluate every N simulated days")
    sp.add_argument("--events-per-day", type=int, default=6000)

    sp = add("run", cmd_run, "one evaluation: ingest, build, evaluate, send")
    sp.add_argument("--as-of", help="DATE (end of that UTC day) or an ISO datetime; default now")

    sp = add("ui", cmd_ui, "the Dagster UI (webserver and daemon) on workspace.yaml")
    sp.add_argument("--port", type=int, default=3000)

    sp = add("preview", cmd_preview, "render a member's email (HTML and text) without sending")
    sp.add_argument("campaign")
    sp.add_argument("--entity", required=True, help="the member's user_id or company_id")
    sp.add_argument("--as-of", help="evaluate the cohort at this instant first")
    sp.add_argument("--out", default="data/preview", help="folder for the rendered files")

    sp = add("test-send", cmd_test_send, "send one rendered example outside the ledger")
    sp.add_argument("campaign")
    sp.add_argument("--to", required=True)
    sp.add_argument("--entity", help="render for this member (default: the first member)")

    sp = add("generate", cmd_generate, "write synthetic Moesif dumps in the landing layout")
    sp.add_argument("--out", required=True)
    sp.add_argument("--users", type=int, default=200)
    sp.add_argument("--days", type=int, default=35)
    sp.add_argument("--events-per-day", type=int, default=4000)
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--overwrite", action="store_true", help="replace dumps already in --out")
    sp.add_argument("--gzip", action="store_true", help="gzip every JSON-lines dump file")

    sp = add(
        "diff-cohort",
        cmd_diff_cohort,
        "build an edited cohort model beside the live one and print who would enter and exit",
    )
    sp.add_argument("model", help="the cohort's dbt model, e.g. cohort_not_activated_7d")
    sp.add_argument("--as-of", help="compare at this instant (default: its last evaluation)")
    sp.add_argument("--keep", action="store_true", help="keep <model>__shadow for inspection")

    sp = add("release", cmd_release, "send a campaign's held entries (and unknown ones)")
    sp.add_argument("campaign")
    sp.add_argument("--unknown", action="store_true", help="also resend entries in state unknown")

    sp = add("suppress", cmd_suppress, "the suppression list by hand: add, remove (lift), list")
    sp.add_argument("action", choices=("add", "remove", "list"))
    sp.add_argument("address", nargs="?", help="the address (add and remove)")
    sp.add_argument("--reason", help="why (required by remove: lifting is recorded)")
    sp.add_argument("--by", help="who, for the record (default: the user running this)")
    sp.add_argument("--all", action="store_true", help="list: lifted suppressions too")
    sp.add_argument("--json", action="store_true", help="list: one JSON array")

    sp = add("serve", cmd_serve, "the unsubscribe and delivery-event web service")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8080)

    sp = add("report", cmd_report, "funnel, conversion and lift (holdout vs emailed) per campaign")
    sp.add_argument("campaign", nargs="?", help="one campaign (default: every campaign)")
    sp.add_argument("--as-of", help="as of the campaigns' latest evaluation at this instant")
    sp.add_argument("--json", action="store_true", help='one object: {"campaigns": [...]}')
    sp.add_argument("--html", metavar="FILE", help="also write a page with charts to FILE")

    sp = add("spark", cmd_spark, "the embedded Spark's server: status (exit 3: not running), stop")
    sp.add_argument("action", choices=("status", "stop"))

    sp = add(
        "status", cmd_status, "campaigns, cohort sizes, last evaluation, ledger and ingest counts"
    )
    sp.add_argument("--json", action="store_true")
    return p


def keep_sigterm_effective() -> None:
    """Let SIGTERM stop Nudge and the processes it starts, even in a script's background job.

    A non-interactive shell starts `cmd &` with SIGINT ignored. Dagster points SIGTERM at
    SIGINT's handler whenever it runs a job, so SIGTERM would be ignored too, by this process
    and (ignored signals survive exec) by every process it starts: `timeout`, a supervisor or
    `kill` could no longer stop a run. Python's own SIGINT handler avoids that.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    keep_sigterm_effective()
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Libraries set their own loggers' levels; the terminal shows what the user asked for (the
    # Dagster UI keeps every event of every run).
    for handler in logging.root.handlers:
        handler.setLevel(level if args.verbose else logging.ERROR)
    if args.verbose:
        import nudge.app.runner

        nudge.app.runner.console_log_level = "INFO"
    try:
        return args.fn(args)
    except (ConfigError, UserError, ValueError) as exc:
        print(f"nudge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
