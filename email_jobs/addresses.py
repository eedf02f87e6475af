"""A practical e-mail address check: what a cohort column may hand to a mail server.

Not RFC 5322 in full (no quoted local parts, comments or domain literals): those are legal but
rare, and every one of them is a way to smuggle something into an SMTP envelope or a header.
Internationalized domains are accepted and normalized to their ASCII (IDNA) form so that every
backend can carry them; local parts stay ASCII because SMTPUTF8 support is patchy.
"""

from __future__ import annotations

import re
import unicodedata

MAX_ADDRESS_LEN = 254  # RFC 5321 path limit minus the angle brackets
MAX_LOCAL_LEN = 64
MAX_LABEL_LEN = 63
MAX_DOMAIN_LEN = 253

_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# Single-label domains are refused except this one: the default sender is nudge@localhost.
_SINGLE_LABEL_OK = frozenset({"localhost"})


def _has_forbidden_char(s: str) -> bool:
    # C*: control, format (zero-width), surrogate, private, unassigned; Z*: any space/separator.
    return any(unicodedata.category(ch)[0] in "CZ" for ch in s)


def _ascii_domain(domain: str) -> str | None:
    if not domain or domain.endswith(".") or domain.startswith("."):
        return None
    try:
        # The stdlib codec does nameprep (lower-casing, NFKC) and punycode per label.
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    if len(ascii_domain) > MAX_DOMAIN_LEN:
        return None
    labels = ascii_domain.split(".")
    if len(labels) < 2 and ascii_domain not in _SINGLE_LABEL_OK:
        return None
    for label in labels:
        if not label or len(label) > MAX_LABEL_LEN or not _LABEL_RE.fullmatch(label):
            return None
    if labels[-1].isdigit():  # 10.0.0.1 is an IP address, not a domain
        return None
    return ascii_domain


def normalize_address(s: object) -> str | None:
    """The address in canonical form (trimmed, domain lower-cased ASCII), or None when invalid."""
    if not isinstance(s, str):
        return None
    s = s.strip()
    if not s or len(s) > 4 * MAX_ADDRESS_LEN or _has_forbidden_char(s):
        return None
    if s.count("@") != 1:
        return None
    local, domain = s.split("@")
    if not local or len(local) > MAX_LOCAL_LEN or not _LOCAL_RE.fullmatch(local):
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        return None
    address = f"{local}@{ascii_domain}"
    return address if len(address) <= MAX_ADDRESS_LEN else None


def is_valid_address(s: object) -> bool:
    """True when `s` is an address Nudge will send to; blank or None is not."""
    return normalize_address(s) is not None


def split_addresses(value: object) -> list[str]:
    """A `cc`/`bcc` cell (comma- or semicolon-separated, or a list; may be None) as raw parts."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [part.strip() for part in re.split(r"[,;]", str(value)) if part.strip()]
