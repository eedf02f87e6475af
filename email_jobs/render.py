"""Render a campaign's email for one cohort member.

Templates live in `email_jobs/templates/<template>/` as `subject.txt`, `body.html`, `body.txt`
(Jinja); a body.html extends the shared layout `_base.html` (see templates/README.md). They run
in a sandbox with StrictUndefined: a variable the cohort row lacks is an error naming it, never a
silently blank greeting. Row values are data: Jinja never evaluates them, so a name like
`{{ 7*7 }}` comes out literally (and HTML-escaped in the HTML body).

Context of a template: every column of the cohort row; for every column `x_json`, its JSON parsed
as `x`; `campaign` (the campaign name), `entity_id`, `unsubscribe_url`.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer
from premailer import Premailer

from email_jobs.addresses import normalize_address, split_addresses
from email_jobs.backends.mime import clean_header_value
from email_jobs.campaigns import Campaign
from email_jobs.css_precompile import PRECOMPILED
from email_jobs.message import OutgoingEmail
from email_jobs.recipients import Recipients, drop_suppressed, message_recipients
from email_jobs.unsubscribe import link_for, signed_links
from nudge.core.settings import Settings

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_FILES = ("subject.txt", "body.html", "body.txt")
SHARED_PREFIX = "_"  # _base.html and any other shared piece: never a campaign's template
# Variables every template gets without a cohort column of that name.
PROVIDED_VARIABLES = frozenset({"campaign", "entity_id", "unsubscribe_url"})
JSON_SUFFIX = "_json"
MAX_SUBJECT_CHARS = 150  # clients cut far earlier; this only stops a runaway value


class TemplateError(Exception):
    """A template folder is missing, incomplete or does not parse; the message names the file."""


class RenderError(Exception):
    """One member's email cannot be rendered (missing variable, bad JSON, no address)."""


# --------------------------------------------------------------------------- environment


def _format_date(value: Any, fmt: str | None = None) -> str:
    """`{{ signup_at | date }}` -> January 2, 2026 (datetimes, dates, ISO strings); None -> ''."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if fmt:
        return value.strftime(fmt)
    return f"{value:%B} {value.day}, {value.year}"  # no %-d: it is not portable


def _format_number(value: Any) -> str:
    """`{{ calls_4xx | number }}` -> 12,345; '' for None."""
    if value is None or value == "":
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.2f}"


@lru_cache(maxsize=8)
def _environment(templates_dir: Path) -> SandboxedEnvironment:
    # One environment per folder: it caches compiled templates (auto_reload re-reads an edited
    # file, at the price of a stat per render). Autoescape by file name: .html yes, .txt no.
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["date"] = _format_date
    env.filters["number"] = _format_number
    return env


def _templates_dir(templates_dir: Path | None) -> Path:
    return (templates_dir or TEMPLATES_DIR).resolve()


def _load(env: SandboxedEnvironment, folder: Path, template: str, file: str) -> jinja2.Template:
    name = f"{template}/{file}"
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        if not (folder / template).is_dir():
            found = folder.iterdir() if folder.is_dir() else ()
            hidden = (".", SHARED_PREFIX)
            known = sorted(p.name for p in found if p.is_dir() and not p.name.startswith(hidden))
            raise TemplateError(
                f"template folder {folder / template} does not exist (campaign template "
                f"{template!r}; expected {', '.join(TEMPLATE_FILES)} in it; existing templates: "
                f"{', '.join(known) or 'none'})"
            ) from None
        raise TemplateError(f"template {template!r}: missing file {folder / name}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{folder / name}, line {exc.lineno}: {exc.message}") from None


# --------------------------------------------------------------------------- validation


def _parse(env: SandboxedEnvironment, folder: Path, name: str) -> nodes.Template:
    try:
        source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
        return env.parse(source, name=name)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"{folder / name} does not exist (extended by a template)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{folder / name}, line {exc.lineno}: {exc.message}") from None


def _flattened(env: SandboxedEnvironment, folder: Path, name: str) -> nodes.Template:
    """The template and the layouts it extends as one tree, for Jinja's variable analysis.

    The analysis of a child alone misses what its layout reads, and inside a block it counts a
    variable set at the top level as undeclared: so the blocks are put in the layout's place,
    the child's top-level statements first (they run first).
    """
    chain = [_parse(env, folder, name)]
    while (extends := chain[-1].find(nodes.Extends)) is not None:
        if not isinstance(extends.template, nodes.Const) or len(chain) > 8:
            raise TemplateError(f"{folder / name}: extends must name one layout, as a string")
        chain.append(_parse(env, folder, extends.template.value))
    blocks: dict[str, list[list[nodes.Node]]] = {}  # most derived first; super() is the next
    for tree in chain:
        for block in tree.find_all(nodes.Block):
            blocks.setdefault(block.name, []).append(block.body)

    class Inline(NodeTransformer):
        def visit_Block(self, block: nodes.Block) -> list[nodes.Node]:
            bodies = blocks[block.name]
            uses_super = any(
                isinstance(c.node, nodes.Name) and c.node.name == "super"
                for c in nodes.Template(bodies[0]).find_all(nodes.Call)
            )
            body = [n for b in bodies[: 2 if uses_super else 1] for n in b]
            return self.generic_visit(nodes.Scope(body)).body

        def visit_Call(self, call: nodes.Call) -> nodes.Node:
            if isinstance(call.node, nodes.Name) and call.node.name == "super":
                return nodes.Const(None)  # the parent's block is inlined beside it
            return self.generic_visit(call)

    skip = (nodes.Extends, nodes.Block)
    statements = [n for tree in chain[:-1] for n in tree.body if not isinstance(n, skip)]
    flat = Inline().visit(nodes.Template([*statements, *chain[-1].body]))
    return flat.set_environment(env)


def template_variables(template: str, templates_dir: Path | None = None) -> set[str]:
    """Variables the three files of `template` (and the layout they extend) read from their
    context (Jinja's own analysis)."""
    folder = _templates_dir(templates_dir)
    env = _environment(folder)
    names: set[str] = set()
    for file in TEMPLATE_FILES:
        _load(env, folder, template, file)  # raises TemplateError naming the missing file
        tree = _flattened(env, folder, f"{template}/{file}")
        names |= jinja2.meta.find_undeclared_variables(tree)
    return names


def missing_columns(
    template: str,
    columns: set[str] | list[str] | tuple[str, ...],
    templates_dir: Path | None = None,
) -> set[str]:
    """Template variables that neither the given cohort columns nor Nudge itself provide."""
    cols = set(columns)
    provided = set(PROVIDED_VARIABLES) | cols
    provided |= {c[: -len(JSON_SUFFIX)] for c in cols if c.endswith(JSON_SUFFIX)}
    return template_variables(template, templates_dir) - provided


def check_template(campaign: Campaign, templates_dir: Path | None = None) -> None:
    """Raise TemplateError when the campaign's template folder is absent, incomplete or broken."""
    folder = _templates_dir(templates_dir)
    name = campaign.template
    if name.startswith(SHARED_PREFIX):
        raise TemplateError(
            f"campaign {campaign.name!r}: template {name!r} is a shared layout, not a campaign's "
            f"folder (names starting with {SHARED_PREFIX!r} are reserved)"
        )
    if not name or "/" in name or name.startswith("."):
        raise TemplateError(
            f"campaign {campaign.name!r}: template {name!r} is not a folder name under {folder}"
        )
    env = _environment(folder)
    for file in TEMPLATE_FILES:
        _load(env, folder, campaign.template, file)
        _flattened(env, folder, f"{campaign.template}/{file}")  # the layout exists and parses


# --------------------------------------------------------------------------- rendering


def _context(
    campaign: Campaign,
    row: Mapping[str, Any],
    settings: Settings,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    if row.get("entity_id") is None:
        raise RenderError(f"campaign {campaign.name!r}: cohort row has no entity_id: {dict(row)!r}")
    entity_id = str(row["entity_id"])
    context: dict[str, Any] = dict(row)
    for column, value in row.items():
        if not column.endswith(JSON_SUFFIX):
            continue
        name = column[: -len(JSON_SUFFIX)]
        if value is None or not isinstance(value, (str, bytes)):
            context[name] = value  # null, or a driver that already parsed json (psycopg2)
            continue
        try:
            context[name] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RenderError(
                f"campaign {campaign.name!r}, entity {entity_id!r}: column {column} is not "
                f"valid JSON ({exc.msg} at char {exc.pos})"
            ) from None
    if "cc" in context:
        # Templates name who is copied: only the addresses really CC'd, never the raw column,
        # which may hold an invalid address (dropped from the headers) or injected lines.
        valid = (normalize_address(part) for part in split_addresses(row.get("cc")))
        context["cc"] = ", ".join(a for a in valid if a) or None
    if unsubscribe_url is None:
        address = normalize_address(row.get("email"))
        unsubscribe_url = _unsubscribe_url(campaign.name, entity_id, settings, address)
    context.update(campaign=campaign.name, entity_id=entity_id, unsubscribe_url=unsubscribe_url)
    return context


def _unsubscribe_url(
    campaign: str, entity_id: str, settings: Settings, address: str | None = None
) -> str:
    """The signed link of `address` when NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL are set (a
    preview shows the main recipient's), else NUDGE_UNSUBSCRIBE_URL's placeholder (outbox)."""
    if address and signed_links(settings):
        return link_for(settings, campaign, entity_id, address)
    try:
        return settings.unsubscribe_url.format(
            campaign=quote(campaign, safe=""), entity=quote(entity_id, safe="")
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise RenderError(
            f"NUDGE_UNSUBSCRIBE_URL={settings.unsubscribe_url!r}: only {{campaign}} and "
            f"{{entity}} may be used ({exc!r})"
        ) from None


def _template_lineno(template: jinja2.Template, tb: TracebackType | None) -> int | None:
    """The template line a runtime error happened on.

    Jinja rewrites the traceback so that template frames carry the template's own file and line.
    """
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template.filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return lineno


def _render(template: jinja2.Template, context: dict[str, Any], where: str) -> str:
    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        line = _template_lineno(template, exc.__traceback__)
        at = f"{template.filename}" + (f", line {line}" if line else "")
        raise RenderError(
            f"{at}: {exc.message} — the cohort row has no such column ({where}; columns: "
            f"{', '.join(sorted(context))})"
        ) from None
    except jinja2.TemplateError as exc:
        line = _template_lineno(template, exc.__traceback__)
        at = f"{template.filename}" + (f", line {line}" if line else "")
        raise RenderError(f"{at}: {exc} ({where})") from None


# Line breaks and tabs as single spaces, other control characters dropped: the same rule as
# for every header value the backends write.
one_line = clean_header_value


def clean_subject(subject: str) -> str:
    """One line: control and line-separator characters gone, spaces collapsed, length capped."""
    subject = one_line(subject)
    if len(subject) > MAX_SUBJECT_CHARS:
        cut = subject[: MAX_SUBJECT_CHARS - 1]
        cut = cut.rsplit(" ", 1)[0] if " " in cut[MAX_SUBJECT_CHARS // 2 :] else cut
        subject = cut.rstrip() + "…"
    return subject


PREMAILER_OPTIONS: dict[str, Any] = {
    "allow_network": False,  # never fetch a stylesheet named in a template
    "disable_validation": True,
    "cache_css_parsing": True,
    "strip_important": False,
    "remove_classes": False,
    "cssutils_logging_level": logging.CRITICAL,
}


@lru_cache(maxsize=64)
def _style_rules(css_body: str, ruleset_index: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    rules, leftover = Premailer(**PREMAILER_OPTIONS)._parse_style_rules(css_body, ruleset_index)
    return tuple(rules), tuple(leftover)


@lru_cache(maxsize=64)
def _leftover_css(rules: tuple[Any, ...]) -> str:
    return Premailer(**PREMAILER_OPTIONS)._css_rules_to_string(list(rules))


class _CachingPremailer(Premailer):
    """Premailer that remembers what it made of a stylesheet.

    A template's <style> is the same text for every message, and premailer re-serializes it
    through cssutils each time: ~95% of its cost (26 ms of 27 a message, measured). The two
    overridden methods are premailer 3.10 internals (pinned); test_render checks the output
    equals plain Premailer's.
    """

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list, list]:
        rules, leftover = _style_rules(css_body, ruleset_index)
        return list(rules), list(leftover)

    def _css_rules_to_string(self, rules: list) -> str:
        return _leftover_css(tuple(rules))


def inline_css(html: str) -> str:
    """Move <style> rules onto elements for clients that drop <style> (Gmail app, Outlook).

    Media queries cannot be inlined; premailer leaves them in a <style> for clients that read it.
    """
    return _CachingPremailer(html, **PREMAILER_OPTIONS).transform()


def render_parts(
    campaign: Campaign,
    row: Mapping[str, Any],
    settings: Settings,
    *,
    templates_dir: Path | None = None,
    inline: bool = True,
    unsubscribe_url: str | None = None,
) -> tuple[str, str, str]:
    """(subject, html, text) for one cohort row; the HTML with its CSS inlined unless told."""
    folder = _templates_dir(templates_dir)
    env = _environment(folder)
    context = _context(campaign, row, settings, unsubscribe_url)
    where = f"campaign {campaign.name!r}, entity {context['entity_id']!r}"
    subject_t, html_t, text_t = (_load(env, folder, campaign.template, f) for f in TEMPLATE_FILES)
    subject = clean_subject(_render(subject_t, context, where))
    if not subject:
        raise RenderError(f"{subject_t.filename}: the subject renders empty ({where})")
    if inline:  # the template's CSS is inlined once, not per message (email_jobs.css_precompile)
        html = PRECOMPILED.render(env, html_t, context, _render, inline_css, where)
    else:
        html = _render(html_t, context, where)
    text = _render(text_t, context, where).strip() + "\n"
    return subject, html, text


def _header_value(value: str) -> str:
    # Header values come from data (entity ids); a CR/LF must never start a new header.
    return one_line(value)


def _as_sent(row: Mapping[str, Any], recipients: Recipients) -> Mapping[str, Any]:
    """The row as its template sees it: `contacts` and the `cc` column name only the people this
    message really reaches (a suppressed teammate or solutions engineer is not named)."""
    to = {a.lower() for a in recipients.to}
    cc = {a.lower() for a in recipients.cc}
    shown = dict(row)
    if isinstance(row.get("contacts"), list):
        shown["contacts"] = [
            c
            for c in row["contacts"]
            if isinstance(c, dict) and (normalize_address(c.get("email")) or "").lower() in to
        ]
    if row.get("cc") is not None:
        copied = (normalize_address(part) for part in split_addresses(row.get("cc")))
        shown["cc"] = ", ".join(a for a in copied if a and a.lower() in cc) or None
    return shown


def render_email(
    campaign: Campaign,
    row: Mapping[str, Any],
    settings: Settings,
    *,
    ledger_key: str = "",
    templates_dir: Path | None = None,
    suppressed: Collection[str] = (),
) -> OutgoingEmail:
    """The complete message for one cohort row: recipients, headers, subject and both bodies.

    `suppressed` (lower-cased addresses, from the suppression list at the claim) are left out
    of every role. Raises RenderError when no valid To address is left (callers skip such
    members first) or the template cannot be rendered for it.
    """
    entity_id = str(row.get("entity_id"))
    recipients, _ = drop_suppressed(
        message_recipients(campaign, row, warn_invalid=True), {a.lower() for a in suppressed}
    )
    if not recipients.to:
        raise RenderError(
            f"campaign {campaign.name!r}, entity {entity_id!r}: no valid email address "
            f"({row.get('email')!r}) that is not suppressed"
        )
    shown = _as_sent(row, recipients)
    to, cc, bcc = recipients.to, recipients.cc, recipients.bcc
    # Signed links are per recipient: the template renders once with a random placeholder, and
    # each recipient's copy carries their own link in its place (email_jobs.backends.copies).
    links: tuple[tuple[str, str], ...] = ()
    placeholder = ""
    if signed_links(settings):
        placeholder = f"nudge-unsubscribe-{secrets.token_hex(12)}"
        seen: dict[str, str] = {}
        for address in (*to, *cc, *bcc):
            seen.setdefault(address.lower(), address)
        links = tuple(
            (address, link_for(settings, campaign.name, entity_id, address))
            for address in seen.values()
        )
    subject, html, text = render_parts(
        campaign, shown, settings, templates_dir=templates_dir, unsubscribe_url=placeholder or None
    )
    headers = {
        "X-Nudge-Campaign": _header_value(campaign.name),
        "X-Nudge-Entity": _header_value(entity_id),
    }
    if ledger_key:
        headers["X-Nudge-Key"] = _header_value(ledger_key)
    if not links:
        unsubscribe_url = _unsubscribe_url(campaign.name, entity_id, settings)
        headers["List-Unsubscribe"] = f"<{_header_value(unsubscribe_url)}>"
    return OutgoingEmail(
        campaign=campaign.name,
        entity_id=entity_id,
        ledger_key=ledger_key,
        from_addr=settings.from_email,
        to=to,
        subject=subject,
        html=html,
        text=text,
        cc=cc,
        bcc=bcc,
        headers=headers,
        categories=(campaign.name,),
        unsubscribe_group_id=campaign.unsubscribe_group_id,
        unsubscribe_placeholder=placeholder,
        unsubscribe_links=links,
    )
