"""What `nudge demo` prints while it simulates: the evaluations where something happened, under
a progress bar that only a terminal gets."""

from __future__ import annotations

import sys
import time
from datetime import date
from typing import Any, TextIO

from email_jobs.holdout import HOLDOUT_REASON

BAR_WIDTH = 28


def happenings(day: date, rows: list[dict[str, Any]]) -> list[str]:
    """One line per campaign whose evaluation had entries, exits or emails (none: no line)."""
    lines = []
    for r in rows:
        states = r["states"]
        sent = states.get("sent", 0)
        parts = []
        if r["kind"] == "baseline":
            if r["members"]:
                parts.append("baseline, not mailed")
        else:
            if r["entered"]:
                parts.append(f"{r['entered']} entered")
            if r["exited"]:
                parts.append(f"{r['exited']} exited")
            if sent:
                parts.append(f"{sent} emailed")
            held_out = r["skipped"].get(HOLDOUT_REASON, 0)
            if held_out:
                parts.append(f"{held_out} held out")
            parts += [
                f"{n} skipped ({why})"
                for why, n in sorted(r["skipped"].items())
                if why != HOLDOUT_REASON
            ]
            parts += [f"{n} {s}" for s, n in sorted(states.items()) if s not in ("sent", "skipped")]
        if parts:
            lines.append(
                f"{day!s:<11} {r['campaign']:<17} {', '.join(parts)}  "
                f"({r['members']} member{'' if r['members'] == 1 else 's'})"
            )
    return lines


class Progress:
    """A one-line bar redrawn in place on a terminal; elsewhere (a pipe, a test) nothing."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.out = out or sys.stdout
        self.live = self.out.isatty()
        self.began = time.monotonic()
        self.label = ""

    def _bar(self) -> str:
        filled = BAR_WIDTH * self.done // max(1, self.total)
        elapsed = time.monotonic() - self.began
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} evaluations"
            f"  {self.label}  {elapsed:.0f}s"
        )

    def _clear(self) -> None:
        if self.live:
            self.out.write("\r\033[K")

    def show(self, label: str) -> None:
        self.label = label
        if self.live:
            self._clear()
            self.out.write(self._bar())
            self.out.flush()

    def print(self, lines: list[str]) -> None:
        """Lines above the bar."""
        if not lines:
            return
        self._clear()
        self.out.write("".join(line + "\n" for line in lines))
        self.show(self.label)

    def advance(self) -> None:
        self.done += 1
        self.show(self.label)

    def close(self) -> None:
        self._clear()
        self.out.flush()
