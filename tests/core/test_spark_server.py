"""`nudge spark status|stop`: the embedded Spark's server as a user sees it, and a Spark Connect
URL's token never shown.

Starting a Spark server costs ~20 s and the session's one is shared (conftest.spark_server), so
stopping is exercised on a stand-in: a process that holds the port under the server's class
name, in its own process group, as nudge.core.spark starts the real one. The real server is
only asked for its status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.net import free_port

from nudge.app.cli import main as nudge
from nudge.core.spark import SERVER_CLASS

TOKEN = "dapi0123456789abcdef-s3cret"
DATABRICKS = (
    f"sc://adb-1234.5.azuredatabricks.net:443/;token={TOKEN};"
    "x-databricks-cluster-id=0123-456789-abcdef;use_ssl=true"
)

# Listens on argv[2] and says so; argv[1] makes its command line a Spark Connect server's.
LISTENER = """
import signal, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[2]))); s.listen()
print("listening", flush=True)
signal.pause()
"""


@pytest.fixture
def spark_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An embedded-Spark configuration of its own (folder, port); no state store is set."""
    for name in list(os.environ):
        if name.startswith("NUDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("NUDGE_WAREHOUSE", "spark://local[2]")
    monkeypatch.setenv("NUDGE_SPARK_DIR", str(tmp_path / "spark"))
    monkeypatch.setenv("NUDGE_SPARK_CONNECT_PORT", str(free_port()))
    return tmp_path / "spark"


def _start(argv_tail: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, *argv_tail, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


@pytest.fixture
def stand_in(spark_env: Path) -> Iterator[subprocess.Popen]:
    """A 'server' on the configured port whose pid is in the Spark folder's server.pid."""
    port = int(os.environ["NUDGE_SPARK_CONNECT_PORT"])
    proc = _start([SERVER_CLASS], port)
    spark_env.mkdir(parents=True)
    (spark_env / "server.pid").write_text(str(proc.pid))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_status_then_stop_then_status(
    spark_env: Path, stand_in: subprocess.Popen, capsys: pytest.CaptureFixture[str]
) -> None:
    port = int(os.environ["NUDGE_SPARK_CONNECT_PORT"])

    assert nudge(["spark", "status"]) == 0
    out = capsys.readouterr().out
    assert f"running, pid {stand_in.pid}" in out
    assert f"port: 127.0.0.1:{port} (answering)" in out
    assert f"folder: {spark_env}" in out

    assert nudge(["spark", "stop"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"stopped the embedded Spark (pid {stand_in.pid}) on 127.0.0.1:{port}"
    )
    assert stand_in.wait(timeout=60) is not None
    assert not _answers(port)
    assert not (spark_env / "server.pid").exists()

    # Stopped: status says so with exit status 3, and stopping again changes nothing.
    assert nudge(["spark", "status"]) == 3
    out = capsys.readouterr().out
    assert "not running" in out and f"127.0.0.1:{port} (free)" in out
    assert nudge(["spark", "stop"]) == 0
    assert "was not running" in capsys.readouterr().out


def test_a_stale_pid_file_never_stops_another_program(
    spark_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """server.pid left behind (a reboot, a killed JVM) whose number now belongs to another
    program, which holds the port: that program is neither reported as the server nor
    signalled."""
    port = int(os.environ["NUDGE_SPARK_CONNECT_PORT"])
    other = _start(["not-spark"], port)
    spark_env.mkdir(parents=True)
    (spark_env / "server.pid").write_text(str(other.pid))
    try:
        assert nudge(["spark", "status"]) == 3
        out = capsys.readouterr().out
        assert "not running" in out and "another program listens there" in out
        assert nudge(["spark", "stop"]) == 0
        assert "was not running" in capsys.readouterr().out
        assert other.poll() is None and _answers(port)
    finally:
        os.killpg(other.pid, 9)
        other.wait()


@pytest.mark.spark
def test_status_of_the_running_embedded_spark(
    spark_server: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in spark_server.items():
        monkeypatch.setenv(name, value)
    assert nudge(["spark", "status"]) == 0
    out = capsys.readouterr().out
    port = spark_server["NUDGE_SPARK_CONNECT_PORT"]
    assert "embedded Spark (local[2]): running, pid " in out
    assert f"port: 127.0.0.1:{port} (answering)" in out
    assert f"folder: {Path(spark_server['NUDGE_SPARK_DIR']).resolve()}" in out


def test_a_spark_connect_server_is_shown_without_its_token_and_never_stopped(
    spark_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_WAREHOUSE", DATABRICKS)
    assert nudge(["spark", "status"]) == 0
    out = capsys.readouterr().out
    assert "sc://adb-1234.5.azuredatabricks.net:443/;token=***;" in out
    assert TOKEN not in out

    assert nudge(["spark", "stop"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert "stops only the embedded Spark" in line
    assert TOKEN not in captured.err + captured.out


def test_nudge_spark_refuses_a_warehouse_that_is_not_spark(
    spark_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_WAREHOUSE", "postgresql://nudge:s3cret@db:5432/nudge")
    assert nudge(["spark", "status"]) == 2
    err = capsys.readouterr().err
    assert "is not a Spark warehouse" in err and "s3cret" not in err


def test_settings_show_neither_the_token_nor_a_password() -> None:
    """Settings end up in tracebacks and debug output: their repr masks what the URLs hold."""
    from nudge.core.settings import Settings

    settings = Settings(
        warehouse=DATABRICKS, state_store="postgresql://nudge:pg-s3cret@db/nudge", _env_file=None
    )
    for shown in (repr(settings), str(settings)):
        assert TOKEN not in shown and "pg-s3cret" not in shown
        assert "token=***" in shown and "nudge:***@db" in shown
    assert settings.warehouse_url.spark_remote == DATABRICKS  # the real one still connects


def test_nudge_status_on_a_spark_connect_server_that_does_not_answer(
    spark_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line naming host and port, at once (pyspark would retry for minutes), no token."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("NUDGE_WAREHOUSE", f"sc://127.0.0.1:{port}/;token={TOKEN}")
    monkeypatch.setenv("NUDGE_STATE_STORE", "postgresql://postgres@127.0.0.1:5432/postgres")
    assert nudge(["status"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(
        f"nudge: NUDGE_WAREHOUSE: cannot reach the Spark Connect server at 127.0.0.1:{port} ("
    )
    assert TOKEN not in captured.err + captured.out


def test_the_embedded_server_is_never_handed_a_port_another_program_took(
    spark_env: Path,
) -> None:
    """Our server died, another program took its port, server.pid stayed: Nudge refuses that
    port rather than sending the warehouse (and taking cohorts) from whoever listens there."""
    from nudge.core.settings import ConfigError, load_settings
    from nudge.core.spark import ensure_local_server

    port = int(os.environ["NUDGE_SPARK_CONNECT_PORT"])
    squatter = _start(["not-spark"], port)
    spark_env.mkdir(parents=True)
    (spark_env / "server.pid").write_text(str(squatter.pid))
    try:
        with pytest.raises(ConfigError, match=f"NUDGE_SPARK_CONNECT_PORT={port}: something else"):
            ensure_local_server(load_settings(check=False))
    finally:
        os.killpg(squatter.pid, 9)
        squatter.wait()


def test_the_embedded_server_inherits_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """It has no login and Spark SQL reads its environment (reflect(... 'getenv' ...)): what it
    inherits is what Spark needs, none of Nudge's settings or secrets."""
    from nudge.core.spark import server_environment

    secrets = {
        "SENDGRID_API_KEY": "SG.x",
        "NUDGE_SMTP_PASSWORD": "x",
        "NUDGE_SECRET_KEY": "x",
        "NUDGE_WAREHOUSE": "spark://local[2]",
        "NUDGE_STATE_STORE": "postgresql://u:x@db/nudge",
        "DAGSTER_PG_PASSWORD": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "SPARK_REMOTE": "sc://127.0.0.1:1",  # dbt's, set once a server runs
    }
    needed = {"PATH": "/usr/bin", "HOME": "/home/n", "JAVA_HOME": "/jvm", "LC_ALL": "C.UTF-8"}
    for name, value in {**secrets, **needed}.items():
        monkeypatch.setenv(name, value)
    env = server_environment()
    assert needed.items() <= env.items()
    assert not set(secrets) & set(env)


# Tries each URL of argv[1:] as a client would: "ok", or the error on one line.
_CLIENT = """
import sys
from pyspark.sql.connect.session import SparkSession
for url in sys.argv[1:]:
    session = SparkSession.builder.remote(url).create()
    try:
        print("ok" if session.sql("select 1 as one").collect()[0].one == 1 else "wrong")
    except Exception as exc:
        print(" ".join(str(exc).split())[:500])
    finally:
        session.client.close()
"""


@pytest.mark.spark
def test_the_embedded_server_takes_only_clients_with_its_token(
    spark_server: dict[str, str],
) -> None:
    """Another user of the machine can reach 127.0.0.1, not the token: without it (or with a
    wrong one) Spark answers nothing; the token is in a file only Nudge's user reads, and in no
    command line (`ps` shows every user's). The clients run in their own process, as another
    user's would (and a Connect session leaves process-wide state behind)."""
    from nudge.core.spark import TOKEN_FILE

    token_file = Path(spark_server["NUDGE_SPARK_DIR"]) / TOKEN_FILE
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    port = spark_server["NUDGE_SPARK_CONNECT_PORT"]
    urls = [
        f"sc://localhost:{port}/;token=not-{token}",
        f"sc://localhost:{port}",
        f"sc://localhost:{port}/;token={token}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT, *urls],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    )  # fmt: skip
    wrong, missing, right = done.stdout.splitlines()
    for refused in (wrong, missing):
        assert "UNAUTHENTICATED" in refused.upper() or "token" in refused.lower(), refused
    assert right == "ok"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert token.encode() not in cmdline.read_bytes()
        except OSError:  # a process that ended meanwhile
            continue
