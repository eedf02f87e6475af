"""One evaluation at a time per state store, and a record of the instant each cohort was built for.

Cohort and mart tables are rebuilt per evaluation instant by `dbt build`, then read by the
evaluation in a later step of the same run. Two runs of different instants at once (two
`nudge run --as-of` processes, a backfill with concurrency on Postgres) would interleave: run A
evaluates tables run B built. The evaluation lock is held from before the dbt build until the
evaluations are recorded:

The lock lives in the state store (NUDGE_STATE_STORE, by default the warehouse), beside the
ledger it protects:

- DuckDB: an exclusive file lock on `<state store>.evaluate.lock`, beside the writer lock (which
  is released between the dbt step and the evaluation step, so it cannot serve);
- Postgres: a session-level advisory lock on a dedicated connection (per database, so per
  warehouse); the server drops it when the holder's connection ends, crash included.

Defence in depth: every build of cohort models records the instant it was built for
(`nudge.cohort_builds`), and an evaluation refuses tables built for another instant.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nudge.core.instant import to_iso
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect_state, duckdb_file_lock

log = logging.getLogger(__name__)

# A fixed key in Postgres' advisory lock space (64-bit); any stable number would do.
PG_LOCK_KEY = zlib.crc32(b"nudge.evaluation")
# Longer than any evaluation should take; after it, a waiting run fails instead of hanging.
WAIT_S = 3600


class CohortNotBuiltForInstant(Exception):
    """A cohort table holds another instant's members than the evaluation's."""


@dataclass
class HeldLock:
    """The lock a run holds; `check()` raises when it can no longer be sure it holds it."""

    kind: str
    wh: Warehouse | None = None  # Postgres: the connection that holds the advisory lock

    def check(self) -> None:
        if self.wh is None:
            return  # a file lock lasts as long as this process
        # Postgres drops the lock with its session: if the connection died, another run may
        # have taken the lock meanwhile.
        row = self.wh.fetchone(
            "select count(*) from pg_locks where locktype = 'advisory' and granted "
            "and pid = pg_backend_pid() and objid = ?",
            [PG_LOCK_KEY & 0xFFFFFFFF],
        )
        if not row or not row[0]:
            raise RuntimeError("the evaluation lock was lost (its Postgres session ended)")


def lock_file_path(settings: Settings) -> Path:
    path = settings.state_store_url.path
    return path.with_name(path.name + ".evaluate")


@contextmanager
def evaluation_lock(settings: Settings, wait_s: float = WAIT_S) -> Iterator[HeldLock]:
    """Hold the state store's evaluation lock, waiting for another holder to finish."""
    with _state_lock(settings, PG_LOCK_KEY, ".evaluate", "evaluation", wait_s) as held:
        yield held


# Spark has no transactions and no file lock: two ingestions of one Spark warehouse at once
# would both load a new file. They take turns through the state store instead.
INGEST_LOCK_KEY = zlib.crc32(b"nudge.ingest")


@contextmanager
def ingest_lock(settings: Settings, wait_s: float = WAIT_S) -> Iterator[None]:
    """One ingestion at a time into a Spark warehouse (DuckDB and Postgres warehouses lock
    themselves, nudge.ingest.run); a no-op for them."""
    if settings.warehouse_url.kind != "spark":
        yield
        return
    with _state_lock(settings, INGEST_LOCK_KEY, ".ingest", "ingestion", wait_s):
        yield


@contextmanager
def _state_lock(
    settings: Settings, key: int, suffix: str, what: str, wait_s: float
) -> Iterator[HeldLock]:
    """A lock in the state store: a file lock beside a DuckDB state store
    (`<file><suffix>.lock`), else a Postgres session-level advisory lock on `key`; waits for
    another holder to finish."""
    url = settings.state_store_url
    if url.kind == "duckdb":
        with duckdb_file_lock(url.path.with_name(url.path.name + suffix), timeout_s=wait_s):
            yield HeldLock("duckdb")
        return
    with connect_state(settings) as wh:
        wh.conn.autocommit = True
        got = wh.fetchone("select pg_try_advisory_lock(?)", [key])
        if not (got and got[0]):
            log.info("waiting for another %s of this warehouse to finish", what)
            wh.execute(f"set lock_timeout = '{int(wait_s)}s'")
            wh.execute("select pg_advisory_lock(?)", [key])
        try:
            yield HeldLock("postgres", wh)
        finally:
            try:
                wh.execute("select pg_advisory_unlock(?)", [key])
            except Exception:  # closing the session below releases it anyway
                log.debug("advisory unlock failed; the session's end releases the lock")


# --------------------------------------------------------------------------- built instants

_DDL = (
    "create schema if not exists nudge",
    """
    create table if not exists nudge.cohort_builds (
        cohort    varchar primary key,
        as_of     timestamp,
        run_id    varchar,
        built_at  timestamp
    )
    """,
)


def _ensure(wh: Warehouse) -> None:
    for sql in _DDL:
        wh.execute(sql)
    wh.commit()


def forget_builds(wh: Warehouse, cohorts: Iterable[str]) -> None:
    """Before a build: these cohorts' tables are about to change, for no instant yet."""
    _ensure(wh)
    with wh.transaction():
        for cohort in cohorts:
            wh.execute("delete from nudge.cohort_builds where cohort = ?", [cohort])


def record_builds(wh: Warehouse, cohorts: Iterable[str], as_of: datetime, run_id: str) -> None:
    """After a build: these cohorts' tables hold their members at `as_of` (naive UTC)."""
    _ensure(wh)
    with wh.transaction():
        for cohort in cohorts:
            wh.execute("delete from nudge.cohort_builds where cohort = ?", [cohort])
            wh.execute(
                "insert into nudge.cohort_builds (cohort, as_of, run_id, built_at) "
                "values (?, ?, ?, current_timestamp)",
                [cohort, as_of, run_id],
            )


def check_built_for(wh: Warehouse, cohort: str, as_of: datetime) -> None:
    """Raise CohortNotBuiltForInstant unless `cohort`'s table was last built for `as_of`."""
    row = None
    if wh.table_exists("nudge", "cohort_builds"):
        row = wh.fetchone(
            "select as_of, run_id from nudge.cohort_builds where cohort = ?", [cohort]
        )
    if row is None or row[0] is None:
        raise CohortNotBuiltForInstant(
            f"{cohort} has no record of the instant it was built for (a build is under way or "
            f"failed); re-run the evaluation at {to_iso(as_of)} with its dbt build"
        )
    built = row[0].replace(tzinfo=None) if row[0].tzinfo else row[0]
    if built != as_of:
        raise CohortNotBuiltForInstant(
            f"{cohort} was built for {to_iso(built)} (run {row[1]}), not for this evaluation's "
            f"{to_iso(as_of)}: another evaluation rebuilt it; re-run this one"
        )
