"""`nudge report`'s numbers: per campaign the funnel, conversion per group and the lift.

Read from the outcome models (dbt_project/models/outcomes: fct_campaign_entries,
fct_campaign_lift) into pandas frames; the campaign-level lift is computed here from the same
matured entries, with the same interval as fct_campaign_lift's weekly rows (Newcombe's hybrid
score interval, the same operations in the same order as its SQL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nudge.core.warehouse import Warehouse

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile
FUNNEL = ("entries", "holdout", "sent", "delivered", "opened", "clicked", "bounced", "unsubscribed")
ENTRIES_MODEL = "fct_campaign_entries"
LIFT_MODEL = "fct_campaign_lift"


@dataclass(frozen=True)
class Lift:
    treatment: float | None  # conversion rates
    holdout: float | None
    lift: float | None  # treatment - holdout
    ci_low: float | None  # its 95% interval
    ci_high: float | None

    @property
    def significant(self) -> bool | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0 or self.ci_high < 0


def wilson(conversions: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of conversions / n (n > 0): it stays within [0, 1] and
    keeps a width at 0% and 100%. Written as dbt_project/macros/nudge_wilson.sql."""
    p = conversions / n
    center = p + Z_95 * Z_95 / (2 * n)
    spread = Z_95 * math.sqrt(p * (1 - p) / n + Z_95 * Z_95 / (4 * n * n))
    scale = 1 + Z_95 * Z_95 / n
    low = 0.0 if p == 0 else (center - spread) / scale
    high = 1.0 if p == 1 else (center + spread) / scale
    return low, high


def lift_interval(n_t: int, c_t: int, n_h: int, c_h: int) -> Lift:
    """Conversion per group and the difference of the two proportions with its 95% interval:
    Newcombe's hybrid score interval (method 10 of Newcombe 1998), which, unlike the normal
    approximation, stays within [-1, 1] and has a width even when both rates are 0% or 100%.
    None where a group is empty."""
    p_t = c_t / n_t if n_t else None
    p_h = c_h / n_h if n_h else None
    if p_t is None or p_h is None:
        return Lift(p_t, p_h, None, None, None)
    low_t, high_t = wilson(c_t, n_t)
    low_h, high_h = wilson(c_h, n_h)
    diff = p_t - p_h
    # Each side takes the two groups' Wilson distances that push the difference that way.
    low = diff - math.sqrt((p_t - low_t) * (p_t - low_t) + (high_h - p_h) * (high_h - p_h))
    high = diff + math.sqrt((high_t - p_t) * (high_t - p_t) + (p_h - low_h) * (p_h - low_h))
    return Lift(p_t, p_h, diff, low, high)


def read_entries(wh: Warehouse, relation: str) -> pd.DataFrame:
    """fct_campaign_entries as a frame (`group` renamed `entry_group`: a reserved word)."""
    rows = wh.fetchdicts(
        f'select campaign, entity_id, entered_at, "group" as entry_group, state, reason, '
        f"delivered, opened, clicked, bounced, unsubscribed, converted, converted_at, matured, "
        f"horizon from {wh.relation(relation)}"
    )
    frame = pd.DataFrame(
        rows,
        columns=[
            "campaign", "entity_id", "entered_at", "entry_group", "state", "reason", "delivered",
            "opened", "clicked", "bounced", "unsubscribed", "converted", "converted_at",
            "matured", "horizon",
        ],
    )  # fmt: skip
    for col in (*FUNNEL[3:], "converted", "matured"):
        frame[col] = frame[col].astype("int64")
    return frame


def read_lift(wh: Warehouse, relation: str) -> pd.DataFrame:
    rows = wh.fetchdicts(
        "select campaign, entry_week, entries_treatment, entries_holdout, conversion_treatment, "
        f"conversion_holdout, lift, lift_ci_low, lift_ci_high, significant "
        f"from {wh.relation(relation)} order by campaign, entry_week"
    )
    return pd.DataFrame(
        rows,
        columns=[
            "campaign", "entry_week", "entries_treatment", "entries_holdout",
            "conversion_treatment", "conversion_holdout", "lift", "lift_ci_low", "lift_ci_high",
            "significant",
        ],
    )  # fmt: skip


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def campaign_report(name: str, entries: pd.DataFrame) -> dict[str, Any]:
    """One campaign's funnel and conversion (the keys of `nudge report --json`)."""
    e = entries[entries["campaign"] == name]
    funnel = {
        "entries": len(e),
        "holdout": int((e["entry_group"] == "holdout").sum()),
        "sent": int((e["state"] == "sent").sum()),
        **{k: int(e[k].sum()) for k in FUNNEL[3:]},
    }
    matured = e[(e["matured"] == 1) & e["entry_group"].notna()]
    t = matured[matured["entry_group"] == "treatment"]
    h = matured[matured["entry_group"] == "holdout"]
    lift = lift_interval(len(t), int(t["converted"].sum()), len(h), int(h["converted"].sum()))
    horizon = e["horizon"].max() if len(e) else None
    return {
        "campaign": name,
        **funnel,
        "funnel": funnel,
        "conversion": {
            "treatment": _num(lift.treatment),
            "holdout": _num(lift.holdout),
            "lift": _num(lift.lift),
            "ci_low": _num(lift.ci_low),
            "ci_high": _num(lift.ci_high),
            "significant": lift.significant,
            "matured_treatment": len(t),
            "matured_holdout": len(h),
            "converted_treatment": int(t["converted"].sum()),
            "converted_holdout": int(h["converted"].sum()),
        },
        "as_of": None if horizon is None or pd.isna(horizon) else pd.Timestamp(horizon).isoformat(),
    }


def build_report(campaigns: list[str], entries: pd.DataFrame) -> dict[str, Any]:
    return {"campaigns": [campaign_report(c, entries) for c in campaigns]}
