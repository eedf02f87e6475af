"""The `nudge status --json` object (contract, "Command line: nudge").

Ingest counts come from `raw.ingested_files` (one row per ingested file version):
- files, lines_read, duplicates, rejected: all kinds (events, users, companies, ...), so that
  lines_read = loaded + duplicates + rejected holds over the whole landing folder;
- events_loaded: events only (the number of distinct events added);
- by_kind: the same counts per kind.
Tables that do not exist yet count as zero, never as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from email_jobs.campaigns import Campaign
from email_jobs.ledger import State
from nudge.core.instant import to_iso
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

SEND_STATES = (
    State.SENT,
    State.SKIPPED,
    State.FAILED,
    State.HELD,
    State.UNKNOWN,
    State.PENDING,
    State.CLAIMED,
)


def ingest_counts(wh: Warehouse) -> dict[str, Any]:
    """The event files' counts (so lines_read = events_loaded + duplicates + rejected holds),
    and the same per kind under `by_kind` (users and companies are profile lines)."""
    counts: dict[str, Any] = {
        "files": 0,
        "lines_read": 0,
        "events_loaded": 0,
        "duplicates": 0,
        "rejected": 0,
        "by_kind": {},
    }
    if not wh.table_exists("raw", "ingested_files"):
        return counts
    rows = wh.fetchall(
        "select kind, count(*), sum(lines_read), sum(loaded), sum(duplicates), sum(rejected) "
        "from raw.ingested_files group by kind order by kind"
    )
    for kind, files, lines, loaded, dups, rejected in rows:
        per_kind = {
            "files": int(files),
            "lines_read": int(lines or 0),
            "loaded": int(loaded or 0),
            "duplicates": int(dups or 0),
            "rejected": int(rejected or 0),
        }
        counts["by_kind"][kind] = per_kind
        if kind == "events":
            counts.update(
                files=per_kind["files"],
                lines_read=per_kind["lines_read"],
                events_loaded=per_kind["loaded"],
                duplicates=per_kind["duplicates"],
                rejected=per_kind["rejected"],
            )
    return counts


def _last_evaluations(wh: Warehouse) -> dict[str, dict[str, Any]]:
    if not wh.table_exists("nudge", "evaluations"):
        return {}
    rows = wh.fetchdicts(
        """
        select e.campaign, e.as_of, e.members, e.kind, e.evaluated_at
        from nudge.evaluations e
        join (select campaign, max(as_of) as as_of from nudge.evaluations group by campaign) m
          on m.campaign = e.campaign and m.as_of = e.as_of
        """
    )
    return {r["campaign"]: r for r in rows}


def _ledger_counts(wh: Warehouse) -> dict[str, dict[str, int]]:
    if not wh.table_exists("nudge", "send_ledger"):
        return {}
    counts: dict[str, dict[str, int]] = {}
    for campaign, state, n in wh.fetchall(
        "select campaign, state, count(*) from nudge.send_ledger group by campaign, state"
    ):
        counts.setdefault(campaign, {})[state] = int(n)
    return counts


def _holdout_counts(wh: Warehouse) -> dict[str, int]:
    """Held-out entries per campaign (within `skipped`; they are the control group)."""
    if not wh.table_exists("nudge", "send_ledger"):
        return {}
    rows = wh.fetchall(
        "select campaign, count(*) from nudge.send_ledger "
        "where state = 'skipped' and reason = 'holdout' group by campaign"
    )
    return {c: int(n) for c, n in rows}


SAMPLE = 20  # ledger keys listed per campaign for rows that need a look


def _attention(wh: Warehouse) -> dict[str, dict[str, Any]]:
    """Per campaign: pending rows by reason (`retry_later` after failed attempts,
    `frequency_cap`, new ones as `new`), and samples of the rows a person should look at: those
    still failing (pending after attempts) and those `unknown`."""
    if not wh.table_exists("nudge", "send_ledger"):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for campaign, reason, n in wh.fetchall(
        "select campaign, coalesce(reason, 'new'), count(*) from nudge.send_ledger "
        "where state = 'pending' group by campaign, coalesce(reason, 'new')"
    ):
        entry = out.setdefault(campaign, {"pending_reasons": {}, "retrying": [], "unknown": []})
        entry["pending_reasons"][reason] = int(n)
    rows = wh.fetchall(
        """
        select campaign, state, ledger_key, attempts, last_error from nudge.send_ledger
        where (state = 'pending' and attempts > 0) or state = 'unknown'
        order by campaign, state, updated_at desc, ledger_key
        """
    )
    for campaign, state, key, attempts, error in rows:
        entry = out.setdefault(campaign, {"pending_reasons": {}, "retrying": [], "unknown": []})
        bucket = entry["retrying" if state == "pending" else "unknown"]
        if len(bucket) < SAMPLE:
            bucket.append({"ledger_key": key, "attempts": int(attempts), "last_error": error})
    return out


def _last_failure(wh: Warehouse) -> dict[str, Any] | None:
    try:
        from email_jobs.run_failures import latest_failure
    except ImportError:  # written by the orchestration side; absent means none recorded
        return None
    return latest_failure(wh)


def collect_status(
    wh: Warehouse, campaigns: Sequence[Campaign], raw: Warehouse | None = None
) -> dict[str, Any]:
    """The state store `wh`'s campaigns and ledger, and the ingest counts of the warehouse
    `raw` (`wh` itself when omitted)."""
    evaluations = _last_evaluations(wh)
    ledger = _ledger_counts(wh)
    held_out = _holdout_counts(wh)
    attention = _attention(wh)
    out_campaigns = []
    for campaign in campaigns:
        last = evaluations.get(campaign.name)
        by_state = ledger.get(campaign.name, {})
        out_campaigns.append(
            {
                "campaign": campaign.name,
                "cohort": campaign.cohort,
                "entity": campaign.entity,
                # The switch, and who set it: `yml` or NUDGE_ENABLED_CAMPAIGNS.
                "enabled": campaign.enabled,
                "enabled_by": campaign.enabled_by,
                "members": int(last["members"]) if last else 0,
                "last_evaluation": to_iso(last["as_of"]) if last else None,
                "last_evaluation_kind": last["kind"] if last else None,
                "sends": {str(s): by_state.get(s, 0) for s in SEND_STATES},
                "holdout": {
                    "share": campaign.holdout_share,
                    "entries": held_out.get(campaign.name, 0),
                },
                **attention.get(
                    campaign.name, {"pending_reasons": {}, "retrying": [], "unknown": []}
                ),
            }
        )
    return {
        "ingest": ingest_counts(wh if raw is None else raw),
        "campaigns": out_campaigns,
        "last_failure": _last_failure(wh),
    }
