"""The authenticating proxy of the docker deployment (issue 12, hole 1).

Caddy from Debian's package runs as a process with exactly docker/Caddyfile and the environment
compose gives the `proxy` service, in front of a real HTTP server standing in for the Dagster
webserver. Compose itself cannot run here (no Docker engine).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from support.net import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
UPSTREAM_PAGE = b"<title>Dagster</title> the upstream's own page"


def require_caddy() -> str:
    """Caddy's path; skip with the reason off CI when it is absent, fail on CI (CI=true)."""
    caddy = shutil.which("caddy")
    if caddy:
        return caddy
    reason = "caddy is not installed (apt-get install caddy)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: .ci/run installs it")
    pytest.skip(reason)


def proxy_service() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]["proxy"]


class Upstream(BaseHTTPRequestHandler):
    """Stands in for dagster-webserver: its page, and the headers it received."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("X-Upstream-Saw-Auth", str("Authorization" in self.headers))
        self.end_headers()
        self.wfile.write(UPSTREAM_PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


SERVE_PAGE = b"nudge serve stand-in"


class ServeStandIn(BaseHTTPRequestHandler):
    """Stands in for `nudge serve`: says which path and body size reached it."""

    def _answer(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(size)
        self.send_response(200)
        self.send_header("X-Serve-Path", self.path)
        self.send_header("X-Upstream-Saw-Auth", str("Authorization" in self.headers))
        self.end_headers()
        self.wfile.write(SERVE_PAGE)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve_upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ServeStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def caddy_hash(caddy: str, password: str) -> str:
    """The value .env.example asks for: `caddy hash-password` output, base64-encoded."""
    out = subprocess.run(
        [caddy, "hash-password", "--plaintext", password],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return base64.b64encode(out.encode()).decode()


def start_caddy(
    caddy: str, tmp_path: Path, env: dict[str, str], port: int
) -> tuple[subprocess.Popen, Path]:
    """The service's command with the shipped Caddyfile where compose mounts it."""
    argv = proxy_service()["command"]
    config = argv.index("--config") + 1
    assert argv[config] == "/etc/caddy/Caddyfile"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy_service()["volumes"]}
    assert (DOCKER / mounts["/etc/caddy/Caddyfile"]).resolve() == DOCKER / "Caddyfile"
    argv = [caddy, *argv[1:config], str(DOCKER / "Caddyfile"), *argv[config + 1 :]]
    log = tmp_path / "caddy.log"
    home = {k: str(tmp_path / k.lower()) for k in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env={"PATH": os.environ["PATH"], **home, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"caddy exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)  # polling interval; the deadline bounds the wait
    pytest.fail(f"caddy did not listen on {port}:\n{log.read_text()[-3000:]}")


def get(
    port: int,
    auth: tuple[str, str] | None,
    path: str = "/",
    body: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def compose_env(**values: str) -> dict[str, str]:
    """The proxy service's environment, with .env's values in place of the placeholders."""
    env = proxy_service()["environment"]
    assert set(values) <= set(env), sorted(set(values) - set(env))
    return {k: values.get(k, v) for k, v in env.items()}


def test_proxy_asks_for_the_password_of_dotenv_on_every_request(
    tmp_path: Path, upstream: int
) -> None:
    caddy = require_caddy()
    port = free_port()
    env = compose_env(
        NUDGE_PROXY_SITE=f"http://127.0.0.1:{port}",  # plain HTTP here: no certificate to get
        NUDGE_PROXY_USER="operator",
        NUDGE_PROXY_PASSWORD_HASH=caddy_hash(caddy, "correct horse"),
        NUDGE_PROXY_UPSTREAM=f"127.0.0.1:{upstream}",
    )
    assert proxy_service()["environment"]["NUDGE_PROXY_UPSTREAM"] == "webserver:3000"
    proc, log = start_caddy(caddy, tmp_path, env, port)
    try:
        wait_listening(proc, port, log)
        status, body, headers = get(port, None)
        assert status == 401 and UPSTREAM_PAGE not in body
        assert headers.get("Www-Authenticate", "").startswith("Basic")
        for wrong in (("operator", "wrong"), ("admin", "correct horse"), ("operator", "")):
            status, body, _ = get(port, wrong)
            assert (status, UPSTREAM_PAGE in body) == (401, False), wrong
        status, body, _ = get(port, ("operator", "correct horse"))
        assert status == 200 and body == UPSTREAM_PAGE
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_proxy_refuses_to_start_without_a_password_hash(tmp_path: Path, upstream: int) -> None:
    """An .env that leaves NUDGE_PROXY_PASSWORD_HASH empty fails closed: no proxy, no UI."""
    caddy = require_caddy()
    port = free_port()
    env = compose_env(
        NUDGE_PROXY_SITE=f"http://127.0.0.1:{port}",
        NUDGE_PROXY_PASSWORD_HASH="",
        NUDGE_PROXY_UPSTREAM=f"127.0.0.1:{upstream}",
    )
    proc, log = start_caddy(caddy, tmp_path, env, port)
    try:
        assert proc.wait(timeout=20) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "password" in log.read_text().lower()


def published(ports: list) -> list[tuple[str, str]]:
    """(host address, container port) of a service's short-syntax `ports`."""
    found = []
    for entry in ports:
        parts = re.sub(r"\$\{[^}]*\}", "VAR", str(entry)).split(":")  # ${PORT:-80} has a colon
        host = parts[0] if len(parts) == 3 else "0.0.0.0"
        found.append((host, parts[-1]))
    return found


def test_only_the_proxy_is_published_on_every_interface() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    exposed = {
        name: published(svc.get("ports", [])) for name, svc in services.items() if svc.get("ports")
    }
    assert set(exposed) == {"webserver", "proxy"}, exposed  # `serve` only through the proxy
    assert exposed["webserver"] == [("127.0.0.1", "3000")]
    assert {port for _, port in exposed["proxy"]} == {"80", "443"}
    # The proxy only runs when asked for, and reaches the webserver over compose's network.
    assert services["proxy"]["profiles"] == ["proxy"]
    assert services["proxy"]["depends_on"] == {
        "webserver": {"condition": "service_started"},
        "serve": {"condition": "service_started"},
    }
    # postgres (5432), the code server's gRPC port (4000) and serve (8080) are published nowhere.
    for name in ("postgres", "user_code", "daemon", "serve"):
        assert "ports" not in services[name], name


def test_only_the_public_paths_of_nudge_serve_pass_without_a_login(
    tmp_path: Path, upstream: int, serve_upstream: int
) -> None:
    """Unsubscribe links and SendGrid's webhook reach `nudge serve` with no credentials (each
    is checked by its own signature there); everything else still asks for the password."""
    caddy = require_caddy()
    port = free_port()
    env = compose_env(
        NUDGE_PROXY_SITE=f"http://127.0.0.1:{port}",
        NUDGE_PROXY_USER="operator",
        NUDGE_PROXY_PASSWORD_HASH=caddy_hash(caddy, "correct horse"),
        NUDGE_PROXY_UPSTREAM=f"127.0.0.1:{upstream}",
        NUDGE_PROXY_SERVE_UPSTREAM=f"127.0.0.1:{serve_upstream}",
    )
    assert proxy_service()["environment"]["NUDGE_PROXY_SERVE_UPSTREAM"] == "serve:8080"
    proc, log = start_caddy(caddy, tmp_path, env, port)
    try:
        wait_listening(proc, port, log)
        for path, body in (
            ("/u/abc.def", None),
            ("/u/abc.def", b"List-Unsubscribe=One-Click"),
            ("/webhooks/sendgrid", b"[]"),
        ):
            status, page, headers = get(port, None, path, body)
            assert (status, page, headers.get("X-Serve-Path")) == (200, SERVE_PAGE, path), path
        # Not public: the UI, serve's other paths, and look-alikes of the public ones.
        for path in ("/", "/graphql", "/healthz", "/u", "/webhooks/sendgrid/x", "/webhooks",
                     "/u/../graphql", "/u/%2e%2e/graphql"):  # fmt: skip
            status, page, _ = get(port, None, path)
            assert status in (401, 404) and UPSTREAM_PAGE not in page, path
            assert status == 404 or SERVE_PAGE not in page, path
        status, page, _ = get(port, ("operator", "correct horse"))
        assert status == 200 and page == UPSTREAM_PAGE
        # The webhook's body is capped at the proxy as well (1 MB): the cap cuts the proxied
        # body off (Caddy 2.6 then answers 502; later versions 413), serve never gets it whole.
        status, page, _ = get(port, None, "/webhooks/sendgrid", b"[" + b" " * 1_100_000 + b"]")
        assert status in (413, 502) and SERVE_PAGE not in page
    finally:
        proc.terminate()
        proc.wait(timeout=20)
