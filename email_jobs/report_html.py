"""`nudge report --html`: one self-contained page (plotly.js embedded: it renders offline and
behind any firewall) with, per campaign, conversion by entry week per group and the funnel."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import plotly.graph_objects as go

TREATMENT_COLOR = "#2563eb"
HOLDOUT_COLOR = "#9ca3af"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} pts"


def conversion_figure(name: str, lift: pd.DataFrame) -> go.Figure:
    """Grouped bars per entry week (categorical: a single week reads as well as twenty)."""
    weeks = lift[lift["campaign"] == name].sort_values("entry_week")
    labels = [f"week of {w}" for w in weeks["entry_week"].astype(str)]
    fig = go.Figure()
    for group, color, label in (
        ("treatment", TREATMENT_COLOR, "emailed"),
        ("holdout", HOLDOUT_COLOR, "held out (not emailed)"),
    ):
        rates = weeks[f"conversion_{group}"].astype("float64")
        fig.add_trace(
            go.Bar(
                x=labels,
                y=rates,
                name=label,
                marker={"color": color},
                text=[f"{r:.0%}" if pd.notna(r) else "" for r in rates],
                textposition="outside",
                customdata=weeks[f"entries_{group}"],
                hovertemplate="%{x}: %{y:.1%} of %{customdata} entries<extra></extra>",
            )
        )
    fig.update_layout(
        title="Conversion by entry week (matured entries)",
        barmode="group",
        xaxis={"type": "category"},
        yaxis={"tickformat": ".0%", "rangemode": "tozero"},
        height=360,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def funnel_figure(report: dict[str, Any]) -> go.Figure:
    stages = ["entries", "sent", "delivered", "opened", "clicked"]
    fig = go.Figure(
        go.Funnel(
            y=stages,
            x=[report[s] for s in stages],
            textinfo="value+percent initial",
            marker={"color": TREATMENT_COLOR},
        )
    )
    fig.update_layout(title="Funnel", height=360, margin={"l": 90, "r": 20, "t": 50, "b": 30})
    return fig


def render_html(report: dict[str, Any], lift: pd.DataFrame, title: str = "Nudge report") -> str:
    parts: list[str] = []
    first = True
    for c in report["campaigns"]:
        conv = c["conversion"]
        name = html.escape(c["campaign"])
        figures = []
        charts = (conversion_figure(c["campaign"], lift), funnel_figure(c)) if c["entries"] else ()
        for fig in charts:
            figures.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=first,
                    default_width="100%",
                    config={"responsive": True, "displaylogo": False},
                )
            )
            first = False
        verdict = (
            "significant"
            if conv["significant"]
            else "not significant yet"
            if conv["significant"] is not None
            else "no comparison yet"
        )
        parts.append(
            f"""
<section class="campaign" data-campaign="{name}">
  <h2>{name}</h2>
  <div class="kpis">
    <div><b>{_pct(conv["treatment"])}</b><span>emailed converted
      ({conv["converted_treatment"]} of {conv["matured_treatment"]})</span></div>
    <div><b>{_pct(conv["holdout"])}</b><span>held out converted
      ({conv["converted_holdout"]} of {conv["matured_holdout"]})</span></div>
    <div><b>{_points(conv["lift"])}</b><span>lift, 95% CI {_points(conv["ci_low"])} to
      {_points(conv["ci_high"])}: {verdict}</span></div>
    <div><b>{c["entries"]}</b><span>entries, {c["holdout"]} held out, {c["bounced"]} bounced,
      {c["unsubscribed"]} unsubscribed</span></div>
  </div>
  <div class="charts">{
                "".join(f'<div class="chart">{f}</div>' for f in figures)
                or "<p>No entries yet.</p>"
            }</div>
</section>"""
        )
    body = "".join(parts) or "<p>No campaign has entries yet.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #111827; }}
 .kpis {{ display: flex; gap: 1.5rem; flex-wrap: wrap; }}
 .kpis div {{ background: #f3f4f6; padding: .8rem 1rem; border-radius: 8px; min-width: 12rem; }}
 .kpis b {{ display: block; font-size: 1.6rem; }}
 .kpis span {{ color: #4b5563; font-size: .9rem; }}
 /* Fixed columns: plotly sizes each chart when its script runs, before the next one exists. */
 .charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }}
 @media (max-width: 900px) {{ .charts {{ grid-template-columns: 1fr; }} }}
 .chart {{ min-width: 0; }}
</style></head>
<body><h1>{html.escape(title)}</h1>{body}</body></html>
"""
