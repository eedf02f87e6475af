"""Human-readable lines for `nudge run`, `nudge demo` and `nudge status`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from nudge.core.settings import Settings
from nudge.core.warehouse import connect_state


def evaluation_rows(settings: Settings, end: datetime) -> list[dict[str, Any]]:
    """Per campaign at instant `end`: members, entered, exited, and the ledger states of its
    entries (`states`, and `skipped` by reason)."""
    with connect_state(settings) as wh:
        if not wh.table_exists("nudge", "evaluations"):
            return []
        evaluations = wh.fetchdicts(
            "select campaign, cohort, kind, members, entered, exited, guard_reasons "
            "from nudge.evaluations where as_of = ? order by campaign",
            [end],
        )
        states = wh.fetchall(
            "select campaign, state, reason, count(*) from nudge.send_ledger "
            "where entry_as_of = ? group by campaign, state, reason",
            [end],
        )
    by_campaign: dict[str, dict[str, int]] = {}
    skipped: dict[str, dict[str, int]] = {}
    for campaign, state, reason, n in states:
        counts = by_campaign.setdefault(campaign, {})
        counts[state] = counts.get(state, 0) + int(n)
        if state == "skipped":
            skipped.setdefault(campaign, {})[reason or "?"] = int(n)
    for row in evaluations:
        row["states"] = by_campaign.get(row["campaign"], {})
        row["skipped"] = skipped.get(row["campaign"], {})
    return evaluations


def _reasons(stored: object) -> list[str]:
    """guard_reasons as stored: a JSON array of sentences (empty when no guard fired)."""
    if not stored:
        return []
    if isinstance(stored, str):
        try:
            parsed = json.loads(stored)
        except ValueError:
            return [stored]
        return [str(x) for x in parsed] if isinstance(parsed, list) else [str(parsed)]
    return [str(x) for x in stored] if isinstance(stored, list) else [str(stored)]


def evaluation_lines(settings: Settings, end: datetime) -> list[str]:
    lines = []
    for r in evaluation_rows(settings, end):
        states = r["states"]
        state_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no emails"
        kind = " (baseline)" if r["kind"] == "baseline" else ""
        lines.append(
            f"  {r['campaign']:<24} members {r['members']:>5}  entered {r['entered']:>4}  "
            f"exited {r['exited']:>4}{kind}  -> {state_text}"
        )
        reasons = _reasons(r.get("guard_reasons"))
        if reasons:
            lines.append(f"  {'':<24} guards: {'; '.join(reasons)}")
    return lines


def format_status(status: dict[str, Any]) -> str:
    ing = status.get("ingest", {})
    out = [
        "ingest: {files} files, {lines_read} lines read, {events_loaded} events loaded, "
        "{duplicates} duplicates, {rejected} rejected".format(
            **{
                k: ing.get(k, 0)
                for k in ("files", "lines_read", "events_loaded", "duplicates", "rejected")
            }
        )
    ]
    for kind, k in sorted(ing.get("by_kind", {}).items()):
        if kind != "events":
            out.append(
                f"  {kind}: {k['files']} files, {k['lines_read']} lines, {k['loaded']} loaded, "
                f"{k['duplicates']} duplicates, {k['rejected']} rejected"
            )
    for c in status.get("campaigns", []):
        sends = ", ".join(f"{n} {s}" for s, n in c.get("sends", {}).items())
        switch = "" if c.get("enabled", True) else " [disabled]"
        if c.get("enabled", True) and c.get("enabled_by", "yml") != "yml":
            switch = f" [enabled by {c['enabled_by']}]"
        out.append(
            f"{c['campaign']} ({c['cohort']}){switch}: {c.get('members', 0)} members at "
            f"{c.get('last_evaluation') or 'never evaluated'}; sends: {sends}"
        )
    failure = status.get("last_failure")
    if failure:
        out.append(
            f"last failed run: {failure['job']} {failure['run_id']} at {failure['failed_at']}: "
            f"{failure['message']}"
        )
    return "\n".join(out)
