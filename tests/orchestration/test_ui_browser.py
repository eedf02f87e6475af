"""The Dagster UI on this repo's workspace.yaml, as `nudge ui` serves it: what the webserver
reports over GraphQL, and the asset lineage a person sees in a real (headless) Chromium.

The expected assets come from the dbt manifest (every model) and the campaigns declared in it,
so a new cohort shows up here without editing the test.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from email_jobs.template_columns import load_campaigns
from nudge.core.dbt_project import MANIFEST
from tests.support.dagster_web import REPO_ROOT, dagster_webserver, graphql

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # the browser test says why it skips (or fails, on CI)
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
SEED_CAMPAIGNS = {"not_activated_7d", "too_many_4xx_7d"}
RAW_ASSETS = {("raw", "events"), ("raw", "users"), ("raw", "companies")}
DBT_GROUPS = {"staging", "intermediate", "marts", "cohorts", "goals"}

WORKSPACE_QUERY = """
query NudgeWorkspace {
  workspaceOrError {
    __typename
    ... on PythonError { message stack }
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
          ... on RepositoryLocation {
            repositories {
              name
              jobs { name isAssetJob }
              schedules { name cronSchedule pipelineName executionTimezone }
              sensors { name sensorType }
              assetNodes {
                assetKey { path }
                groupName
                dependencyKeys { path }
                jobNames
                assetChecksOrError {
                  __typename
                  ... on AssetChecks { checks { name } }
                }
              }
            }
          }
        }
      }
    }
  }
}
"""

Key = tuple[str, ...]


@pytest.fixture(scope="module")
def manifest(dbt_manifest: None) -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def webserver(dbt_manifest: None) -> Iterator[str]:
    with dagster_webserver() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def repository(webserver: str) -> dict[str, Any]:
    """The `nudge` location's one repository, failing with the load error when it did not load."""
    workspace = graphql(webserver, WORKSPACE_QUERY)["workspaceOrError"]
    assert workspace["__typename"] == "Workspace", workspace
    entries = {e["name"]: e for e in workspace["locationEntries"]}
    assert set(entries) == {"nudge"}, f"workspace.yaml should load one location: {set(entries)}"
    location = entries["nudge"]
    assert location["loadStatus"] == "LOADED"
    loaded = location["locationOrLoadError"]
    if loaded["__typename"] != "RepositoryLocation":
        stack = "".join(loaded.get("stack") or [])
        pytest.fail(f"code location nudge failed to load: {loaded.get('message')}\n{stack}")
    repositories = loaded["repositories"]
    assert len(repositories) == 1, [r["name"] for r in repositories]
    return repositories[0]


def _nodes(repository: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {tuple(n["assetKey"]["path"]): n for n in repository["assetNodes"]}


def _dbt_models(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}


def _key_of_model(nodes: dict[Key, dict[str, Any]], model: str) -> Key:
    matches = [k for k in nodes if k[-1] == model]
    assert len(matches) == 1, f"dbt model {model}: expected one asset, found {matches}"
    return matches[0]


def _upstream(nodes: dict[Key, dict[str, Any]], key: Key) -> set[Key]:
    seen: set[Key] = set()
    todo = [key]
    while todo:
        for dep in nodes[todo.pop()]["dependencyKeys"]:
            dep_key = tuple(dep["path"])
            if dep_key not in seen:
                seen.add(dep_key)
                todo.append(dep_key)
    return seen


# --------------------------------------------------------------------------- GraphQL


@pytest.mark.integration
def test_webserver_serves_the_whole_pipeline(
    repository: dict[str, Any], manifest: dict[str, Any]
) -> None:
    nodes = _nodes(repository)
    models = _dbt_models(manifest)
    campaigns = {c.name: c for c in load_campaigns(manifest)}
    assert SEED_CAMPAIGNS <= set(campaigns), f"seed campaigns missing: {set(campaigns)}"

    # Every asset, in its group: raw tables, every dbt model, and per campaign its evaluation
    # and its sends; the delivery events; the other `nudge` tables the outcome models read (the
    # state_copy step's assets, under their dbt sources' keys); nothing else.
    model_keys = {_key_of_model(nodes, m): m for m in models}
    nudge_sources = {
        ("nudge", s["name"]) for s in manifest["sources"].values() if s["source_name"] == "nudge"
    }
    assert ("nudge", "send_ledger") in nudge_sources
    events = ("email_events",)  # the source nudge.email_events is this asset
    expected = (
        RAW_ASSETS
        | set(model_keys)
        | (nudge_sources - {("nudge", "email_events")})
        | {events}
        | {("evaluations", c) for c in campaigns}
        | {("sends", c) for c in campaigns}
    )
    assert set(nodes) == expected, (
        f"unexpected: {sorted(set(nodes) - expected)}, missing: {sorted(expected - set(nodes))}"
    )
    for key in RAW_ASSETS:
        assert nodes[key]["groupName"] == "ingest", key
    for key, model in model_keys.items():
        # The outcome models sit with the sends they follow; every other model in its folder.
        outcome = "nudge_outcomes" in (models[model].get("tags") or [])
        assert nodes[key]["groupName"] == ("email" if outcome else models[model]["fqn"][1]), key
    assert {nodes[k]["groupName"] for k in model_keys} == DBT_GROUPS | {"email"}
    for name in campaigns:
        assert nodes[("evaluations", name)]["groupName"] == "email"
        assert nodes[("sends", name)]["groupName"] == "email"

    # The lineage: raw -> dbt -> cohort -> evaluation -> sends, per campaign.
    for name, campaign in campaigns.items():
        cohort_key = _key_of_model(nodes, campaign.cohort)
        upstream_of_sends = _upstream(nodes, ("sends", name))
        assert ("evaluations", name) in upstream_of_sends
        assert cohort_key in _upstream(nodes, ("evaluations", name))
        assert upstream_of_sends & RAW_ASSETS, f"sends/{name} does not trace back to raw/*"
    assert ("raw", "events") in _upstream(nodes, ("sends", "too_many_4xx_7d"))
    # Did it work: every campaign's sends -> email_events -> the entries -> the lift.
    entries = _key_of_model(nodes, "fct_campaign_entries")
    lift = _key_of_model(nodes, "fct_campaign_lift")
    assert nodes[events]["groupName"] == "email"
    assert {tuple(d["path"]) for d in nodes[events]["dependencyKeys"]} == {
        ("sends", c) for c in campaigns
    }
    assert events in {tuple(d["path"]) for d in nodes[entries]["dependencyKeys"]}
    assert entries in {tuple(d["path"]) for d in nodes[lift]["dependencyKeys"]}

    # Asset checks: every dbt test on a model, the guards and the unknown-sends check.
    checks = {}
    for key, node in nodes.items():
        result = node["assetChecksOrError"]
        assert result["__typename"] == "AssetChecks", (key, result)
        checks[key] = {c["name"] for c in result["checks"]}
    for test in manifest["nodes"].values():
        attached = test.get("attached_node")
        if test["resource_type"] == "test" and attached in manifest["nodes"]:
            model_key = _key_of_model(nodes, manifest["nodes"][attached]["name"])
            assert test["name"] in checks[model_key], f"dbt test {test['name']} not a check"
    for name in campaigns:
        assert "guards" in checks[("evaluations", name)]
        assert "no_unknown_sends" in checks[("sends", name)]

    # Jobs, the schedule and the sensors.
    jobs = {j["name"]: j for j in repository["jobs"]}
    assert {"nudge_evaluate", "nudge_send"} <= set(jobs)
    assert jobs["nudge_evaluate"]["isAssetJob"] and jobs["nudge_send"]["isAssetJob"]
    for name in campaigns:
        assert "nudge_evaluate" in nodes[("evaluations", name)]["jobNames"]
        assert "nudge_send" in nodes[("sends", name)]["jobNames"]
        assert "nudge_send" not in nodes[("evaluations", name)]["jobNames"]
    schedules = {s["name"]: s for s in repository["schedules"]}
    assert set(schedules) == {"nudge_daily"}
    assert schedules["nudge_daily"]["pipelineName"] == "nudge_evaluate"
    assert schedules["nudge_daily"]["executionTimezone"] == "UTC"
    sensors = {s["name"]: s for s in repository["sensors"]}
    assert {"landing_files", "send_after_evaluation", "record_run_failures"} <= set(sensors)
    assert sensors["send_after_evaluation"]["sensorType"] == "RUN_STATUS"


# --------------------------------------------------------------------------- browser


def _require_browser() -> None:
    """Skip with the reason when Chromium or Playwright is missing; on CI that is a failure."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if sync_playwright is None:
        missing.append(
            "the playwright Python package (pip install playwright; no browser download)"
        )
    if not missing:
        return
    reason = "browser test needs " + " and ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: CI must run the browser tests")
    pytest.skip(reason)


def _path_between(nodes: dict[Key, dict[str, Any]], start: Key, end: Key) -> tuple[set[Key], int]:
    """The assets on every path from start to end, and the dependency edges among them."""
    on_path = {
        k for k in _upstream(nodes, end) | {end} if k == start or start in _upstream(nodes, k)
    }
    edges = sum(
        1
        for key in on_path
        for dep in nodes[key]["dependencyKeys"]
        if tuple(dep["path"]) in on_path
    )
    return on_path, edges


# True once the graph's zoom transform has been the same for 10 animation frames in a row.
_ZOOM_SETTLED = """() => {
  const el = document.querySelector("[data-svg-viewport] > div");
  const now = el ? el.style.transform : "";
  const s = (window.__nudgeZoom ??= { last: null, same: 0 });
  s.same = now && now === s.last ? s.same + 1 : 0;
  s.last = now;
  return s.same >= 10;
}"""


def _open_lineage(page: Page, base_url: str, selection: str) -> None:
    """The global asset lineage filtered by `selection`, every group expanded, as a person gets
    there: the Lineage page, the selection typed into its search box, then ⌥E."""
    # On a fresh instance the UI greets with a "Join the Dagster community" dialog over the page;
    # mark it seen, as its Skip button does.
    assert graphql(base_url, "mutation { setNuxSeen }")["setNuxSeen"] is True
    page.goto(f"{base_url}/asset-groups")
    expect(page.get_by_text("Global asset lineage").first).to_be_visible()
    page.locator(".CodeMirror").first.click()  # the search box is a CodeMirror editor
    search = page.get_by_label("Search and filter assets")
    search.press_sequentially(selection)
    search.press("Enter")
    expect(page.locator("[data-svg-viewport] foreignObject")).not_to_have_count(0)
    page.keyboard.press("Alt+KeyE")  # groups start collapsed; ⌥E expands them all


def _wait_for_zoom_to_settle(page: Page) -> None:
    # A new layout (the filter, the expanded groups) is zoomed to fit the view: wait until that
    # zoom has held still before reading what is on screen.
    page.wait_for_function(_ZOOM_SETTLED, polling="raf")


def _read_labels(texts: list[str], known: set[str]) -> Counter[str]:
    """The node labels drawn, each resolved to the one known label it shows: zoomed out, the UI
    shortens a long label in the middle (`cohort_too…4xx_7d`)."""
    drawn: Counter[str] = Counter()
    for text in (t.strip() for t in texts):
        if "…" in text:
            head, tail = text.split("…", 1)
            fits = {
                k
                for k in known
                if k.startswith(head) and k.endswith(tail) and len(k) > len(text) - 1
            }
        else:
            fits = {text} & known
        assert len(fits) == 1, f"graph label {text!r} matches {sorted(fits) or 'no asset'}"
        drawn[fits.pop()] += 1
    return drawn


@pytest.mark.browser
@pytest.mark.integration
def test_asset_lineage_is_drawn_from_raw_events_to_sends(
    webserver: str, repository: dict[str, Any]
) -> None:
    _require_browser()
    start, end = ("raw", "events"), ("sends", "too_many_4xx_7d")
    nodes = _nodes(repository)
    on_path, edge_count = _path_between(nodes, start, end)
    labels = Counter(key[-1] for key in on_path)  # a node shows the last part of its key
    # The path a person expects to see, whatever else the models add to it.
    for label in ("events", "stg_moesif__events", "cohort_too_many_4xx_7d"):
        assert label in labels, f"{label} not on the lineage {start} -> {end}: {sorted(labels)}"
    assert labels["too_many_4xx_7d"] == 2  # evaluations/ and sends/

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "asset_graph.png"
    expect.set_options(timeout=30_000)
    with tempfile.TemporaryDirectory(prefix="nudge-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1920, "height": 1080},
        )
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            _open_lineage(page, webserver, f'key:"{"/".join(start)}"+ and +key:"{"/".join(end)}"')
            names = page.locator("[data-svg-viewport] foreignObject [class*='AssetNode_assetName']")
            expect(names).to_have_count(len(on_path))
            edges = page.locator(
                "[data-svg-viewport] path[marker-end][stroke^='var(--color-lineage-edge']"
            )
            expect(edges).to_have_count(edge_count)
            _wait_for_zoom_to_settle(page)
            for i in range(len(on_path)):
                expect(names.nth(i)).to_be_in_viewport()
            assert _read_labels(names.all_inner_texts(), set(labels)) == labels
            page.screenshot(path=str(screenshot))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "asset_graph.failure.png"))
            raise
        finally:
            context.close()
    assert screenshot.stat().st_size > 10_000
