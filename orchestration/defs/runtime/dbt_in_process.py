"""dbt in the run's own process, for the runs `nudge` executes itself.

A `dbt build` in a fresh process starts dbt again each time: imports, adapter, parse state, some
2.5 s of every evaluation after the first one of a process (`nudge demo`'s 28 days, a catch-up
over several days, the test suite). dagster-dbt only runs dbt as a subprocess, so `DbtThread`
stands in for the one `subprocess.Popen` it makes: dbt runs through `dbtRunner` in a thread, and
its structured events reach dagster-dbt as the JSON lines the CLI would print, so the run records
the same materializations and asset checks. Runs launched by the Dagster daemon or the UI keep
the subprocess, which a signal can stop; a thread cannot be stopped, so an interrupted run here
leaves dbt to finish in the background while the process exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster_dbt.core.dbt_cli_invocation as dbt_cli_invocation

# dagster-dbt hands these to dbt as relative paths, for a process started in the project folder.
_PATH_VARIABLES = ("DBT_TARGET_PATH", "DBT_LOG_PATH")
_in_process = threading.local()


@contextmanager
def dbt_in_this_process() -> Iterator[None]:
    """Within this block, this thread's dagster-dbt invocations run dbt in this process."""
    previous = getattr(_in_process, "on", False)
    _in_process.on = True
    try:
        yield
    finally:
        _in_process.on = previous


def enabled() -> bool:
    return getattr(_in_process, "on", False)


@contextmanager
def popen_in_this_process() -> Iterator[None]:
    """Make dagster-dbt's `subprocess.Popen` start a `DbtThread` (for one `cli()` call)."""
    real = dbt_cli_invocation.subprocess
    dbt_cli_invocation.subprocess = SimpleNamespace(  # type: ignore[assignment]
        Popen=DbtThread, PIPE=subprocess.PIPE, STDOUT=subprocess.STDOUT
    )
    try:
        yield
    finally:
        dbt_cli_invocation.subprocess = real


class DbtThread:
    """What dagster-dbt uses of a `subprocess.Popen` running the dbt CLI, for dbt in a thread."""

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str], cwd: str | Path, **_: Any
    ) -> None:
        self.args = list(args)
        self.returncode: int | None = None
        read_end, write_end = os.pipe()
        self.stdout = os.fdopen(read_end, "rb")
        self._lines = os.fdopen(write_end, "wb")
        changed = _environment_changes(env, Path(cwd))
        # dagster-dbt names the project and profiles folders in `env`; dbt's own console output
        # is left out: the events carry it.
        argv = [*self.args[1:], "--quiet"]
        self._thread = threading.Thread(
            target=self._run, args=(argv, changed), name="nudge-dbt", daemon=True
        )
        self._thread.start()

    def _run(self, argv: list[str], changed: dict[str, str]) -> None:
        from dbt.cli.main import dbtRunner
        from dbt_common.events.functions import msg_to_json

        def forward(msg: Any) -> None:
            if msg.info.level != "debug":  # what the CLI prints at its default log level
                self._lines.write(msg_to_json(msg).encode() + b"\n")
                self._lines.flush()

        saved = {k: os.environ.get(k) for k in changed}
        os.environ.update(changed)  # dbt reads its flags and env_var() from the environment
        try:
            result = dbtRunner(callbacks=[forward]).invoke(argv)
            # The CLI's exit codes: 0 success, 1 a node failed, 2 dbt itself failed.
            self.returncode = 0 if result.success else 1 if result.exception is None else 2
            if result.exception is not None:
                self._write_error(f"{type(result.exception).__name__}: {result.exception}")
        except BaseException as exc:  # reported as the CLI would report it, never lost
            self.returncode = 2
            self._write_error(f"{type(exc).__name__}: {exc}")
        finally:
            _release_duckdb()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._lines.close()

    def _write_error(self, message: str) -> None:
        """A line dagster-dbt counts among the run's errors (it reads `info.level`)."""
        info = {"name": "MainEncounteredError", "level": "error", "msg": message}
        self._lines.write(json.dumps({"info": info, "data": {}}).encode() + b"\n")

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """A thread takes no signal: an interrupted run stops waiting for dbt (module docstring)."""


def _environment_changes(env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """The variables dagster-dbt sets for dbt on top of this process's own, paths made absolute."""
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    for key in _PATH_VARIABLES:
        if key in changed and not Path(changed[key]).is_absolute():
            changed[key] = str(cwd / changed[key])
    return changed


def _release_duckdb() -> None:
    """dbt-duckdb keeps its database open for the next invocation; Nudge's own connections in
    this process open the same file with other settings, which DuckDB refuses while it is open."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter
        return
    DuckDBConnectionManager.close_all_connections()
