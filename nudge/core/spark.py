"""Spark as the warehouse: one Spark Connect server per warehouse, local or a cluster's.

Every process that touches a Spark warehouse (ingestion and evaluations in the Dagster run, dbt
in its own process, `nudge status`) talks to the same Spark Connect server, so that they share
one catalog. `sc://HOST:PORT` names a server someone else runs (Databricks, EMR, Dataproc, or
your own). `spark://local[N]` is an embedded Spark: Nudge starts a Spark Connect server from the
`pyspark` package itself, bound to 127.0.0.1, keeping its tables (Parquet) and its metastore
(Derby) under NUDGE_SPARK_DIR, and leaves it running for the next command, as a database server
would be; `stop_local_server` (and `nudge spark stop`) ends it. It takes only clients that show
its token: a random one made at each start, kept in NUDGE_SPARK_DIR/server.token (mode 0600), so
another user of the machine cannot use the port (Spark SQL reads and writes files as Nudge's
user).

pyspark is the optional extra `nudge[spark]`; nothing here imports it until Spark is asked for.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from nudge.core.settings import ConfigError, Settings, WarehouseUrl

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_CONNECT_PORT = 15002  # pyspark's, for sc://HOST without a port
# A JVM, its Derby metastore and the gRPC service take 10-20 s to come up on 2 cores.
START_TIMEOUT_S = 180.0


def _pyspark_home() -> Path:
    try:
        import pyspark
    except ImportError:
        raise ConfigError(
            "NUDGE_WAREHOUSE: a Spark warehouse needs the spark extra: "
            "pip install 'nudge[spark]' (or -r requirements.spark.lock)"
        ) from None
    return Path(pyspark.__file__).parent


def local_server_conf(settings: Settings, master: str) -> dict[str, str]:
    """The embedded server's Spark configuration: everything under NUDGE_SPARK_DIR."""
    home = settings.spark_dir.resolve()
    return {
        "spark.master": master,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(settings.spark_connect_port),
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(home / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={home / 'metastore_db'};create=true"
        ),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={home}",
        # A laptop's data: a handful of shuffle partitions, not the cluster default of 200.
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.session.timeZone": "UTC",
        # dbt-spark's insert_overwrite replaces only the partitions a run touches.
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.ui.enabled": "false",
        "spark.sql.ansi.enabled": "false",
        # No session keeps a table's file list: dbt's session rewrites the tables that the
        # run's own session reads next (else FILE_NOT_EXIST on the old files).
        "spark.sql.filesourceTableRelationCacheSize": "0",
    }


TOKEN_FILE = "server.token"


def _new_token(home: Path) -> str:
    """A fresh token for the server about to start, readable by this user only."""
    token = secrets.token_urlsafe(32)
    path = home / TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def _local_remote(home: Path, port: int) -> str:
    """The embedded server's Connect URL, with its token.

    "localhost", not 127.0.0.1: pyspark sends a token over plain TCP only to localhost (gRPC's
    local credentials); to any other host it insists on TLS, which the server does not speak."""
    try:
        token = (home / TOKEN_FILE).read_text().strip()
    except FileNotFoundError:  # a server started by a Nudge before tokens
        token = ""
    return f"sc://localhost:{port}/;token={token}" if token else f"sc://localhost:{port}"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    """One process at a time decides whether to start the server."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.lock").open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# What the embedded server's JVM inherits: what Spark needs, never Nudge's credentials. Whoever
# holds its token runs Spark SQL, which reads the JVM's environment (reflect('java.lang.System',
# 'getenv', ..)): a leak of the token must not become a leak of the SMTP password.
_SERVER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR", "TZ")
_SERVER_ENV_PREFIXES = ("LC_", "JAVA_", "_JAVA_", "JDK_", "SPARK_", "PYSPARK_", "HADOOP_")


def server_environment() -> dict[str, str]:
    """This process's environment cut to what the embedded Spark needs."""
    return {
        k: v
        for k, v in os.environ.items()
        if (k in _SERVER_ENV or k.startswith(_SERVER_ENV_PREFIXES))
        # A client's settings: the server would take itself for a client of another.
        and k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")
    }


def ensure_local_server(settings: Settings) -> str:
    """The embedded Spark's Connect URL, starting its server if none answers."""
    url = settings.warehouse_url
    assert url.spark_master is not None
    port = settings.spark_connect_port
    home = settings.spark_dir.resolve()
    # The port answers for our server only while the process in server.pid runs (a port is
    # bound once): a pid file alone would hand the warehouse to whatever took the port since.
    if _answers(port) and _server_pid(home) is not None:
        return _local_remote(home, port)
    with _start_lock(home):
        if _answers(port):
            if _server_pid(home) is None:
                raise ConfigError(
                    f"NUDGE_SPARK_CONNECT_PORT={port}: something else listens there; "
                    "choose another port for the embedded Spark"
                )
            return _local_remote(home, port)
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ConfigError(
                "NUDGE_WAREHOUSE=spark://...: the embedded Spark needs Java 17 or newer "
                "(install a JDK, or set JAVA_HOME)"
            )
        spark_home = _pyspark_home()
        cmd = [str(spark_home / "bin" / "spark-submit"), "--class", SERVER_CLASS]
        for key, value in local_server_conf(settings, url.spark_master).items():
            cmd += ["--conf", f"{key}={value}"]
        log_path = home / "connect-server.log"
        env = {
            **server_environment(),
            "SPARK_HOME": str(spark_home),
            "PYSPARK_PYTHON": sys.executable,
            # In the environment, not a --conf: a command line is readable by every user.
            "SPARK_CONNECT_AUTHENTICATE_TOKEN": _new_token(home),
        }
        log.info("starting the embedded Spark (%s) on 127.0.0.1:%s", url.spark_master, port)
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=home,
                env=env,
                start_new_session=True,  # outlives this command, like a database server
            )
        (home / "server.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port):
            if proc.poll() is not None:
                (home / "server.pid").unlink(missing_ok=True)
                raise ConfigError(
                    f"the embedded Spark exited at start (status {proc.returncode}); see {log_path}"
                )
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"the embedded Spark did not answer on port {port} within "
                    f"{START_TIMEOUT_S:.0f} s; see {log_path}"
                )
            time.sleep(0.25)
    return _local_remote(home, port)


@dataclass(frozen=True)
class LocalServer:
    """The embedded Spark's server as `nudge spark status` shows it (never its token)."""

    folder: Path
    port: int
    pid: int | None  # None: not running
    answers: bool  # something accepts connections on the port (the server, once up)

    @property
    def running(self) -> bool:
        return self.pid is not None


def _server_pid(home: Path) -> int | None:
    """The pid in `server.pid` if that process runs and is a Spark Connect server.

    A pid file can outlive its server (a reboot, a killed JVM) and its number be reused by
    an unrelated process: that one is neither reported as the server nor signalled."""
    try:
        pid = int((home / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process
        return None
    proc = Path(f"/proc/{pid}")  # Linux; elsewhere the pid is trusted
    if not Path("/proc/self").is_dir():
        return pid
    try:
        cmdline = (proc / "cmdline").read_bytes()  # a zombie's is empty: it no longer runs
    except OSError:  # it exited meanwhile
        return None
    return pid if SERVER_CLASS.encode() in cmdline else None


def local_server_status(settings: Settings) -> LocalServer:
    """Whether the embedded Spark of this Spark folder runs, and where."""
    home = settings.spark_dir.resolve()
    pid = _server_pid(home)
    port = settings.spark_connect_port
    return LocalServer(home, port, pid, _answers(port))


def stop_local_server(settings: Settings) -> bool:
    """Stop the embedded Spark's server if this Spark folder started one: whether it ran."""
    home = settings.spark_dir.resolve()
    pid = _server_pid(home)
    (home / "server.pid").unlink(missing_ok=True)
    (home / TOKEN_FILE).unlink(missing_ok=True)
    if pid is None:
        return False
    close_sessions()  # before the server goes: see close_sessions
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            # Reap it when this process started it (else it stays a zombie that kill(0) sees).
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    return True


def remote_url(settings: Settings) -> str:
    """The Spark Connect URL every process of this warehouse uses (starting a local server)."""
    url = settings.warehouse_url
    if url.kind != "spark":
        raise ConfigError(f"NUDGE_WAREHOUSE={url.shown!r} is not a Spark warehouse")
    if url.spark_remote:
        return url.spark_remote
    return ensure_local_server(settings)


_SESSIONS: dict[str, Any] = {}
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "false",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def _check_reachable(url: WarehouseUrl) -> None:
    """A Spark Connect server that does not answer fails in one line now; pyspark itself would
    retry for minutes. The message names host and port only, never the URL's token."""
    parsed = urlparse("http" + url.url[2:])  # sc://... as pyspark reads it
    host, port = parsed.hostname or "", parsed.port or DEFAULT_CONNECT_PORT
    try:
        with socket.create_connection((host, port), timeout=10):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{url.env}: cannot reach the Spark Connect server at {host}:{port} "
            f"({exc.strerror or exc}); check that it runs and the URL is right"
        ) from None


def spark_session(settings: Settings) -> SparkSession:
    """This process's Spark Connect session to the warehouse (one per URL, reused)."""
    remote = remote_url(settings)
    session = _SESSIONS.get(remote)
    if session is None:
        if settings.warehouse_url.spark_remote:
            _check_reachable(settings.warehouse_url)
        _pyspark_home()
        from pyspark.sql import SparkSession

        with warnings.catch_warnings():
            # pyspark 4.3 warns that it does not fully support pandas 3; Nudge hands it no
            # pandas frames (rows are collected as tuples).
            warnings.filterwarnings("ignore", category=FutureWarning, module="pyspark")
            session = SparkSession.builder.remote(remote).getOrCreate()
        # What Nudge's SQL assumes, whatever a cluster's defaults (the embedded server sets
        # the same server-wide; dbt's sessions get them from profiles.yml).
        for key, value in SESSION_CONF.items():
            session.conf.set(key, value)
        for schema in ("raw", "analytics", "nudge"):
            session.sql(f"create database if not exists {schema}")
        if not _SESSIONS:
            # Registered after pyspark's own exit hook, so it runs first (atexit is LIFO).
            atexit.register(close_sessions)
        _SESSIONS[remote] = session
    return session


def close_sessions() -> None:
    """Close this process's Spark Connect channels without a call to the server.

    At exit pyspark asks the server to clean its caches and retries for many minutes when the
    server is gone (a stopped embedded Spark, a cluster that went away): a closed client skips
    that. The server ends an abandoned session by itself."""
    sessions = list(_SESSIONS.values())
    _SESSIONS.clear()
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:
        return
    default = ConnectSession._default_session
    if default is not None and all(default is not s for s in sessions):
        sessions.append(default)
    for session in sessions:
        with contextlib.suppress(Exception):
            session.client.close()
    ConnectSession._default_session = None
