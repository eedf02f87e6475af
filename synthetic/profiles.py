"""Synthetic user and company profiles, and the per-user daily call plan, for `nudge generate`.

Everything here is per user or per user-day (a few thousand rows), so plain Python with one
seeded `random.Random` is fast enough; the per-event work happens in DuckDB
(`synthetic.events`). The plan is shaped so that a day-by-day demo shows both seed cohorts
gaining and losing members on many different days:

- new users sign up every day; some never call (they enter `not_activated_7d` a week later),
  some call for the first time after 9-13 days (they enter, then exit), most call at once;
- a few established users go through 3-5 day "error storms" of 400/404/405 that start on
  different days (they enter `too_many_4xx_7d`, then exit a week later), one of them twice;
- two users flood 401/403/422/429 (which must not count), and one user stays at exactly 999
  counted errors in any 7 days (just under the threshold).
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

# Archetypes (the `kind` of a SyntheticUser).
ESTABLISHED = "established"  # signed up long before the period, calls regularly
NEW_ACTIVE = "new_active"  # signs up in the period and calls the same or the next day
NEW_LATE = "new_late"  # signs up in the period, first call 9-13 days later
NEW_NEVER = "new_never"  # signs up in the period, never calls

# Event mixes (the call catalogue in generate_events.py has one weighting per mix).
MIX_NORMAL = "normal"
MIX_CLEAN = "clean"  # normal traffic without any 400/404/405
MIX_AUTH = "auth"  # 401/403/422/429 flood: errors that must not count
MIX_HEALTH = "health"  # load balancer health checks: no user_id
MIX_ANON = "anon"  # calls without an API key (401): no user_id
STORM_MIXES = ("storm0", "storm1", "storm2")  # 400/404/405 storms, three flavours

STORM_TOTAL = (1300, 2300)  # counted errors per storm: enough to cross 1000 in a week
NEAR_MISS_TOTAL = 999  # one below the cohort's default threshold
ANON_SHARE = 0.01
# Senders without a user (negative uids), and their share of the anonymous volume.
ANON_SENDERS = ((-1, MIX_HEALTH, 0.7), (-2, MIX_ANON, 0.2), (-3, MIX_ANON, 0.1))

_FIRST = (
    ("Ada", "ada"),
    ("Bob", "bob"),
    ("Chloé", "chloe"),
    ("Jürgen", "juergen"),
    ("Zoë", "zoe"),
    ("Søren", "soren"),
    ("Ana", "ana"),
    ("João", "joao"),
    ("伟", "wei"),
    ("Priya", "priya"),
    ("Mateo", "mateo"),
    ("Amélie", "amelie"),
    ("Björn", "bjorn"),
    ("Łukasz", "lukasz"),
    ("Aiko", "aiko"),
    ("Fatima", "fatima"),
    ("Noah", "noah"),
    ("Olivia", "olivia"),
    ("Liam", "liam"),
    ("Emma", "emma"),
    ("Hana", "hana"),
    ("Ravi", "ravi"),
    ("Sofía", "sofia"),
    ("Kofi", "kofi"),
    ("Inès", "ines"),
    ("Grace", "grace"),
    ("Yusuf", "yusuf"),
    ("Mei", "mei"),
)
_LAST = (
    ("Müller", "mueller"),
    ("García", "garcia"),
    ("Dubois", "dubois"),
    ("Novák", "novak"),
    ("Smith", "smith"),
    ("Kowalski", "kowalski"),
    ("Okafor", "okafor"),
    ("Tanaka", "tanaka"),
    ("李", "li"),
    ("王", "wang"),
    ("Nguyễn", "nguyen"),
    ("Johansson", "johansson"),
    ("O'Brien", "obrien"),
    ("Rossi", "rossi"),
    ("Silva", "silva"),
    ("Patel", "patel"),
    ("Schröder", "schroeder"),
    ("Hernández", "hernandez"),
    ("Brown", "brown"),
    ("Kim", "kim"),
)
_ORG_HEAD = (
    "Acme",
    "Globex",
    "Initech",
    "Hooli",
    "Vandelay",
    "Umbrella",
    "Café",
    "Zürich",
    "Malmö",
    "Kraków",
    "São Paulo",
    "Nordlys",
    "北京",
    "Île",
    "Brightwave",
    "Tidal",
    "Quanta",
    "Lumen",
)
_ORG_TAIL = (
    "Robotics",
    "Logistics",
    "Analytics",
    "Labs",
    "Systems",
    "Payments",
    "Health",
    "Foods",
    "Studio",
    "Cloud",
    "Data AG",
    "GmbH",
    "ApS",
    "Ltda",
)
_ROMAN = {"北京": "beijing", "Île": "ile"}
_SOLUTIONS_ENGINEERS = (
    "priya.raman@widgets-api.example",
    "tom.becker@widgets-api.example",
    "lucia.fernandez@widgets-api.example",
    "kenji.ito@widgets-api.example",
)
_PLANS = (("free", 0.4), ("starter", 0.25), ("pro", 0.25), ("enterprise", 0.1))
# The monthly call quota a billing system writes into company metadata (quota_calls_per_month),
# which the quota playbooks read; enterprise is unmetered (no quota, never in those cohorts).
# Sized against the generated traffic so that the demo's busier free companies cross 80% and
# 100% within a month.
_PLAN_QUOTAS = {"free": 3000, "starter": 10000, "pro": 100000}
_TITLES = ("CTO", "Backend Engineer", "Developer", "Staff Engineer", "Founder", "Data Engineer")
_USER_AGENTS = (
    "widgets-python/2.3.1 (CPython 3.11)",
    "widgets-node/4.0.2 (node v20.11.0)",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "curl/8.5.0",
    "widgets-ruby/1.8.0",
    "PostmanRuntime/7.36.1",
)
_DATACENTERS = ("us-west-2", "us-east-1", "eu-central-1")


@dataclass
class SyntheticCompany:
    company_id: str
    org_name: str
    domain: str
    plan: str
    solutions_engineer_email: str | None
    modified_time: datetime


@dataclass
class SyntheticUser:
    uid: int  # dense index, the join key in DuckDB
    user_id: str
    kind: str
    company: SyntheticCompany | None
    first_name: str
    last_name: str
    email: str | None
    signup: datetime
    first_call_day: int | None  # day index of the first call (None: never)
    weight: float  # share of the normal traffic when active
    p_active: float  # chance of calling on a weekday once active
    user_agent: str
    ip_address: str
    api_version: str
    datacenter: str
    clean: bool = False  # normal traffic without 400/404/405 (the near-miss user)
    special: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # day -> (mix, n)


@dataclass
class Population:
    start: date
    days: int
    users: list[SyntheticUser]
    companies: list[SyntheticCompany]
    storm_users: list[str]
    auth_noise_users: list[str]
    near_miss_user: str | None


def _slug(text: str) -> str:
    if text in _ROMAN:
        return _ROMAN[text]
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(
        part for part in "".join(c.lower() if c.isalnum() else " " for c in ascii_text).split()
    )


def _at(start: date, day: int, seconds: float) -> datetime:
    return datetime.combine(start, datetime.min.time()) + timedelta(days=day, seconds=seconds)


def _make_companies(rng: random.Random, n: int, start: date) -> list[SyntheticCompany]:
    companies: list[SyntheticCompany] = []
    domains: set[str] = set()
    for i in range(n):
        head, tail = rng.choice(_ORG_HEAD), rng.choice(_ORG_TAIL)
        org = f"{head} {tail}"
        domain = f"{_slug(head)}-{_slug(tail)}"
        while f"{domain}.example" in domains:
            domain += str(rng.randint(2, 9))
        domains.add(f"{domain}.example")
        plan = rng.choices([p for p, _ in _PLANS], [w for _, w in _PLANS])[0]
        has_se = plan != "free" or rng.random() < 0.4
        companies.append(
            SyntheticCompany(
                company_id=f"co_{rng.getrandbits(32):08x}{i:03d}"[:14],
                org_name=org,
                domain=f"{domain}.example",
                plan=plan,
                solutions_engineer_email=rng.choice(_SOLUTIONS_ENGINEERS) if has_se else None,
                modified_time=_at(start, -rng.randint(200, 700), rng.uniform(0, 86400)),
            )
        )
    return companies


def _email(rng: random.Random, first: str, last: str, domain: str, taken: set[str]) -> str:
    style = rng.randrange(4)
    local = (f"{first}.{last}", first, f"{first[0]}.{last}", f"{first}_{last}+api")[style]
    address = f"{local}@{domain}"
    n = 2
    while address in taken:
        address = f"{local}{n}@{domain}"
        n += 1
    taken.add(address)
    return address


def _storm_counts(rng: random.Random, max_days: int) -> list[int]:
    """Counted errors per day of one storm: 3-5 days, 1300-2300 in all."""
    duration = min(rng.randint(3, 5), max_days)
    total = rng.randint(*STORM_TOTAL)
    shares = [rng.uniform(0.8, 1.2) for _ in range(duration)]
    return [round(total * s / sum(shares)) for s in shares]


def _storm_schedule(rng: random.Random, n_storms: int, days: int) -> list[tuple[int, list[int]]]:
    """(start day, per-day counts) per storm, starts spread so most storms also exit in the
    period (a storm leaves the 7-day window about 8 days after it starts)."""
    if days < 4:
        return []
    lo, hi = min(5, max(0, days - 12)), max(0, days - 10)
    storms = []
    for k in range(n_storms):
        start = lo + round(k * (hi - lo) / max(1, n_storms - 1))
        start = min(max(0, start + rng.randint(-1, 1)), days - 3)
        storms.append((start, _storm_counts(rng, days - start)))
    return storms


def build_population(*, users: int, days: int, seed: int, start: date) -> Population:
    """Companies, users (with archetypes) and their special traffic, deterministic for a seed."""
    rng = random.Random(seed)
    companies = _make_companies(rng, max(3, users // 5), start)
    n_storms = max(3, round(users * 0.025))
    n_new = round(users * 0.45)
    kinds = [ESTABLISHED] * (users - n_new)
    n_never, n_late = round(n_new * 0.3), round(n_new * 0.15)
    new_kinds = [NEW_NEVER] * n_never + [NEW_LATE] * n_late
    new_kinds += [NEW_ACTIVE] * (n_new - len(new_kinds))
    rng.shuffle(new_kinds)
    kinds += new_kinds

    # Sign-up days of those who enter not_activated_7d are stratified over the period so that
    # entries (a week after sign-up) fall on many different days.
    entering = [i for i, k in enumerate(kinds) if k in (NEW_NEVER, NEW_LATE)]
    lo, hi = -5, max(-4, days - 8)
    signup_day: dict[int, int] = {}
    for j, i in enumerate(entering):
        signup_day[i] = lo + (j * (hi - lo + 1)) // max(1, len(entering))
    # Special roles go to established users; storm users sit in distinct companies, the first
    # with a solutions engineer (the email is CC'd), the second without one.
    established = [i for i, k in enumerate(kinds) if k == ESTABLISHED]
    rng.shuffle(established)
    storm_uids = established[:n_storms]
    auth_uids = established[n_storms : n_storms + 2]
    near_miss_uid = established[n_storms + 2] if len(established) > n_storms + 2 else None
    if storm_uids:
        companies[0].solutions_engineer_email = (
            companies[0].solutions_engineer_email or _SOLUTIONS_ENGINEERS[0]
        )
    if len(storm_uids) > 1:
        companies[1].solutions_engineer_email = None

    taken: set[str] = set()
    result: list[SyntheticUser] = []
    for uid, kind in enumerate(kinds):
        first, first_ascii = rng.choice(_FIRST)
        last, last_ascii = rng.choice(_LAST)
        if kind == ESTABLISHED:
            sday = -rng.randint(30, 400)
        elif kind == NEW_ACTIVE:
            sday = rng.randint(-20, days - 1)
        else:
            sday = signup_day[uid]
        signup = _at(start, sday, rng.uniform(6 * 3600, 22 * 3600))
        first_call = {
            ESTABLISHED: -1,
            NEW_ACTIVE: sday if signup.hour < 14 else sday + 1,
            NEW_LATE: sday + rng.randint(9, 13),
            NEW_NEVER: None,
        }[kind]
        company = rng.choice(companies)
        if uid in storm_uids:
            company = companies[storm_uids.index(uid) % len(companies)]
        result.append(
            SyntheticUser(
                uid=uid,
                user_id=f"usr_{rng.getrandbits(40):010x}",
                kind=kind,
                company=company,
                first_name=first,
                last_name=last,
                email=_email(rng, first_ascii, last_ascii, company.domain, taken),
                signup=signup,
                first_call_day=first_call,
                weight=min(rng.lognormvariate(0, 1.0), 12.0),
                p_active=rng.uniform(0.6, 0.97),
                user_agent=rng.choice(_USER_AGENTS),
                ip_address=f"{rng.choice(('203.0.113', '198.51.100', '192.0.2'))}."
                f"{rng.randint(2, 254)}",
                api_version="1.4.0" if rng.random() < 0.8 else "1.3.2",
                datacenter=rng.choice(_DATACENTERS),
            )
        )
    storm_users = [result[i] for i in storm_uids]
    auth_users = [result[i] for i in auth_uids]
    near_miss = result[near_miss_uid] if near_miss_uid is not None else None

    for k, (sday, counts) in enumerate(_storm_schedule(rng, len(storm_users), days)):
        mix = STORM_MIXES[k % len(STORM_MIXES)]
        for d, n in enumerate(counts):
            storm_users[k].special.setdefault(sday + d, []).append((mix, n))
    if storm_users and storm_users[0].special:
        # a second storm 16 days after the first: a re-entry inside the default cooldown
        again = min(storm_users[0].special) + 16
        if again + 4 <= days:
            for d, n in enumerate(_storm_counts(rng, 4)):
                storm_users[0].special.setdefault(again + d, []).append((STORM_MIXES[0], n))

    for k, user in enumerate(auth_users):
        first = min(max(0, days // 3 + 7 * k), max(0, days - 6))
        for d in range(first, min(days, first + 6)):
            user.special.setdefault(d, []).append((MIX_AUTH, rng.randint(200, 320)))
    if near_miss is not None and days >= 3:
        near_miss.clean = True
        first = max(0, days // 2 - 1)
        per_day = [NEAR_MISS_TOTAL // 3] * 3
        for d, n in enumerate(per_day):
            near_miss.special.setdefault(first + d, []).append((STORM_MIXES[0], n))

    # Profiles worth having in the data: a couple without an email address (one never calls,
    # one activates late), and one without a company.
    for kind in (NEW_NEVER, NEW_LATE):
        candidates = [u for u in result if u.kind == kind]
        if candidates:
            candidates[len(candidates) // 2].email = None
    never = [u for u in result if u.kind == NEW_NEVER]
    if never:
        never[-1].company = None
        if never[-1].email:
            never[-1].email = never[-1].email.split("@")[0] + "@mail.example"

    return Population(
        start=start,
        days=days,
        users=result,
        companies=companies,
        storm_users=[u.user_id for u in storm_users if u.special],
        auth_noise_users=[u.user_id for u in auth_users],
        near_miss_user=near_miss.user_id if near_miss else None,
    )


def day_volumes(events_per_day: int, days: int, start: date) -> list[int]:
    """Total events per day: fewer at weekends, slowly growing, averaging events_per_day."""
    raw = []
    for d in range(days):
        weekday = (start + timedelta(days=d)).weekday()
        raw.append((0.55 if weekday >= 5 else 1.0) * (0.9 + 0.2 * d / max(1, days - 1)))
    mean = sum(raw) / len(raw) if raw else 1.0
    return [round(events_per_day * r / mean) for r in raw]


def build_plan(
    population: Population, events_per_day: int, seed: int
) -> list[tuple[int, int, str, int]]:
    """(uid, day, mix, events) rows; a negative uid is an anonymous sender.

    Special traffic comes out of the day's total so that the total stays close to
    events_per_day * days (it may exceed it when the volume is too small to hold the storms)."""
    rng = random.Random(seed * 7919 + 1)
    plan: list[tuple[int, int, str, int]] = []
    volumes = day_volumes(events_per_day, population.days, population.start)
    for day, volume in enumerate(volumes):
        plan.extend(plan_day(population, day, volume, rng))
    return plan


def plan_day(
    population: Population, day: int, volume: int, rng: random.Random
) -> list[tuple[int, int, str, int]]:
    """One day of build_plan, from the population as it stands (the demo changes it between
    days: simulated users respond to the emails)."""
    plan: list[tuple[int, int, str, int]] = []
    weekend = (population.start + timedelta(days=day)).weekday() >= 5
    special = [(u.uid, mix, n) for u in population.users for mix, n in u.special.get(day, [])]
    anon = round(volume * ANON_SHARE)
    normal = max(volume - anon - sum(n for _, _, n in special), volume // 2)
    active: list[SyntheticUser] = []
    for user in population.users:
        first = user.first_call_day
        if first is None or day < first:
            continue
        p = user.p_active * (0.6 if weekend else 1.0)
        if day == first or rng.random() < p:
            active.append(user)
    counts = _allocate(normal, [u.weight for u in active])
    for user, n in zip(active, counts, strict=True):
        n = max(n, 2) if day == user.first_call_day else n
        if n:
            plan.append((user.uid, day, MIX_CLEAN if user.clean else MIX_NORMAL, n))
    plan.extend((uid, day, mix, n) for uid, mix, n in special if n)
    for uid, mix, share in ANON_SENDERS:
        if round(anon * share):
            plan.append((uid, day, mix, round(anon * share)))
    return plan


def _allocate(total: int, weights: list[float]) -> list[int]:
    """Split total in proportion to weights (largest remainder: the parts sum to total)."""
    if not weights or total <= 0:
        return [0] * len(weights)
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _iso_naive_micro(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _iso_offset(ts: datetime) -> str:
    return ts.replace(tzinfo=UTC).isoformat(timespec="seconds")


def _fmt_modified(ts: datetime, i: int) -> str:
    # Moesif's SDK sends either form (see shared/samples/README.md).
    return _iso_offset(ts) if i % 2 else _iso_naive_micro(ts)


def _fmt_created(ts: datetime, i: int) -> str:
    if i % 3 == 0:
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def user_profiles(population: Population, seed: int) -> tuple[list[dict], list[dict]]:
    """(first versions, later versions). Later versions have a newer modified_time, except one
    replayed older version that must lose against the first."""
    rng = random.Random(seed * 104729 + 3)
    base: list[dict] = []
    updates: list[dict] = []
    for user in population.users:
        metadata: dict[str, object] = {}
        if user.email:
            metadata["email"] = user.email
        metadata |= {
            "first_name": user.first_name,
            "last_name": user.last_name,
            "created": _fmt_created(user.signup, user.uid),
        }
        if rng.random() < 0.3:
            metadata["title"] = rng.choice(_TITLES)
        modified = user.signup + timedelta(minutes=rng.randint(1, 90))
        row = {
            "user_id": user.user_id,
            "company_id": user.company.company_id if user.company else None,
            "modified_time": _fmt_modified(modified, user.uid),
            "ip_address": None,
            "session_token": None,
            "user_agent_string": None,
            "metadata": metadata,
            "campaign": None,
        }
        base.append(row)
        if rng.random() < 0.15:
            newer = dict(row, metadata=dict(metadata, title=rng.choice(_TITLES)))
            newer["modified_time"] = _fmt_modified(modified + timedelta(days=rng.randint(1, 9)), 1)
            updates.append(newer)
    if base:  # a replayed stale version: older modified_time, different name; must not win
        stale = dict(base[0], metadata=dict(base[0]["metadata"], last_name="Stale-Replay"))
        stale["modified_time"] = "2000-01-01T00:00:00+00:00"
        updates.append(stale)
    return base, updates


def company_profiles(population: Population, seed: int) -> tuple[list[dict], list[dict]]:
    """(first versions, later versions: a few plan upgrades)."""
    rng = random.Random(seed * 15485863 + 5)
    base: list[dict] = []
    updates: list[dict] = []
    for i, company in enumerate(population.companies):
        metadata: dict[str, object] = {"plan": company.plan, "org_name": company.org_name}
        if company.plan in _PLAN_QUOTAS:
            metadata["quota_calls_per_month"] = _PLAN_QUOTAS[company.plan]
        if company.solutions_engineer_email:
            metadata["solutions_engineer_email"] = company.solutions_engineer_email
        row = {
            "company_id": company.company_id,
            "company_domain": company.domain,
            "modified_time": _fmt_modified(company.modified_time, i),
            "ip_address": None,
            "session_token": None,
            "metadata": metadata,
            "campaign": None,
        }
        base.append(row)
        if company.plan in ("free", "starter") and rng.random() < 0.2:
            upgraded = dict(
                row,
                metadata=dict(metadata, plan="pro", quota_calls_per_month=_PLAN_QUOTAS["pro"]),
            )
            upgraded["modified_time"] = _fmt_modified(
                company.modified_time + timedelta(days=rng.randint(30, 150)), i + 1
            )
            updates.append(upgraded)
    return base, updates
