"""What changed in the landing folder since the last look: the file sensor's pure part."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from nudge.ingest import landing

# A file version is (size, mtime): what the sensor can see without reading the file.
Version = tuple[int, float]


@dataclass
class LandingChanges:
    dts: dict[date, list[str]] = field(default_factory=dict)  # dt -> new or changed files
    cursor: dict[str, Version] = field(default_factory=dict)  # every event file seen now

    def run_key(self, dt: date) -> str:
        """Stable per set of file versions, so each version of a folder triggers once."""
        digest = hashlib.sha1()
        for rel in sorted(self.dts[dt]):
            size, mtime = self.cursor[rel]
            digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return f"ingest-{dt.isoformat()}-{digest.hexdigest()[:16]}"


def event_file_versions(landing_dir: Path) -> dict[str, tuple[date, Version]]:
    out: dict[str, tuple[date, Version]] = {}
    for lf in landing.discover(landing_dir):
        if lf.kind != "events" or lf.dt is None:
            continue
        try:
            st = lf.path.stat()
        except FileNotFoundError:
            continue  # vanished between listing and stat: the next look decides
        out[lf.rel] = (lf.dt, (st.st_size, st.st_mtime))
    return out


def changes_since(
    seen: Mapping[str, Version], now: Mapping[str, tuple[date, Version]]
) -> LandingChanges:
    """Event files that are new or whose size or mtime changed, grouped by dt= folder."""
    changes = LandingChanges(cursor={rel: version for rel, (_, version) in now.items()})
    for rel, (dt, version) in sorted(now.items()):
        previous = seen.get(rel)
        if previous is None or tuple(previous) != version:
            changes.dts.setdefault(dt, []).append(rel)
    return changes
