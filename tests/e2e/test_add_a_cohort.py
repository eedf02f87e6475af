"""Done when: an analyst adds a cohort to a copy of the project (SQL, yml, template; no Python),
and it shows in the Dagster asset graph and mails on the next `nudge run`; the two shipped
playbooks mail the right people in the same data; the drip stops for the member who came back;
`nudge diff-cohort` shows who an edit would add and remove without sending anything. A cohort
whose yml is the contract's block as it stands (no `columns:`) mails too; a template using a
column the built model lacks fails that campaign's evaluation, naming model and variable.

Everything runs as a user would: `nudge run` and `nudge diff-cohort` as processes of the copy,
with the copy first on PYTHONPATH and its own warehouse, landing folder and outbox.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.project_copy import copy_project
from support.scenario import event, write_jsonl

pytestmark = pytest.mark.integration

FIRST_DAY = date(2026, 3, 1)
EVALUATIONS = [date(2026, 3, 10), date(2026, 3, 11), date(2026, 3, 12), date(2026, 3, 13)]
SE, SE2 = "se@vendor.example", "se2@vendor.example"

# -- what the analyst writes ------------------------------------------------------------------

COHORT_SQL = """\
-- Users who called before and made no call in the 3 days before `end`.
{%- set window = nudge_window(3) %}

with

last_call as (

    select user_id, max(activity_date) as last_active_date
    from {{ ref('fct_user_daily_activity') }}
    where activity_date < {{ window.full_end_date }}
    group by user_id

)

select
    users.user_id as entity_id,
    users.email,
    users.first_name,
    last_call.last_active_date

from last_call
inner join {{ ref('dim_users') }} as users on users.user_id = last_call.user_id
where last_call.last_active_date < {{ window.full_start_date }}
"""

# The edit previewed with `nudge diff-cohort`: quiet for a day, after calls in the 4 days before.
EDITED_WHERE = """\
where last_call.last_active_date < {{ window.full_start_date }}
    and last_call.last_active_date >= {{ dbt.dateadd('day', -4, window.full_start_date) }}
"""

COHORT_YML = """\
version: 2
models:
  - name: cohort_gone_quiet_3d
    description: Users who called before and made no call in the last 3 days.
    config:
      meta:
        nudge:
          entity: user
          campaigns:
            - name: gone_quiet
              steps:
                - {template: gone_quiet_day0, delay_days: 0}
                - {template: gone_quiet_day2, delay_days: 2}
              cc: [success@vendor.example]
    columns:
      - name: entity_id
        data_tests: [unique, not_null]
      - name: email
      - name: first_name
      - name: last_active_date
"""

TEMPLATES = {
    "gone_quiet_day0": (
        "We miss you, {{ first_name }}",
        "<html><body><p>Hi {{ first_name }}, your last call was on "
        "{{ last_active_date | date }}.</p><p><a href='{{ unsubscribe_url }}'>Unsubscribe</a>"
        "</p></body></html>",
        "Hi {{ first_name }}, your last call was on {{ last_active_date | date }}.\n"
        "Unsubscribe: {{ unsubscribe_url }}",
    ),
    "gone_quiet_day2": (
        "A few ideas to get going again, {{ first_name }}",
        "<html><body><p>Still quiet since {{ last_active_date | date }}: here are ideas.</p>"
        "<p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p></body></html>",
        "Still quiet since {{ last_active_date | date }}: here are ideas.\n"
        "Unsubscribe: {{ unsubscribe_url }}",
    ),
}


# The contract's block ("A cohort and its campaigns"), copied as it stands: no `columns:`.
CONTRACT_YML = """\
models:
  - name: cohort_too_many_4xx_7d
    config:
      meta:
        nudge:
          entity: user                # or company
          campaigns:
            - name: too_many_4xx_7d   # the campaign id in headers, the ledger and the UI
              template: too_many_4xx_7d   # folder email_jobs/templates/<template>/ with subject.txt, body.html, body.txt (Jinja)
              cooldown_days: 30       # re-entry cooldown, default 30
              baseline_first_run: true    # default true
              max_sends_per_evaluation: 500   # default NUDGE_MAX_SENDS_PER_EVALUATION
"""  # noqa: E501
# ... for a new cohort: its model, campaign and template named anew.
BURST_YML = CONTRACT_YML.replace("cohort_too_many_4xx_7d", "cohort_refused_burst_1d").replace(
    "too_many_4xx_7d", "refused_burst"
)
BURST_SQL = """\
-- Users with at least 100 client errors on the evaluated day.
{%- set window = nudge_window(1) %}

select
    users.user_id as entity_id,
    users.email,
    users.first_name,
    sum(activity.calls_4xx) as refused_calls

from {{ ref('fct_user_daily_activity') }} as activity
inner join {{ ref('dim_users') }} as users on users.user_id = activity.user_id
where activity.activity_date >= {{ window.full_start_date }}
    and activity.activity_date < {{ window.full_end_date }}
group by users.user_id, users.email, users.first_name
having sum(activity.calls_4xx) >= 100
"""
BURST_TEMPLATE = (
    "{{ refused_calls | number }} refused calls today, {{ first_name }}",
    "<html><body><p>Hi {{ first_name }}, {{ refused_calls | number }} of your calls were "
    "refused.</p><p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p></body></html>",
    "Hi {{ first_name }}, {{ refused_calls | number }} of your calls were refused.\n"
    "Unsubscribe: {{ unsubscribe_url }}",
)


def write_template(project: Path, name: str, parts: tuple[str, str, str]) -> None:
    folder = project / "email_jobs" / "templates" / name
    folder.mkdir()
    for file, text in zip(("subject.txt", "body.html", "body.txt"), parts, strict=True):
        (folder / file).write_text(text)


def add_cohort(project: Path) -> None:
    cohorts = project / "dbt_project" / "models" / "cohorts"
    (cohorts / "cohort_gone_quiet_3d.sql").write_text(COHORT_SQL)
    (cohorts / "_gone_quiet.yml").write_text(COHORT_YML)
    for name, parts in TEMPLATES.items():
        write_template(project, name, parts)
    (cohorts / "cohort_refused_burst_1d.sql").write_text(BURST_SQL)
    (cohorts / "_refused_burst.yml").write_text(BURST_YML)
    write_template(project, "refused_burst", BURST_TEMPLATE)


# -- the data -----------------------------------------------------------------------------------


def profile(uid: str, company: str, email_addr: str | None, first: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"first_name": first, "created": "2025-01-01T00:00:00Z"}
    if email_addr:
        meta["email"] = email_addr
    return {
        "user_id": uid,
        "company_id": company,
        "modified_time": "2026-01-01T00:00:00Z",
        "metadata": meta,
    }


def write_profiles(landing: Path) -> None:
    users = [
        profile("u_bg", "c_plain", "bg@plain.example", "Bea"),
        profile("q_stay", "c_plain", "stay@plain.example", "Stella"),
        profile("q_back", "c_plain", "back@plain.example", "Bart"),
        profile("m_user", "c_sec", "dev@sec.example", "Mo"),
        profile("qa1", "c_quota", "qa1@quota.example", "Ann"),
        profile("qa2", "c_quota", "qa2@quota.example", "Ben"),
        profile("qa3", "c_quota", None, "Cy"),
    ]
    write_jsonl(landing / "users" / "users.jsonl", users)
    companies = [
        {
            "company_id": "c_plain",
            "company_domain": "plain.example",
            "modified_time": "2026-01-01T00:00:00Z",
            "metadata": {},
        },
        {
            "company_id": "c_sec",
            "company_domain": "sec.example",
            "modified_time": "2026-01-01T00:00:00Z",
            "metadata": {
                "plan": "enterprise",
                "security_contact_email": "sec@sec.example",
                "solutions_engineer_email": SE,
            },
        },
        {
            "company_id": "c_quota",
            "company_domain": "quota.example",
            "modified_time": "2026-01-01T00:00:00Z",
            "metadata": {
                "plan": "starter",
                "quota_calls_per_month": 1000,
                "solutions_engineer_email": SE2,
            },
        },
    ]
    write_jsonl(landing / "companies" / "companies.jsonl", companies)


def calls(user_id: str, day: date, n: int, status: int = 200) -> list[dict[str, Any]]:
    start = datetime.combine(day, datetime.min.time()) + timedelta(hours=1)
    return [event(user_id, start + timedelta(seconds=15 * i), status) for i in range(n)]


def land_day(landing: Path, day: date) -> None:
    rows = calls("u_bg", day, 24)
    if day <= date(2026, 3, 8) or day == date(2026, 3, 12):
        rows += calls("q_back", day, 5)  # quiet from 03-09, back on 03-12
    if day <= date(2026, 3, 8):
        rows += calls("q_stay", day, 5)  # quiet from 03-09 for good
    # c_quota: 700 of its 1000 calls by 03-10, 850 (85%) on 03-11, 1050 on 03-12.
    quota_calls = {date(2026, 3, 11): 150, date(2026, 3, 12): 200}.get(day, 70)
    rows += calls("qa1", day, quota_calls if day <= date(2026, 3, 12) else 0)
    if day == date(2026, 3, 11):
        rows += calls("m_user", day, 1000, 401)  # a burst of refused calls
    write_jsonl(landing / "events" / f"dt={day.isoformat()}" / "part-0.jsonl", rows)


# -- running the copy ---------------------------------------------------------------------------


@dataclass
class Copy:
    root: Path
    env: dict[str, str]
    outbox: Path
    warehouse: Path
    landing: Path

    def nudge(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "nudge.app.cli", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        said = f"nudge {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        assert (proc.returncode == 0) == ok, said
        return proc

    def python(self, code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stdout

    def messages(self) -> dict[tuple[str, str, str], email.message.EmailMessage]:
        """(campaign, entity, step) -> the message, from the ledger key header."""
        found = {}
        for path in sorted(self.outbox.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            step = str(msg["X-Nudge-Key"]).rsplit("|", 1)[1]
            key = (str(msg["X-Nudge-Campaign"]), str(msg["X-Nudge-Entity"]), step)
            assert key not in found, f"sent twice: {key}"
            found[key] = msg
        return found

    def query(self, sql: str) -> list[list[Any]]:
        import duckdb

        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return json.loads(json.dumps(con.execute(sql).fetchall(), default=str))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copy]:
    tmp = tmp_path_factory.mktemp("analyst")
    root = tmp / "nudge"
    copy_project(root)
    add_cohort(root)
    landing = tmp / "landing"
    write_profiles(landing)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUDGE_", "DAGSTER_"))}
    env.update(
        PYTHONPATH=str(root),
        NUDGE_LANDING_DIR=str(landing),
        NUDGE_WAREHOUSE=f"duckdb:///{tmp / 'wh.duckdb'}",
        NUDGE_EMAIL_BACKEND="outbox",
        NUDGE_OUTBOX_DIR=str(tmp / "outbox"),
        DAGSTER_HOME=str(tmp / "dagster_home"),
        # The shipped playbooks ship disabled; the operator turns them on without editing yml.
        NUDGE_ENABLED_CAMPAIGNS="api_misuse,quota_80pct,quota_100pct",
    )
    yield Copy(root, env, tmp / "outbox", tmp / "wh.duckdb", landing)


Sent = tuple[str, str, str]
EXPECTED: dict[date, set[Sent]] = {
    date(2026, 3, 10): set(),  # every campaign's baseline
    date(2026, 3, 11): {
        ("gone_quiet", "q_stay", "0"),
        ("gone_quiet", "q_back", "0"),
        ("api_misuse", "c_sec", "0"),
        ("quota_80pct", "c_quota", "0"),
        ("refused_burst", "m_user", "0"),  # the contract's yml block, no `columns:`
    },
    date(2026, 3, 12): {("quota_100pct", "c_quota", "0")},  # q_back called again: it left
    date(2026, 3, 13): {("gone_quiet", "q_stay", "1")},  # day 2 of the drip, q_stay only
}


@pytest.fixture(scope="module")
def runs(project: Copy) -> dict[date, set[Sent]]:
    """`nudge run` of the copy at each evaluation day, landing that day's dump first; what each
    run added to the outbox."""
    added: dict[date, set[Sent]] = {}
    seen: set[Sent] = set()
    day = FIRST_DAY
    for evaluation in EVALUATIONS:
        while day <= evaluation:
            land_day(project.landing, day)
            day += timedelta(days=1)
        project.nudge("run", "--as-of", evaluation.isoformat())
        now = set(project.messages())
        added[evaluation] = now - seen
        seen = now
    return added


def test_new_cohort_is_in_the_dagster_asset_graph(project: Copy, runs) -> None:
    graph = json.loads(
        project.python(
            "import json\n"
            "from orchestration.definitions import defs\n"
            "g = defs().resolve_asset_graph()\n"
            "parents = {'/'.join(k.path): sorted('/'.join(p.path) for p in g.get(k).parent_keys)"
            " for k in g.get_all_asset_keys()}\n"
            "print(json.dumps(parents))"
        )
    )
    cohort = [k for k in graph if k.endswith("cohort_gone_quiet_3d")]
    assert len(cohort) == 1, sorted(graph)
    assert cohort[0] in graph["evaluations/gone_quiet"]
    assert graph["sends/gone_quiet"] == ["evaluations/gone_quiet"]
    for playbook in ("api_misuse", "quota_80pct", "quota_100pct"):
        assert f"sends/{playbook}" in graph


def test_emails_of_each_run(runs) -> None:
    assert runs == EXPECTED


def test_new_cohort_emails_use_its_templates_and_fixed_cc(project: Copy, runs) -> None:
    msgs = project.messages()
    first, second = msgs[("gone_quiet", "q_stay", "0")], msgs[("gone_quiet", "q_stay", "1")]
    assert str(first["To"]) == "stay@plain.example"
    assert str(first["Cc"]) == "success@vendor.example"
    assert str(first["Subject"]) == "We miss you, Stella"
    assert "your last call was on March 8, 2026" in first.get_body(("plain",)).get_content()
    assert str(second["Subject"]) == "A few ideas to get going again, Stella"
    assert ("gone_quiet", "q_back", "1") not in msgs  # it came back on 03-12: the drip stopped


def test_api_misuse_goes_to_the_security_contact_with_the_se_in_cc(project: Copy, runs) -> None:
    msg = project.messages()[("api_misuse", "c_sec", "0")]
    assert (str(msg["To"]), str(msg["Cc"])) == ("sec@sec.example", SE)
    text = msg.get_body(("plain",)).get_content()
    assert "1,000 requests to Acme API from sec.example were refused" in text
    assert "dev@sec.example (m_user): 1,000 refused" in text


def test_quota_emails_go_to_every_user_of_the_company(project: Copy, runs) -> None:
    msgs = project.messages()
    warning, reached = msgs[("quota_80pct", "c_quota", "0")], msgs[("quota_100pct", "c_quota", "0")]
    for msg in (warning, reached):
        assert str(msg["To"]) == "qa1@quota.example, qa2@quota.example"  # qa3 has no address
        assert str(msg["Cc"]) == SE2
    assert str(warning["Subject"]) == "You've used 85% of your Acme API quota for March"
    assert str(reached["Subject"]) == "You've reached your Acme API quota for March"
    assert "Hi Ann and Ben," in reached.get_body(("plain",)).get_content()
    # One ledger row per company and campaign.
    rows = project.query(
        "select campaign, count(*) from nudge.send_ledger where entity_id = 'c_quota' group by 1"
    )
    assert sorted(rows) == [["quota_100pct", 1], ["quota_80pct", 1]]


def test_diff_cohort_shows_who_an_edit_adds_and_removes_and_sends_nothing(
    project: Copy, runs
) -> None:
    sql = project.root / "dbt_project" / "models" / "cohorts" / "cohort_gone_quiet_3d.sql"
    manifest = project.root / "dbt_project" / "target" / "manifest.json"
    before = {
        "outbox": sorted(p.name for p in project.outbox.glob("*.eml")),
        "ledger": project.query("select * from nudge.send_ledger order by ledger_key"),
        "membership": project.query("select count(*) from nudge.cohort_membership"),
        "live": project.query("select entity_id from analytics.cohort_gone_quiet_3d"),
        "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
    }
    sql.write_text(
        COHORT_SQL.replace("nudge_window(3)", "nudge_window(1)").replace(
            "where last_call.last_active_date < {{ window.full_start_date }}\n", EDITED_WHERE
        )
    )
    out = project.nudge("diff-cohort", "cohort_gone_quiet_3d").stdout.splitlines()
    assert out[0].startswith(
        "cohort cohort_gone_quiet_3d at 2026-03-14T00:00:00Z: 1 member(s) now (the membership "
        "recorded by campaign gone_quiet), 3 with the edited SQL"
    ), out
    assert out[1:] == [
        "would enter: 3",
        "  + m_user <dev@sec.example>",
        "  + q_back <back@plain.example>",
        "  + qa1 <qa1@quota.example>",
        "would exit: 1",
        "  - q_stay <stay@plain.example>",
    ]
    after = {
        "outbox": sorted(p.name for p in project.outbox.glob("*.eml")),
        "ledger": project.query("select * from nudge.send_ledger order by ledger_key"),
        "membership": project.query("select count(*) from nudge.cohort_membership"),
        "live": project.query("select entity_id from analytics.cohort_gone_quiet_3d"),
        "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
    }
    assert after == before
    assert project.query(
        "select count(*) from information_schema.tables where table_name like '%__shadow'"
    ) == [[0]]


def test_the_contract_yml_block_mails_with_its_template(project: Copy, runs) -> None:
    msg = project.messages()[("refused_burst", "m_user", "0")]
    assert (str(msg["To"]), str(msg["Subject"])) == (
        "dev@sec.example",
        "1,000 refused calls today, Mo",
    )


def test_a_template_variable_the_built_model_lacks_fails_that_campaign_only(
    project: Copy, runs
) -> None:
    """A second campaign on the no-`columns:` cohort whose template reads a column the model
    does not build: its evaluation fails naming model and variable, and records and sends
    nothing; the cohort's other campaign is evaluated. Last in this file: it edits the copy."""
    yml = project.root / "dbt_project" / "models" / "cohorts" / "_refused_burst.yml"
    yml.write_text(
        yml.read_text()
        + "            - name: refused_burst_colour\n"
        + "              baseline_first_run: false\n"  # it would mail at its first run
    )
    write_template(
        project.root,
        "refused_burst_colour",
        ("Your colour: {{ favourite_colour }}", "<p>{{ first_name }}</p>", "{{ first_name }}"),
    )
    day = date(2026, 3, 14)
    land_day(project.landing, day)
    burst = calls("q_stay", day, 150, 404)  # q_stay enters the cohort
    write_jsonl(project.landing / "events" / f"dt={day.isoformat()}" / "part-1.jsonl", burst)
    before = set(project.messages())

    run = project.nudge("run", "--as-of", day.isoformat(), ok=False)

    out = run.stdout + run.stderr
    assert (
        "model 'cohort_refused_burst_1d' (models/cohorts/_refused_burst.yml), campaign "
        "'refused_burst_colour': template 'refused_burst_colour' uses favourite_colour, which "
        "the built model 'cohort_refused_burst_1d' does not have among its columns" in out
    ), out
    ledger = project.query(
        "select campaign, entity_id from nudge.send_ledger where campaign like 'refused_burst%'"
    )
    assert sorted(ledger) == [["refused_burst", "m_user"], ["refused_burst", "q_stay"]]
    assert project.query(
        "select count(*) from nudge.cohort_membership where campaign = 'refused_burst_colour'"
    ) == [[0]]
    assert set(project.messages()) == before  # the evaluation failed: this run sent nothing
