"""What an ingest run did, per file and per kind, for the CLI, Dagster metadata and the guards."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

Kind = Literal["events", "users", "companies"]
KINDS: tuple[Kind, ...] = ("events", "users", "companies")

# loaded: ingested now; skipped: this version was ingested before; vanished: listed, then gone
# before it could be read (not recorded, so it is picked up again if it comes back); changing:
# its size or mtime changed while it was read (still being written; not recorded, retried).
FileStatus = Literal["loaded", "skipped", "vanished", "changing"]


@dataclass
class FileResult:
    kind: Kind
    path: str  # relative to the landing folder
    status: FileStatus
    dt: date | None = None
    lines_read: int = 0  # loaded + duplicates + rejected; blank lines are not counted
    loaded: int = 0
    duplicates: int = 0
    conflicts: int = 0  # duplicates whose content differs from the copy kept
    rejected: int = 0
    note: str = ""


@dataclass
class KindTotals:
    files: int = 0
    lines_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0

    def add(self, r: FileResult) -> None:
        self.files += 1
        self.lines_read += r.lines_read
        self.loaded += r.loaded
        self.duplicates += r.duplicates
        self.conflicts += r.conflicts
        self.rejected += r.rejected


@dataclass
class IngestReport:
    run_id: str
    files: list[FileResult] = field(default_factory=list)
    newest_dt: date | None = None  # newest events dt= folder ingested, in this run or any before

    @property
    def totals(self) -> dict[Kind, KindTotals]:
        """Per kind, over the files ingested by this run (skipped and vanished files excluded)."""
        out: dict[Kind, KindTotals] = {k: KindTotals() for k in KINDS}
        for r in self.files:
            if r.status == "loaded":
                out[r.kind].add(r)
        return out

    @property
    def lines_read(self) -> int:
        return sum(t.lines_read for t in self.totals.values())

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.totals.values())

    @property
    def events_loaded(self) -> int:
        return self.totals["events"].loaded

    @property
    def rejected_share(self) -> float:
        """Rejected lines over lines read by this run (the "broken export" guard's measure)."""
        return self.rejected / self.lines_read if self.lines_read else 0.0

    @property
    def skipped(self) -> list[FileResult]:
        return [r for r in self.files if r.status == "skipped"]

    @property
    def vanished(self) -> list[FileResult]:
        return [r for r in self.files if r.status == "vanished"]

    @property
    def changing(self) -> list[FileResult]:
        return [r for r in self.files if r.status == "changing"]

    def summary(self) -> str:
        t = self.totals
        parts = [
            f"{k}: {v.loaded} loaded, {v.duplicates} duplicates, {v.rejected} rejected "
            f"from {v.files} files"
            for k, v in t.items()
        ]
        return (
            f"ingest {self.run_id}: "
            + "; ".join(parts)
            + f"; {len(self.skipped)} files unchanged, {len(self.vanished)} vanished, "
            f"{len(self.changing)} still being written"
        )
