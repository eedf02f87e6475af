"""CSS inlining once per template instead of once per message.

Premailer costs ~2.5 ms a message (lxml parse, selector matching, serialization), the bulk of a
send's CPU. A template's <style> is the same for every member, so we inline it into the Jinja
*source*: every Jinja tag is masked by a placeholder, premailer runs on the masked document, the
tags are put back, and the result is compiled as a template. Rendering it gives what inlining
the rendered message gives, as long as no CSS rule's match depends on the data:

- no Jinja inside a tag other than in an attribute value (and not in `class`, `id`, `style`);
- no Jinja in a <style> selector, and no selector whose match depends on siblings
  (`:first-child`, `:nth-*`, `+`, `~`, ...), which a loop changes;
- every `{% if %}`/`{% for %}` branch opens and closes the same elements;
- before the document, only `{% %}`/`{# #}` tags (no output).

A campaign template that extends the layout (`{% extends "_base.html" %}`) is first flattened into
one document: its blocks (and `{{ super() }}`) put in the layout's place, its top-level statements
before the layout's. Flattening declines (per-message inlining) nested blocks, block modifiers
(`scoped`, `required`, `-`/`+`), `self.`, a layout that itself extends, and a `{% set x %}` block
at the template's top level.

A template that breaks a rule keeps per-message inlining. As a safety net, the first message of
each template in a process is rendered both ways and compared (after an lxml round trip, which
evens out entity spellings); a difference turns precompiling off for that template, with a
warning. tests/email/test_render_precompile.py checks the equality on the seed templates.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import lxml.html

log = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER_RE = re.compile(r"nudgejinja(\d+)x")
_DOC_START_RE = re.compile(r"<!doctype|<html", re.I)
_TAG_RE = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)([^>]*)>")
_ATTR_RE = re.compile(r"([\w:-]+)\s*=\s*(\"[^\"]*\"|'[^']*')")
_STYLE_RE = re.compile(r"<style[^>]*>(.*?)</style>", re.S | re.I)
_DECLARATIONS_RE = re.compile(r"\{[^{}]*\}")
_SIBLING_CSS_RE = re.compile(r":(first|last|nth|only)-|:empty|:not\(|[+~]")
_BLOCK_OPEN = ("if", "for", "with", "block", "macro", "call", "filter", "autoescape")
_BLOCK_MIDDLE = ("elif", "else")
_DATA_ATTRS = frozenset({"class", "id", "style"})
_EXTENDS_RE = re.compile(r"""\{%\s*extends\s+(["'])([^"']+)\1\s*%\}""")
_BLOCK_TAG_RE = re.compile(r"\{%\s*(block\s+\w+|endblock(\s+\w+)?)\s*%\}")
_SUPER_RE = re.compile(r"\{\{\s*super\(\)\s*\}\}")
SHIPPED_TEMPLATES = Path(__file__).resolve().parent / "templates"
VOID = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr",
    }
)  # fmt: skip


def _block_word(token: str) -> str | None:
    if not token.startswith("{%"):
        return None
    words = token.strip("{%}-+ \n\t").split()
    return words[0] if words else None


def _balanced(masked: str, tokens: list[str]) -> bool:
    """Every control block's branches open and close the same number of elements."""
    depth = 0
    stack: list[int] = []
    events: list[tuple[int, str, Any]] = [
        (m.start(), "tag", m) for m in _TAG_RE.finditer(masked)
    ] + [(m.start(), "jinja", tokens[int(m.group(1))]) for m in _PLACEHOLDER_RE.finditer(masked)]
    for _, kind, value in sorted(events, key=lambda e: e[0]):
        if kind == "tag":
            closing, name, rest = value.group(1), value.group(2).lower(), value.group(3)
            if name in VOID or rest.rstrip().endswith("/"):
                continue
            depth += -1 if closing else 1
            continue
        word = _block_word(value)
        if word is None:
            continue
        if word in _BLOCK_OPEN or (word == "set" and "=" not in value):
            stack.append(depth)
        elif word in _BLOCK_MIDDLE or word.startswith("end"):
            if not stack or stack[-1] != depth:
                return False
            if word.startswith("end"):
                stack.pop()
    return not stack


def _safe(masked: str, tokens: list[str]) -> bool:
    for tag in _TAG_RE.finditer(masked):
        inside = tag.group(3)
        rest = _ATTR_RE.sub(
            lambda a: a.group(0) if a.group(1).lower() in _DATA_ATTRS else "", inside
        )
        if _PLACEHOLDER_RE.search(rest):
            return False  # Jinja decides a tag's name, attributes, class, id or style
    for style in _STYLE_RE.finditer(masked):
        selectors = style.group(1)
        while _DECLARATIONS_RE.search(selectors):
            selectors = _DECLARATIONS_RE.sub(" ", selectors)
        if _PLACEHOLDER_RE.search(selectors) or _SIBLING_CSS_RE.search(selectors):
            return False
    return _balanced(masked, tokens)


def _tag_span(source: str, start: int, end: int) -> tuple[int, int]:
    """The text Jinja drops with a block tag: under lstrip_blocks the blanks before it on its
    line, under trim_blocks the newline after it (the environment of email_jobs.render)."""
    line_start = source.rfind("\n", 0, start) + 1
    if not source[line_start:start].strip(" \t"):
        start = line_start
    if source.startswith("\n", end):
        end += 1
    elif source.startswith("\r\n", end):
        end += 2
    return start, end


def _split_blocks(source: str) -> tuple[list[str | tuple[str]], dict[str, str]] | None:
    """The source as text pieces and (block name,) markers, and each block's body; None for a
    block tag this flattening does not reproduce (nested, modified)."""
    parts: list[str | tuple[str]] = []
    bodies: dict[str, str] = {}
    pos = 0
    name: str | None = None
    body_start = 0
    for token in _TOKEN_RE.finditer(source):
        word = _block_word(token.group(0))
        if word not in ("block", "endblock"):
            continue
        if not _BLOCK_TAG_RE.fullmatch(token.group(0)):
            return None  # `scoped`, `required`, or whitespace control on a block tag
        start, end = _tag_span(source, token.start(), token.end())
        if word == "block":
            if name is not None:
                return None  # nested blocks
            parts.append(source[pos:start])
            name, body_start = token.group(0).split()[2], end
        else:
            if name is None:
                return None
            bodies[name] = source[body_start:start]
            parts.append((name,))
            name = None
        pos = end
    if name is not None:
        return None
    parts.append(source[pos:])
    return parts, bodies


def _statements(text: str) -> Iterator[str]:
    for token in _TOKEN_RE.finditer(text):
        if token.group(0).startswith("{%"):
            yield token.group(0)


def flatten(source: str, layout: Callable[[str], str]) -> str | None:
    """One template with the rendering of `source`, a template that extends a layout; `source`
    unchanged when it extends nothing; None when this flattening would not be exact."""
    extends = _EXTENDS_RE.search(source)
    if extends is None:
        return source
    if extends.start() != 0 or "self." in source:
        return None  # text before the extends tag is output: keep it simple, decline
    child = _split_blocks(source[_tag_span(source, *extends.span())[1] :])
    parent_source = layout(extends.group(2))
    parent = _split_blocks(parent_source)
    if child is None or parent is None or _EXTENDS_RE.search(parent_source):
        return None
    child_parts, overrides = child
    parent_parts, defaults = parent
    # A child's top-level text is never output; its statements run before the layout's.
    statements = [t for p in child_parts if isinstance(p, str) for t in _statements(p)]
    if any(_block_word(t) == "set" and "=" not in t for t in statements):
        return None  # `{% set x %}...{% endset %}`: its body is text
    out = list(statements)
    for part in parent_parts:
        if isinstance(part, str):
            out.append(part)
            continue
        default = defaults[part[0]]
        body = overrides.get(part[0], default)
        out.append(_SUPER_RE.sub(lambda _: default, body))
    return "".join(out)


def _shipped_layout(name: str) -> str:
    return (SHIPPED_TEMPLATES / name).read_text(encoding="utf-8")


def precompile_source(
    source: str, inline_css: Callable[[str], str], layout: Callable[[str], str] | None = None
) -> str | None:
    """The template source with its CSS inlined, or None when that would not be exact.

    `layout` gives the source of a template `source` extends (default: the shipped folder).
    """
    flat = flatten(source, layout or _shipped_layout)
    if flat is None or "nudgejinja" in flat:
        return None
    source = flat
    tokens: list[str] = []

    def mask(match: re.Match[str]) -> str:
        tokens.append(match.group(0))
        return f"nudgejinja{len(tokens) - 1}x"

    masked = _TOKEN_RE.sub(mask, source)
    start = _DOC_START_RE.search(masked)
    if start is None:
        return None
    prefix, document = masked[: start.start()], masked[start.start() :]
    prefix_tokens = [tokens[int(i)] for i in _PLACEHOLDER_RE.findall(prefix)]
    if _PLACEHOLDER_RE.sub("", prefix).strip() or any(t.startswith("{{") for t in prefix_tokens):
        return None  # output before the document: premailer would move it
    if not _safe(document, tokens):
        return None
    # Expressions in <style> values are copied onto every element a rule matches; every other
    # tag must come out exactly once.
    in_style = {i for m in _STYLE_RE.finditer(document) for i in _PLACEHOLDER_RE.findall(m[1])}
    if any(not tokens[int(i)].startswith("{{") for i in in_style):
        return None
    inlined = inline_css(document)
    found = [i for i in _PLACEHOLDER_RE.findall(inlined) if i not in in_style]
    if sorted(found) != sorted(i for i in _PLACEHOLDER_RE.findall(document) if i not in in_style):
        return None  # premailer dropped or duplicated a tag
    body = _PLACEHOLDER_RE.sub(lambda m: tokens[int(m.group(1))], inlined)
    return "".join(prefix_tokens) + body


def normalized(html: str) -> bytes:
    """The document after an lxml round trip: equal documents compare equal however their
    entities are spelled (Jinja writes &#39;, lxml writes ')."""
    return lxml.html.tostring(lxml.html.document_fromstring(html), encoding="utf-8")


Stamps = tuple[tuple[str, int], ...]  # the files a precompiled template was made from, mtimes


def _mtime(path: str) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0


class Precompiled:
    """Per template file: the CSS-inlined template, or None (inline per message)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[str, tuple[Stamps, jinja2.Template | None]] = {}
        self._verified: set[Stamps] = set()

    def render(
        self,
        env: jinja2.Environment,
        template: jinja2.Template,
        context: dict[str, Any],
        render: Callable[[jinja2.Template, dict[str, Any], str], str],
        inline_css: Callable[[str], str],
        where: str,
    ) -> str:
        """The message's HTML with CSS inlined, through the precompiled template when it can."""
        stamps, compiled = self._compiled(env, template, inline_css)
        if compiled is None:
            return inline_css(render(template, context, where))
        try:
            html = render(compiled, context, where)
        except Exception:
            # Errors name lines of the original file: render it for the proper message.
            return inline_css(render(template, context, where))
        if stamps in self._verified:
            return html
        expected = inline_css(render(template, context, where))
        with self._lock:
            if normalized(expected) != normalized(html):
                log.warning(
                    "%s: inlining its CSS once gives a different message than inlining per "
                    "message; inlining per message from now on",
                    template.filename,
                )
                self._templates[template.filename or ""] = (stamps, None)
                return expected
            self._verified.add(stamps)
        return html

    def _compiled(
        self, env: jinja2.Environment, template: jinja2.Template, inline_css: Callable[[str], str]
    ) -> tuple[Stamps, jinja2.Template | None]:
        filename = template.filename or ""
        with self._lock:
            cached = self._templates.get(filename)
        # An edit of the template or of its layout makes it again (a stat per file and message).
        if cached is not None and all(_mtime(path) == mtime for path, mtime in cached[0]):
            return cached
        files = [(filename, _mtime(filename))]

        def layout(name: str) -> str:
            if env.loader is None:
                raise jinja2.TemplateNotFound(name)
            source, path, _ = env.loader.get_source(env, name)
            files.append((path or name, _mtime(path or "")))
            return source

        compiled: jinja2.Template | None = None
        try:
            source = Path(filename).read_text(encoding="utf-8")
            inlined = precompile_source(source, inline_css, layout)
            if inlined is not None and not env.keep_trailing_newline and inlined.endswith("\n"):
                inlined += "\n"  # Jinja drops a source's last newline; premailer's must stay
            if inlined is not None:
                # Compiled under the file's name, so autoescaping by extension still applies.
                code = env.compile(inlined, name=template.name, filename=template.filename)
                compiled = env.template_class.from_code(env, code, env.make_globals(None))
        except (OSError, jinja2.TemplateError) as exc:
            log.info("%s: CSS inlined per message (%s)", template.filename, exc)
            compiled = None
        if compiled is None:
            log.info("%s: CSS inlined per message", template.filename)
        entry = (tuple(files), compiled)
        with self._lock:
            self._templates[filename] = entry
        return entry


PRECOMPILED = Precompiled()
