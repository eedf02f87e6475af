"""`nudge report` as text: one block per campaign."""

from __future__ import annotations

from typing import Any


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _pts(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:+.1f} pts"


def format_report(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for c in data["campaigns"]:
        conv = c["conversion"]
        lines.append(f"{c['campaign']}  (as of {c['as_of'] or 'no evaluation yet'})")
        lines.append(
            "  funnel: "
            + ", ".join(
                f"{k} {c[k]}"
                for k in ("entries", "holdout", "sent", "delivered", "opened", "clicked",
                          "bounced", "unsubscribed")
            )
        )  # fmt: skip
        lines.append(
            f"  conversion (matured entries): emailed {_pct(conv['treatment'])} "
            f"({conv['converted_treatment']}/{conv['matured_treatment']}), held out "
            f"{_pct(conv['holdout'])} ({conv['converted_holdout']}/{conv['matured_holdout']}); "
            f"lift {_pts(conv['lift'])}, 95% CI {_pts(conv['ci_low'])} to {_pts(conv['ci_high'])}"
        )
    return "\n".join(lines) or "no campaigns"
