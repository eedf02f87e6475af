"""Campaigns as analysts declare them in a cohort model's yml (`config.meta.nudge`).

This module reads the yml; `email_jobs.template_columns` (above it and `render`) loads the
campaigns with their templates checked against the cohort's columns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from email_jobs.addresses import normalize_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One email of a drip: `template`, sent `delay_days` after the entry (step 0 at entry)."""

    template: str
    delay_days: float = 0


@dataclass(frozen=True)
class Goal:
    """What counts as the campaign working for an entry (contract, "Holdouts and goals").

    `model` names a dbt model with `entity_id, converted_at` (its `relation`, resolved from the
    manifest); None is the default goal: the member left the cohort. An entry converted when the
    first conversion after its instant is at most `within_days` after it."""

    model: str | None = None
    within_days: float = 14
    relation: str = ""

    @property
    def exit(self) -> bool:
        return self.model is None


@dataclass(frozen=True)
class Campaign:
    name: str  # campaign id: headers, ledger, UI
    cohort: str  # dbt model name, e.g. cohort_too_many_4xx_7d
    relation_name: str  # dbt relation_name of the cohort model
    entity: Literal["user", "company"]
    template: str  # folder under email_jobs/templates/
    cooldown_days: float = 30
    baseline_first_run: bool = True
    max_sends_per_evaluation: int | None = None  # None: NUDGE_MAX_SENDS_PER_EVALUATION
    max_entry_share: float | None = None  # None: NUDGE_MAX_ENTRY_SHARE
    cc: tuple[str, ...] = ()  # fixed CC addresses (a `cc` column adds more per member)
    bcc: tuple[str, ...] = ()
    cc_columns: tuple[str, ...] = ()  # cohort columns whose addresses are CC'd (besides `cc`)
    bcc_columns: tuple[str, ...] = ()
    # Who the email goes to: the row's `email` column, or (company cohorts) every user of the
    # company with an address, read from `contacts_relation` (dim_users) at evaluation.
    recipients: Literal["column", "users"] = "column"
    contacts_relation: str = ""
    steps: tuple[Step, ...] = ()  # a drip; () is a single email (template) at entry
    unsubscribe_group_id: int | None = None
    on_unknown: Literal["hold", "resend"] = "hold"
    # Columns declared in the cohort's yml; () when it declares none (the contract's yml needs
    # no `columns:`): the templates are then checked against the built model at evaluation.
    columns: tuple[str, ...] = ()
    # A disabled campaign evaluates and sends nothing. `enabled_by` says who decided: the yml
    # (`enabled`, default true) or the operator's ENABLED_CAMPAIGNS_ENV over a yml `false`.
    enabled: bool = True
    enabled_by: str = "yml"
    description: str = ""
    # The share of entries held out as a control group (skipped(holdout)), and the goal the
    # report measures conversion by.
    holdout_share: float = 0
    goal: Goal = field(default_factory=Goal)
    dbt_unique_id: str = ""
    # "model 'cohort_x' (models/cohorts/x.yml)", for error messages
    declared_at: str = field(default="", compare=False)
    extra: dict = field(default_factory=dict, hash=False, compare=False)


# --------------------------------------------------------------------------- loading

ENTITIES = ("user", "company")
REQUIRED_COLUMNS = ("entity_id", "email")
ON_UNKNOWN = ("hold", "resend")
RECIPIENTS = ("column", "users")
CONTACTS_MODEL = "dim_users"  # `recipients: users` reads a company's users from here
# Keys of a campaign entry with a meaning here; any other key is kept in Campaign.extra.
KNOWN_KEYS = frozenset(
    {
        "name",
        "template",
        "cooldown_days",
        "baseline_first_run",
        "max_sends_per_evaluation",
        "max_entry_share",
        "cc",
        "bcc",
        "unsubscribe_group_id",
        "on_unknown",
        "description",
        "steps",
        "recipients",
        "enabled",
        "holdout_share",
        "goal",
    }
)
MAX_HOLDOUT_SHARE = 0.5  # more than half held out would starve the campaign it measures
# The operator's switch: campaigns turned on over their yml's `enabled: false`.
ENABLED_CAMPAIGNS_ENV = "NUDGE_ENABLED_CAMPAIGNS"
# The operator's holdout override: `campaign=share,...` over the yml's holdout_share.
HOLDOUT_SHARES_ENV = "NUDGE_HOLDOUT_SHARES"


class CampaignError(Exception):
    """A cohort's `meta.nudge` block is wrong; the message names the model, its file and what."""


def _nudge_meta(node: dict[str, Any]) -> Any:
    config_meta = (node.get("config") or {}).get("meta") or {}
    if "nudge" in config_meta:
        return config_meta["nudge"]
    return (node.get("meta") or {}).get("nudge")


def _where(node: dict[str, Any]) -> str:
    path = node.get("patch_path") or node.get("original_file_path") or ""
    path = path.split("://", 1)[-1]
    return f"model {node.get('name')!r}" + (f" ({path})" if path else "")


def _number(
    value: Any,
    key: str,
    where: str,
    *,
    integer: bool = False,
    minimum: float = 0,
    maximum: float | None = None,
) -> Any:
    # bool is an int in Python; `cooldown_days: true` is a typo, not 1.
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "a whole number" if integer else "a number"
        raise CampaignError(f"{where}: {key} must be {kind}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise CampaignError(f"{where}: {key} must be {bound}, got {value!r}")
    return value


def _addresses(
    value: Any, key: str, where: str, columns: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fixed addresses, column names) of a `cc`/`bcc` entry: a value with an @ is an address,
    any other is a column of the cohort whose value(s) are added per member (checked here
    against the declared columns, or at evaluation against the built model's)."""
    if value is None:
        return (), ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CampaignError(f"{where}: {key} must be an address, a column name, or a list of them")
    addresses: list[str] = []
    cols: list[str] = []
    for item in (v.strip() for v in value if v.strip()):
        if "@" in item:
            if normalize_address(item) is None:
                raise CampaignError(f"{where}: {key} address {item!r} is not a valid address")
            addresses.append(item)
        elif item in columns or not columns:
            cols.append(item)
        else:
            raise CampaignError(
                f"{where}: {key} entry {item!r} is neither an address nor a column of the model "
                f"(declared: {', '.join(columns) or 'none'})"
            )
    return tuple(addresses), tuple(cols)


def _steps(entry: dict[str, Any], where: str) -> tuple[Step, ...]:
    raw = entry.get("steps")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise CampaignError(
            f"{where}: steps must be a non-empty list of {{template, delay_days}} mappings"
        )
    steps: list[Step] = []
    for i, item in enumerate(raw):
        at = f"{where}, steps[{i}]"
        if not isinstance(item, dict):
            raise CampaignError(f"{at}: must be a mapping with template and delay_days")
        unknown = set(item) - {"template", "delay_days"}
        if unknown:
            raise CampaignError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        template = item.get("template")
        if not isinstance(template, str) or not template.strip():
            raise CampaignError(f"{at}: template must be a folder name, got {template!r}")
        if "delay_days" not in item:
            raise CampaignError(f"{at}: delay_days is missing (days after the entry)")
        delay = _number(item["delay_days"], "delay_days", at)
        if i == 0 and delay != 0:
            raise CampaignError(f"{at}: the first step is sent at entry: delay_days must be 0")
        if steps and delay <= steps[-1].delay_days:
            raise CampaignError(
                f"{at}: delay_days {delay:g} must be greater than the previous step's "
                f"{steps[-1].delay_days:g}"
            )
        steps.append(Step(template=template.strip(), delay_days=delay))
    template = entry.get("template")
    if template is not None and template != steps[0].template:
        raise CampaignError(
            f"{where}: template {template!r} differs from steps[0].template "
            f"{steps[0].template!r}; with steps, leave template out"
        )
    return tuple(steps)


def _campaign(
    node: dict[str, Any],
    entity: str,
    columns: tuple[str, ...],
    entry: Any,
    where: str,
    recipients: str,
    contacts_relation: str,
) -> Campaign:
    if not isinstance(entry, dict):
        raise CampaignError(f"{where}: each entry of meta.nudge.campaigns must be a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CampaignError(f"{where}: a campaign has no name (meta.nudge.campaigns[].name)")
    if "|" in name or "@" in name:
        raise CampaignError(f"{where}: campaign name {name!r} may not contain '|' or '@'")
    where = f"{where}, campaign {name!r}"
    steps = _steps(entry, where)
    template = steps[0].template if steps else entry.get("template", name)
    if not isinstance(template, str) or not template.strip():
        raise CampaignError(f"{where}: template must be a folder name, got {template!r}")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise CampaignError(f"{where}: enabled must be true or false, got {enabled!r}")
    baseline = entry.get("baseline_first_run", True)
    if not isinstance(baseline, bool):
        raise CampaignError(f"{where}: baseline_first_run must be true or false, got {baseline!r}")
    on_unknown = entry.get("on_unknown", "hold")
    if on_unknown not in ON_UNKNOWN:
        raise CampaignError(f"{where}: on_unknown must be 'hold' or 'resend', got {on_unknown!r}")
    max_sends = entry.get("max_sends_per_evaluation")
    max_share = entry.get("max_entry_share")
    group = entry.get("unsubscribe_group_id")
    description = entry.get("description", node.get("description") or "")
    recipients = entry.get("recipients", recipients)
    _check_recipients(recipients, entity, contacts_relation, where)
    cc, cc_columns = _addresses(entry.get("cc"), "cc", where, columns)
    bcc, bcc_columns = _addresses(entry.get("bcc"), "bcc", where, columns)
    return Campaign(
        name=name,
        cohort=node["name"],
        relation_name=node["relation_name"],
        entity=entity,  # type: ignore[arg-type]
        template=template,
        cooldown_days=_number(entry.get("cooldown_days", 30), "cooldown_days", where),
        baseline_first_run=baseline,
        max_sends_per_evaluation=None
        if max_sends is None
        else _number(max_sends, "max_sends_per_evaluation", where, integer=True),
        max_entry_share=None
        if max_share is None
        else _number(max_share, "max_entry_share", where, maximum=1),
        cc=cc,
        bcc=bcc,
        cc_columns=cc_columns,
        bcc_columns=bcc_columns,
        recipients=recipients,
        contacts_relation=contacts_relation if recipients == "users" else "",
        steps=steps,
        unsubscribe_group_id=None
        if group is None
        else _number(group, "unsubscribe_group_id", where, integer=True),
        on_unknown=on_unknown,
        columns=columns,
        enabled=enabled,
        description=str(description),
        holdout_share=_number(
            entry.get("holdout_share", 0), "holdout_share", where, maximum=MAX_HOLDOUT_SHARE
        ),
        goal=_goal(entry.get("goal"), where),
        dbt_unique_id=node.get("unique_id", ""),
        declared_at=_where(node),
        extra={k: v for k, v in entry.items() if k not in KNOWN_KEYS},
    )


GOAL_KEYS = frozenset({"model", "exit", "within_days"})
DEFAULT_GOAL_DAYS = 14


def _goal(raw: Any, where: str) -> Goal:
    """`goal: {model: <dbt model>, within_days: N}` or `{exit: true, within_days: N}`; absent:
    the member left the cohort within 14 days. The model's relation is resolved by
    `resolve_goals` once every node is known."""
    if raw is None:
        return Goal()
    if not isinstance(raw, dict):
        raise CampaignError(
            f"{where}: goal must be a mapping {{model: <dbt model>, within_days: N}} or "
            f"{{exit: true, within_days: N}}, got {raw!r}"
        )
    unknown = set(raw) - GOAL_KEYS
    if unknown:
        raise CampaignError(
            f"{where}: goal has unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            "(allowed: model, exit, within_days)"
        )
    days = _number(raw.get("within_days", DEFAULT_GOAL_DAYS), "goal.within_days", where)
    if days <= 0:
        raise CampaignError(f"{where}: goal.within_days must be more than 0, got {days!r}")
    model, exit_ = raw.get("model"), raw.get("exit")
    if exit_ is not None and not isinstance(exit_, bool):
        raise CampaignError(f"{where}: goal.exit must be true or false, got {exit_!r}")
    if model is None:
        if exit_ is False:
            raise CampaignError(f"{where}: goal.exit: false needs a goal.model")
        return Goal(within_days=days)
    if exit_:
        raise CampaignError(f"{where}: goal has both model and exit: true; choose one")
    if not isinstance(model, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model):
        raise CampaignError(f"{where}: goal.model must be a dbt model name, got {model!r}")
    return Goal(model=model, within_days=days)


def resolve_goals(campaigns: list[Campaign], nodes: dict[str, Any]) -> list[Campaign]:
    """Each goal model's relation from the manifest; a model the project lacks is an error that
    lists the goal models it has."""
    models = {
        n.get("name"): n
        for n in nodes.values()
        if n.get("resource_type") == "model" and n.get("relation_name")
    }
    out: list[Campaign] = []
    for c in campaigns:
        if c.goal.model is None:
            out.append(c)
            continue
        node = models.get(c.goal.model)
        if node is None:
            known = sorted(n for n in models if n.startswith("goal_"))
            raise CampaignError(
                f"{c.declared_at}, campaign {c.name!r}: goal.model {c.goal.model!r} is not a "
                f"model of the dbt project (goal models: {', '.join(known) or 'none'})"
            )
        out.append(replace(c, goal=replace(c.goal, relation=node["relation_name"])))
    return out


def _check_recipients(recipients: Any, entity: str, contacts_relation: str, where: str) -> None:
    if recipients not in RECIPIENTS:
        raise CampaignError(
            f"{where}: recipients must be 'column' (the row's email) or 'users' (every user of "
            f"the company with an address), got {recipients!r}"
        )
    if recipients == "users" and entity != "company":
        raise CampaignError(f"{where}: recipients: users is for company cohorts (entity: company)")
    if recipients == "users" and not contacts_relation:
        raise CampaignError(
            f"{where}: recipients: users reads the company's users from the model "
            f"{CONTACTS_MODEL!r}, which the dbt project does not have"
        )


def campaigns_of_node(node: dict[str, Any], contacts_relation: str = "") -> list[Campaign]:
    """The campaigns one manifest node declares ([] when it has no meta.nudge); their templates
    are not checked here (`template_columns`).

    `contacts_relation` is the relation of dim_users, for `recipients: users`."""
    meta = _nudge_meta(node)
    if meta is None:
        return []
    where = _where(node)
    if not isinstance(meta, dict):
        raise CampaignError(f"{where}: meta.nudge must be a mapping")
    entity = meta.get("entity")
    if entity not in ENTITIES:
        raise CampaignError(
            f"{where}: meta.nudge.entity must be 'user' or 'company', got {entity!r}"
        )
    if not node.get("relation_name"):
        raise CampaignError(
            f"{where}: has no relation_name; a cohort must be materialized as a table or view"
        )
    columns = tuple((node.get("columns") or {}).keys())
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if columns and missing:  # none declared: the built model's are checked at evaluation
        raise CampaignError(
            f"{where}: the yml must declare the column(s) {', '.join(missing)} "
            f"(declared: {', '.join(columns) or 'none'})"
        )
    entries = meta.get("campaigns")
    if not isinstance(entries, list) or not entries:
        raise CampaignError(f"{where}: meta.nudge.campaigns must be a non-empty list")
    recipients = meta.get("recipients", "column")
    return [
        _campaign(node, entity, columns, entry, where, recipients, contacts_relation)
        for entry in entries
    ]


def read_campaigns(
    manifest: dict[str, Any], *, enable: Iterable[str] | None = None
) -> list[Campaign]:
    """Every campaign declared by a model's `config.meta.nudge` (or top-level `meta.nudge`) in
    a dbt manifest.json, ordered by cohort then declaration, templates unchecked (use
    `template_columns.load_campaigns`). Raises CampaignError.

    `enable` names campaigns the operator turns on over their yml (default: the names in
    NUDGE_ENABLED_CAMPAIGNS)."""
    nodes = manifest.get("nodes")
    if not isinstance(nodes, dict):
        raise CampaignError("dbt manifest has no 'nodes': is it a manifest.json?")
    campaigns: list[Campaign] = []
    seen: dict[str, str] = {}
    contacts = next(
        (
            n.get("relation_name") or ""
            for n in nodes.values()
            if n.get("resource_type") == "model" and n.get("name") == CONTACTS_MODEL
        ),
        "",
    )
    for node in sorted(nodes.values(), key=lambda n: (n.get("name") or "", n.get("unique_id", ""))):
        if node.get("resource_type") != "model":
            continue
        for campaign in campaigns_of_node(node, contacts):
            if campaign.name in seen:
                raise CampaignError(
                    f"{_where(node)}: campaign name {campaign.name!r} is already used by model "
                    f"{seen[campaign.name]!r}; campaign names must be unique"
                )
            seen[campaign.name] = campaign.cohort
            campaigns.append(campaign)
    campaigns = resolve_goals(campaigns, nodes)
    campaigns = apply_switches(campaigns, enabled_campaigns() if enable is None else enable)
    campaigns = apply_holdout_shares(campaigns, holdout_shares())
    log.info(
        "read %d campaign(s) from the dbt manifest, %d enabled",
        len(campaigns),
        sum(c.enabled for c in campaigns),
    )
    return campaigns


def apply_switches(campaigns: list[Campaign], enable: Iterable[str]) -> list[Campaign]:
    """Turn on the campaigns the operator names; a name that is no campaign is an error, not a
    silent no-op (a typo would leave the playbook off without anyone noticing)."""
    names = {n.strip() for n in enable if n.strip()}
    _check_known(names, campaigns, ENABLED_CAMPAIGNS_ENV)
    return [
        replace(c, enabled=True, enabled_by=ENABLED_CAMPAIGNS_ENV)
        if c.name in names and not c.enabled
        else c
        for c in campaigns
    ]


def apply_holdout_shares(campaigns: list[Campaign], shares: dict[str, float]) -> list[Campaign]:
    """Set the holdout_share of the campaigns named (an unknown name is an error, as for the
    switches)."""
    _check_known(set(shares), campaigns, HOLDOUT_SHARES_ENV)
    return [replace(c, holdout_share=shares[c.name]) if c.name in shares else c for c in campaigns]


def _check_known(names: set[str], campaigns: list[Campaign], env: str) -> None:
    """An operator's override naming no campaign is an error, not a silent no-op."""
    known = {c.name for c in campaigns}
    unknown = sorted(names - known)
    if unknown:
        raise CampaignError(
            f"{env} names unknown campaign(s) {', '.join(unknown)}; "
            f"campaigns: {', '.join(sorted(known)) or 'none'}"
        )


def holdout_shares(text: str | None = None) -> dict[str, float]:
    """NUDGE_HOLDOUT_SHARES (`campaign=share,...`; the environment, else `.env`) as a dict;
    each share checked as the yml's holdout_share is."""
    from nudge.core.settings import holdout_shares_setting

    text = holdout_shares_setting() if text is None else text
    shares: dict[str, float] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        try:
            share = float(value) if sep and name else None
        except ValueError:
            share = None
        if share is None:
            raise CampaignError(
                f"{HOLDOUT_SHARES_ENV}: {item!r} is not campaign=share (e.g. not_activated_7d=0.3)"
            )
        shares[name] = _number(
            share, "holdout_share", HOLDOUT_SHARES_ENV, maximum=MAX_HOLDOUT_SHARE
        )
    return shares


def enabled_campaigns() -> list[str]:
    """The campaign names in NUDGE_ENABLED_CAMPAIGNS (comma-separated; the environment, else
    `.env`)."""
    from nudge.core.settings import enabled_campaigns_setting

    return [n for n in enabled_campaigns_setting().split(",") if n.strip()]
