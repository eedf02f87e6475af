"""The Dagster webserver on this repo's workspace.yaml, as a real process, for the UI tests.

    with dagster_webserver() as base_url:
        data = graphql(base_url, "{ version }")

It runs in its own process group (the webserver starts the code location as a child process)
with a throwaway DAGSTER_HOME holding the same instance config `nudge` uses, waits until
/server_info answers and every code location has finished loading, and stops the whole group
afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = REPO_ROOT / "workspace.yaml"
LOCAL_DAGSTER_YAML = REPO_ROOT / "orchestration" / "dagster.local.yaml"

LOCATIONS_QUERY = """
query LocationStatuses {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus } }
    ... on PythonError { message }
  }
}
"""


class WebserverError(RuntimeError):
    """The webserver did not come up, or a GraphQL request failed."""


def webserver_executable() -> list[str]:
    script = Path(sys.executable).parent / "dagster-webserver"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dagster_webserver"]


def graphql(
    base_url: str, query: str, variables: Mapping[str, Any] | None = None, timeout_s: float = 30
) -> dict[str, Any]:
    """POST a query to the webserver's /graphql; returns `data`, raising on transport errors or
    on a response with `errors`."""
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise WebserverError(f"/graphql answered {err.code}: {err.read()[:2000]!r}") from err
    if payload.get("errors"):
        raise WebserverError(f"/graphql errors: {json.dumps(payload['errors'])[:4000]}")
    return payload["data"]


def _log_tail(log_path: Path, chars: int = 6000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _server_info(base_url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base_url}/server_info", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _locations_loading(base_url: str) -> list[str] | None:
    """Names of the code locations still loading, or None when the workspace is not ready."""
    try:
        data = graphql(base_url, LOCATIONS_QUERY, timeout_s=10)
    except (OSError, WebserverError):
        return None
    workspace = data["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        return None
    return [e["name"] for e in workspace["locationEntries"] if e["loadStatus"] != "LOADED"]


def _wait_until_ready(
    proc: subprocess.Popen[bytes], base_url: str, deadline: float, log_path: Path
) -> None:
    pending: list[str] | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WebserverError(
                f"dagster-webserver exited with {proc.returncode} before it was ready:\n"
                + _log_tail(log_path)
            )
        if _server_info(base_url) is not None:
            pending = _locations_loading(base_url)
            if pending == []:
                return
        # Poll interval only: readiness is decided by the answers above, never by elapsed time.
        time.sleep(0.25)
    what = f"code locations still loading: {pending}" if pending else "no answer on /server_info"
    raise WebserverError(
        f"dagster-webserver not ready at {base_url} ({what}):\n" + _log_tail(log_path)
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGTERM the webserver's process group (it and its code-location server), wait for all of
    them to leave, SIGKILL what is left after the grace period."""
    pgid = proc.pid  # start_new_session: the webserver leads its own group
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so the group can empty
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=grace_s)


@contextmanager
def dagster_webserver(
    workspace: Path = WORKSPACE,
    *,
    cwd: Path = REPO_ROOT,
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 120,
) -> Iterator[str]:
    """Run `dagster-webserver -w workspace` on a free loopback port; yields its base URL once the
    server answers and every code location has loaded (loaded with an error counts as loaded:
    the caller asserts on that)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="nudge-dagster-web-") as tmp:
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        shutil.copyfile(LOCAL_DAGSTER_YAML, home / "dagster.yaml")
        log_path = Path(tmp) / "webserver.log"
        python_path = os.pathsep.join(p for p in (str(cwd), os.environ.get("PYTHONPATH", "")) if p)
        proc_env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": python_path,
            "DAGSTER_DISABLE_TELEMETRY": "1",
            **(env or {}),
        }
        argv = [*webserver_executable(), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=proc_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_until_ready(proc, base_url, time.monotonic() + startup_timeout_s, log_path)
            yield base_url
        finally:
            _stop_group(proc)
