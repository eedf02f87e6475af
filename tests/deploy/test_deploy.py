"""The docker deployment (docker/): the compose file, the images' commands, `.env.example`.

There is no Docker engine here. The compose file is checked by a Compose implementation when one
is installed (Debian's `docker-compose`, or the `docker compose` plugin) and structurally with
PyYAML in any case; the images' commands run here as plain processes on a real Postgres.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest
import yaml
from conftest import PG_HOST, PG_PORT, require_postgres
from support.net import free_port

from nudge.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_SPARK = DOCKER / "docker-compose.spark.yml"  # layered over COMPOSE, `--profile spark`
ENV_EXAMPLE = REPO / ".env.example"
CONTRACT = REPO.parent / "shared" / "spec" / "contract.md"  # beside the clone on CI
DAGSTER_SERVICES = ("user_code", "webserver", "daemon")
T = TypeVar("T")


# ----------------------------------------------------------------------------- reading the files


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the mounts of files and folders of this repository."""
    mounts = {}
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (DOCKER / source).resolve()
    return mounts


def env_refs(node: Any) -> set[str]:
    """The variables a Dagster config reads with `{env: NAME}`."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node))
    return set()


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def dockerfile_cmd(path: Path) -> list[str]:
    [cmd] = [json.loads(args) for op, args in dockerfile(path) if op == "CMD"]
    return cmd


def env_example() -> dict[str, str]:
    """Every variable .env.example mentions, commented or not, with its value there."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def settings_variables() -> set[str]:
    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None) or []
        upper = [c for c in choices if isinstance(c, str) and c.isupper()]
        names.add(upper[0] if upper else f"NUDGE_{field.upper()}")
    return names


# ----------------------------------------------------------------------------- the compose file


def test_compose_services_start_in_order_on_a_healthy_postgres() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", *DAGSTER_SERVICES, "proxy", "serve", "spark-connect"}
    # `nudge serve` runs the user-code image (built by user_code) on a healthy warehouse.
    assert services["serve"]["image"] == services["user_code"]["image"]
    assert services["serve"]["command"][:2] == ["nudge", "serve"]
    assert services["serve"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(services["serve"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in DAGSTER_SERVICES:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    # The webserver shows the code location only once its gRPC server answers.
    assert services["webserver"]["depends_on"]["user_code"]["condition"] == "service_healthy"
    assert services["daemon"]["depends_on"]["user_code"]["condition"] in (
        "service_started",
        "service_healthy",
    )
    for name in ("postgres", *DAGSTER_SERVICES):
        assert services[name].get("restart") == "unless-stopped", name


def test_every_dagster_container_opens_the_same_postgres_instance() -> None:
    wanted = env_refs(yaml.safe_load((DOCKER / "dagster.yaml").read_text()))
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD"} <= wanted
    for name in DAGSTER_SERVICES:
        svc = service(name)
        env = svc["environment"]
        home = env["DAGSTER_HOME"]
        mounted = bind_mounts(svc).get(f"{home}/dagster.yaml")
        assert mounted == DOCKER / "dagster.yaml", f"{name} mounts {mounted} as dagster.yaml"
        assert wanted <= set(env), f"{name} lacks {sorted(wanted - set(env))}"
        assert env["DAGSTER_PG_HOST"] == "postgres", name


def test_webserver_and_daemon_read_the_docker_workspace() -> None:
    for name in ("webserver", "daemon"):
        svc = service(name)
        command = svc["command"]
        workspace = command[command.index("-w") + 1]
        mounted = bind_mounts(svc).get(workspace)
        assert mounted == DOCKER / "workspace.yaml", f"{name} mounts {mounted} at {workspace}"
    assert service("webserver")["command"][:1] == ["dagster-webserver"]
    assert service("daemon")["command"][:2] == ["dagster-daemon", "run"]
    # They hold no user code and no Nudge secrets: only user_code gets .env.
    for name in ("webserver", "daemon"):
        assert "env_file" not in service(name), name
    assert service("user_code")["env_file"] == "../.env"


def test_workspace_points_at_the_code_server_of_the_user_code_image() -> None:
    [entry] = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"]
    grpc = entry["grpc_server"]
    assert grpc["location_name"] == "nudge"
    assert grpc["host"] in compose()["services"]
    user_code = service(grpc["host"])
    build = user_code["build"]
    cmd = dockerfile_cmd((DOCKER / build["context"]).resolve() / build["dockerfile"])
    assert cmd[:3] == ["dagster", "api", "grpc"]
    assert cmd[cmd.index("-p") + 1] == str(grpc["port"])
    assert cmd[cmd.index("-h") + 1] == "0.0.0.0"
    assert cmd[cmd.index("-m") + 1] == "orchestration.definitions"
    health = user_code["healthcheck"]["test"]
    assert health[health.index("-p") + 1] == str(grpc["port"])


def test_images_build_from_the_repository_root_with_files_that_exist() -> None:
    for name in DAGSTER_SERVICES:
        build = service(name)["build"]
        assert (DOCKER / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).is_file(), name
    for name, svc in compose()["services"].items():
        for container_path, host_path in bind_mounts(svc).items():
            assert host_path.exists(), f"{name} mounts {host_path} at {container_path}"


def test_user_code_image_installs_the_lock_and_builds_the_manifest() -> None:
    path = DOCKER / "Dockerfile.user_code"
    steps = dockerfile(path)
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [args for op, args in steps if op == "RUN"]
    [install] = [r for r in runs if "pip install --require-hashes" in r]
    assert 'pip install --require-hashes --no-deps -r "$lock"' in install
    # The lock is the runtime one, or with NUDGE_EXTRAS=spark the one that adds nudge[spark].
    assert '"") lock=requirements.runtime.lock' in install
    assert "spark) lock=requirements.spark.runtime.lock" in install
    assert any("pip install --no-deps -e ." in r for r in runs)
    assert any("dbt parse" in r and "--project-dir dbt_project" in r for r in runs)
    # Whatever the image copies, its .dockerignore lets into the build context.
    allowed = {
        ln[1:].rstrip("/")
        for ln in Path(f"{path}.dockerignore").read_text().splitlines()
        if ln.startswith("!")
    }
    copied = [src for op, args in steps if op == "COPY" for src in args.split()[:-1]]
    assert copied and set(copied) <= allowed


def test_dagster_image_pins_dagster_as_pyproject_does_and_holds_no_user_code() -> None:
    pins = {
        dep.split("==")[0]: dep
        for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    steps = dockerfile(DOCKER / "Dockerfile.dagster")
    assert steps[0] == ("FROM", "python:3.11-slim")
    install = " ".join(args for op, args in steps if op == "RUN" and "pip install" in args)
    assert "--require-hashes --no-deps -r /tmp/requirements.runtime.lock" in install
    runtime = lock_pins(REPO / "requirements.runtime.lock")
    for package in ("dagster", "dagster-webserver", "dagster-postgres"):
        assert f"{package}=={runtime[package]}" == pins[package], package
    copied = " ".join(args for op, args in steps if op == "COPY")
    for package in ("nudge", "email_jobs", "orchestration", "dbt_project"):
        assert package not in copied


DEV_TOOLS = ("pytest", "hypothesis", "aiosmtpd", "ruff", "playwright", "pip-tools")


def lock_pins(path: Path) -> dict[str, str]:
    """name -> version of a pip lock file (names normalized)."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_runtime_lock_pins_every_requirement_with_hashes_and_no_dev_tool() -> None:
    path = REPO / "requirements.runtime.lock"
    # One requirement a logical line (continuations joined), comments dropped.
    text = re.sub(r"\\\n", " ", path.read_text())
    requirements = [
        ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert requirements
    for req in requirements:
        assert re.match(r"^[A-Za-z0-9_.\-]+==\S+ ", req), req
        assert "--hash=sha256:" in req, f"no hash: {req.split()[0]}"
    runtime, dev = lock_pins(path), lock_pins(REPO / "requirements.lock")
    assert not [p for p in runtime if p.startswith(DEV_TOOLS)], sorted(runtime)
    # The images run the versions `make install` and the tests run.
    assert {p: v for p, v in runtime.items() if dev.get(p) != v} == {}
    direct = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in direct:
        name = re.split(r"[=<>]", dep)[0].lower()
        assert name in runtime, name


def test_images_install_only_the_hashed_runtime_lock_and_copy_no_tests() -> None:
    for name in ("Dockerfile.user_code", "Dockerfile.dagster", "Dockerfile.spark_connect"):
        steps = dockerfile(DOCKER / name)
        installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
        locks = [a for a in installs if " -r " in a]
        assert locks and all("--require-hashes" in a and "runtime.lock" in a for a in locks), name
        copied = " ".join(args for op, args in steps if op == "COPY")
        assert "requirements.lock" not in copied.split(), name
        for path in ("tests", "benchmarks", ".env"):
            assert path not in copied.replace("./", "").split(), (name, path)
        ignore = Path(f"{DOCKER / name}.dockerignore").read_text().splitlines()
        assert "**" in ignore, name  # the build context holds only what is let in


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], check=False, capture_output=True)
        if plugin.returncode == 0:
            return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


def run_compose_config(
    tmp_path: Path, env_lines: list[str], *, spark: bool = False
) -> subprocess.CompletedProcess:
    """`compose config` on a copy of docker/ with a .env beside it, as in a checkout; `spark`:
    with docker-compose.spark.yml and its profile."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose implementation (apt-get install docker-compose)")
    root = tmp_path / "checkout"
    if not root.exists():
        shutil.copytree(DOCKER, root / "docker")
    (root / ".env").write_text("\n".join(env_lines) + "\n")
    files = ["-f", "docker/docker-compose.yml"]
    if spark:
        files += ["-f", "docker/docker-compose.spark.yml", "--profile", "spark"]
    return subprocess.run(
        [*cli, "--env-file", ".env", *files, "config"],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "NUDGE_"))},
    )


def test_compose_accepts_the_file_with_env_example_as_dotenv(tmp_path: Path) -> None:
    example = ENV_EXAMPLE.read_text().splitlines()
    lines = [*example, *PASSWORDS, "NUDGE_EMAIL_BACKEND=smtp"]
    proc = run_compose_config(tmp_path, lines)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    values = env_example()
    user_code_env = resolved["user_code"]["environment"]
    # The warehouse role, never the superuser, nor Dagster's storage role.
    assert user_code_env["NUDGE_WAREHOUSE"] == (
        f"postgresql://{values['NUDGE_WAREHOUSE_USERNAME']}:wh-s3cret@postgres:5432/"
        f"{values['NUDGE_WAREHOUSE_DB']}"
    )
    assert user_code_env["NUDGE_EMAIL_BACKEND"] == "smtp"  # from .env
    assert "NUDGE_EMAIL_BACKEND" not in resolved["webserver"]["environment"]
    postgres_env = resolved["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD"] == "su-s3cret"
    # The superuser's password reaches the postgres container only.
    for name, svc in resolved.items():
        if name != "postgres":
            assert "su-s3cret" not in json.dumps(svc), name
    for name in DAGSTER_SERVICES:
        env = resolved[name]["environment"]
        assert env["DAGSTER_PG_USERNAME"] != postgres_env["POSTGRES_USER"], name
    # The proxy profile resolves as well.
    assert "proxy" not in resolved or resolved["proxy"]["profiles"] == ["proxy"]


PASSWORDS = [
    "POSTGRES_PASSWORD=su-s3cret",
    "DAGSTER_PG_PASSWORD=dg-s3cret",
    "NUDGE_WAREHOUSE_PASSWORD=wh-s3cret",
]


@pytest.mark.parametrize("missing", [p.split("=")[0] for p in PASSWORDS])
def test_compose_refuses_to_start_without_each_postgres_password(
    tmp_path: Path, missing: str
) -> None:
    lines = [*ENV_EXAMPLE.read_text().splitlines(), *PASSWORDS]
    proc = run_compose_config(tmp_path, [ln for ln in lines if not ln.startswith(f"{missing}=")])
    assert proc.returncode != 0
    assert missing in proc.stderr


# ----------------------------------------------------------------------------- .env.example


def test_env_example_lists_every_setting_and_every_compose_variable() -> None:
    listed = set(env_example())
    missing = settings_variables() - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
    compose_text = COMPOSE.read_text() + COMPOSE_SPARK.read_text()
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", compose_text))
    assert interpolated <= listed, f".env.example lacks {sorted(interpolated - listed)}"


@pytest.mark.skipif(not CONTRACT.exists(), reason=f"{CONTRACT} is not beside this checkout")
def test_env_example_lists_every_variable_of_the_contract() -> None:
    section = CONTRACT.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    first_cells = [row.split("|")[1] for row in section.splitlines() if row.startswith("| `")]
    variables = {v for cell in first_cells for v in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert variables, "the contract's configuration table was not found"
    assert not variables - set(env_example()), sorted(variables - set(env_example()))


# ----------------------------------------------------------------------------- on Postgres


INIT_SCRIPT = DOCKER / "postgres-init" / "nudge-roles.sh"


@contextmanager
def deployment_roles() -> Iterator[dict[str, str]]:
    """docker/postgres-init/ run as the postgres image runs it on a first start (psql as the
    superuser), with unique role and database names; yields the variables compose would pass
    (the passwords included) and drops what it created."""
    require_postgres()
    import psycopg2

    if not shutil.which("psql"):
        pytest.skip("psql is not installed")
    suffix = uuid.uuid4().hex[:10]
    roles = {
        "DAGSTER_PG_USERNAME": f"nudge_test_dagster_{suffix}",
        "DAGSTER_PG_PASSWORD": f"dg-{suffix}",
        "DAGSTER_PG_DB": f"nudge_test_dg_{suffix}",
        "NUDGE_WAREHOUSE_USERNAME": f"nudge_test_wh_{suffix}",
        "NUDGE_WAREHOUSE_PASSWORD": f"wh-{suffix}",
        "NUDGE_WAREHOUSE_DB": f"nudge_test_wh_{suffix}",
    }
    env = {
        **os.environ,
        "PGHOST": PG_HOST,
        "PGPORT": str(PG_PORT),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        **roles,
    }
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        proc = subprocess.run(
            ["bash", str(INIT_SCRIPT)], check=False, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        # The passwords travel by environment, never on psql's command line.
        assert roles["DAGSTER_PG_PASSWORD"] not in INIT_SCRIPT.read_text()
        yield roles
    finally:
        with admin.cursor() as cur:
            for db in (roles["DAGSTER_PG_DB"], roles["NUDGE_WAREHOUSE_DB"]):
                cur.execute(f'drop database if exists "{db}" with (force)')
            for role in (roles["DAGSTER_PG_USERNAME"], roles["NUDGE_WAREHOUSE_USERNAME"]):
                cur.execute(f'drop role if exists "{role}"')
        admin.close()


@pytest.mark.postgres
def test_init_script_creates_a_role_for_dagster_and_one_for_the_warehouse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg2
    from dagster_postgres import PostgresRunStorage

    from email_jobs.ledger import ensure_schema
    from nudge.core.settings import load_settings
    from nudge.core.warehouse import connect

    with deployment_roles() as roles:
        dagster_user, warehouse_user = (
            roles["DAGSTER_PG_USERNAME"],
            roles["NUDGE_WAREHOUSE_USERNAME"],
        )
        dagster_db, warehouse_db = roles["DAGSTER_PG_DB"], roles["NUDGE_WAREHOUSE_DB"]
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
        with admin, admin.cursor() as cur:
            cur.execute(
                "select rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication"
                " from pg_roles where rolname in (%s, %s)",
                [dagster_user, warehouse_user],
            )
            found = {r[0]: r[1:] for r in cur.fetchall()}
            assert found == {dagster_user: (False,) * 4, warehouse_user: (False,) * 4}
            cur.execute(
                "select datname, pg_get_userbyid(datdba) from pg_database"
                " where datname in (%s, %s)",
                [dagster_db, warehouse_db],
            )
            assert dict(cur.fetchall()) == {dagster_db: dagster_user, warehouse_db: warehouse_user}
        admin.close()

        def connects(user: str, db: str) -> bool:
            try:
                psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname=db).close()
            except psycopg2.OperationalError as exc:
                assert "permission denied" in str(exc), exc
                return False
            return True

        # Neither role reaches the other's database.
        assert not connects(warehouse_user, dagster_db)
        assert not connects(dagster_user, warehouse_db)

        # The warehouse role creates its schemas and runs Nudge's ledger DDL in its database.
        monkeypatch.setenv(
            "NUDGE_WAREHOUSE", f"postgresql://{warehouse_user}@{PG_HOST}:{PG_PORT}/{warehouse_db}"
        )
        with connect(load_settings()) as wh:
            ensure_schema(wh)
            with wh.transaction():
                wh.execute("create schema if not exists analytics")
                wh.execute("create table analytics.t (x int)")
        with (
            psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=warehouse_user, dbname=warehouse_db
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(
                "select nspname, pg_get_userbyid(nspowner) from pg_namespace"
                " where nspname in ('nudge', 'analytics', 'public')"
            )
            assert {owner for _, owner in cur.fetchall()} == {warehouse_user}
            # Its rights stop at its own database: no new databases, no new roles.
            for statement in ("create role intruder", "select pg_read_file('/etc/passwd')"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(statement)
                conn.rollback()

        # Dagster's run storage initializes its tables with the Dagster role.
        storage = PostgresRunStorage(
            f"postgresql://{dagster_user}:{roles['DAGSTER_PG_PASSWORD']}@{PG_HOST}:{PG_PORT}/{dagster_db}"
        )
        try:
            assert storage.get_runs() == []
        finally:
            storage.dispose()


def test_init_script_refuses_a_shared_role_or_the_superuser() -> None:
    base = {
        "POSTGRES_USER": "postgres",
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": "x",
        "DAGSTER_PG_DB": "dagster",
        "NUDGE_WAREHOUSE_USERNAME": "nudge",
        "NUDGE_WAREHOUSE_PASSWORD": "y",
        "NUDGE_WAREHOUSE_DB": "nudge_warehouse",
    }
    bad = [
        {"NUDGE_WAREHOUSE_USERNAME": "dagster"},
        {"NUDGE_WAREHOUSE_DB": "dagster"},
        {"DAGSTER_PG_USERNAME": "postgres"},
        {"NUDGE_WAREHOUSE_PASSWORD": ""},
    ]
    for change in bad:
        env = {"PATH": os.environ["PATH"], **base, **change}
        # No PGHOST: if the script got as far as psql, it would fail differently.
        proc = subprocess.run(
            ["bash", str(INIT_SCRIPT)], check=False, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 1 and "nudge-roles.sh" in proc.stderr, (change, proc.stderr)


class Processes:
    """Long-running processes in their own process groups, with their output in log files."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}.log (last lines)\n"
            + "\n".join(
                (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
            )
            for name in self.procs
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{self.logs()}")

    def stop(self) -> list[str]:
        """SIGTERM every group; SIGKILL what has not exited 30 s later. Returns those killed."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        killed = []
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed.append(name)
        return killed


def poll(what: str, check: Callable[[], T | None], procs: Processes, timeout: float) -> T:
    """Call `check` until it returns a truthy value, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            last = check()
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            last = exc  # not up yet: connection refused, a partial answer, ...
        if last and not isinstance(last, Exception):
            return last  # type: ignore[return-value]
        time.sleep(0.5)  # the polling interval; the deadline bounds the wait
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{procs.logs()}")


def local_argv(argv: list[str], replace: dict[str, str]) -> list[str]:
    """An image's command for this machine: the venv's executable, local host/port/paths."""
    exe = Path(sys.executable).parent / argv[0]
    return [str(exe) if exe.exists() else argv[0], *(replace.get(a, a) for a in argv[1:])]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        payload = json.load(resp)
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename
        ... on RepositoryLocation {
          repositories { name jobs { name } schedules { name } sensors { name } } }
        ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""
DAEMONS_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""
SENSOR_TICKS_QUERY = """
query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { __typename
    ... on Sensor { sensorState { status ticks(limit: 5) { status error { message } } } }
    ... on PythonError { message } } }
"""
LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } } }
"""


@pytest.fixture
def roles() -> Iterator[dict[str, str]]:
    """Dagster's and the warehouse's roles and databases, as the postgres image creates them."""
    with deployment_roles() as created:
        yield created


@pytest.mark.postgres
@pytest.mark.integration
def test_image_commands_serve_nudge_on_postgres(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    roles: dict[str, str],
    dbt_manifest: None,
) -> None:
    """user_code, webserver and daemon as compose starts them, run here as plain processes,
    connected as the roles docker/postgres-init/ creates (none a superuser)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DOCKER / "dagster.yaml", home / "dagster.yaml")
    grpc_port, web_port = free_port(), free_port()
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=grpc_port)
    workspace_file = tmp_path / "workspace.yaml"
    workspace_file.write_text(yaml.safe_dump(workspace))

    warehouse = (
        f"postgresql://{roles['NUDGE_WAREHOUSE_USERNAME']}:{roles['NUDGE_WAREHOUSE_PASSWORD']}"
        f"@{PG_HOST}:{PG_PORT}/{roles['NUDGE_WAREHOUSE_DB']}"
    )
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USERNAME": roles["DAGSTER_PG_USERNAME"],
        "DAGSTER_PG_PASSWORD": roles["DAGSTER_PG_PASSWORD"],
        "DAGSTER_PG_DB": roles["DAGSTER_PG_DB"],
        "NUDGE_WAREHOUSE": warehouse,
        "NUDGE_LANDING_DIR": str(tmp_path / "landing"),
        "NUDGE_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NUDGE_EMAIL_BACKEND": "outbox",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # Create the instance's tables once, before three processes open it at the same time.
    instance = dg.DagsterInstance.get()

    image_paths = {
        "0.0.0.0": "127.0.0.1",
        "/opt/dagster/app/workspace.yaml": str(workspace_file),
    }
    grpc_cmd = dockerfile_cmd(DOCKER / "Dockerfile.user_code")
    health_cmd = service("user_code")["healthcheck"]["test"][1:]  # drop "CMD"
    procs = Processes(tmp_path)
    try:
        # As compose runs it: with its shutdown grace period (calls in flight at SIGTERM).
        grace = service("user_code")["environment"]["DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD"]
        procs.start(
            "user_code",
            local_argv(grpc_cmd, {**image_paths, "4000": str(grpc_port)}),
            {**child_env, "DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD": grace},
        )

        def grpc_healthy() -> bool:
            # The compose healthcheck's own command.
            argv = local_argv(health_cmd, {"4000": str(grpc_port)})
            return (
                subprocess.run(argv, check=False, capture_output=True, env=child_env).returncode
                == 0
            )

        # As compose does: webserver and daemon start once the code server is healthy.
        poll("the code server's health check", grpc_healthy, procs, timeout=180)
        web_cmd = service("webserver")["command"]
        procs.start(
            "webserver", local_argv(web_cmd, {**image_paths, "3000": str(web_port)}), child_env
        )
        procs.start("daemon", local_argv(service("daemon")["command"], image_paths), child_env)

        def server_info() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/server_info", timeout=5) as r:
                return json.load(r)

        info = poll("the webserver's /server_info", server_info, procs, timeout=120)
        assert info["dagster_version"] == dg.__version__

        def nudge_location() -> dict | None:
            entries = graphql(web_port, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            [entry] = [e for e in entries if e["name"] == "nudge"]
            return entry if entry["loadStatus"] == "LOADED" else None

        entry = poll("the nudge location to load", nudge_location, procs, timeout=120)
        location = entry["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location
        [repo] = location["repositories"]
        assert {"nudge_evaluate", "nudge_send"} <= {j["name"] for j in repo["jobs"]}
        assert {s["name"] for s in repo["schedules"]} == {"nudge_daily"}
        assert {s["name"] for s in repo["sensors"]} == {
            "landing_files",
            "send_after_evaluation",
            "record_run_failures",
            "outcomes_after_send",
        }

        def daemons_healthy() -> list[dict] | None:
            statuses = graphql(web_port, DAEMONS_QUERY)["instance"]["daemonHealth"]
            required = [s for s in statuses["allDaemonStatuses"] if s["required"]]
            return required if required and all(s["healthy"] for s in required) else None

        required = poll("every required daemon to be healthy", daemons_healthy, procs, timeout=120)
        beats = instance.get_daemon_heartbeats()
        assert {s["daemonType"] for s in required} <= set(beats)
        assert "QUEUED_RUN_COORDINATOR" in beats

        # Turned on as docs/production.md says, the sensors tick in the daemon without errors.
        dagster_cli = local_argv(["dagster"], {})
        for argv in (["schedule", "start", "nudge_daily"], ["sensor", "start", "--start-all"]):
            subprocess.run(
                [*dagster_cli, *argv, "-w", str(workspace_file)],
                check=True,
                capture_output=True,
                env=child_env,
            )
        for sensor in ("landing_files", "send_after_evaluation", "record_run_failures"):
            selector = {
                "repositoryLocationName": "nudge",
                "repositoryName": repo["name"],
                "sensorName": sensor,
            }

            def ticked(selector: dict = selector) -> dict | None:
                found = graphql(web_port, SENSOR_TICKS_QUERY, {"selector": selector})
                state = found["sensorOrError"]["sensorState"]
                return state if state["ticks"] else None

            state = poll(f"a tick of {sensor}", ticked, procs, timeout=120)
            assert state["status"] == "RUNNING", sensor
            assert all(t["status"] != "FAILURE" for t in state["ticks"]), state["ticks"]

        # The production path of a run: queued by the webserver, dequeued by the daemon,
        # launched through the code server, recorded in Postgres.
        params = {
            "selector": {
                "repositoryLocationName": "nudge",
                "repositoryName": repo["name"],
                "jobName": "nudge_send",
            },
            "runConfigData": {},
        }
        launched = graphql(web_port, LAUNCH_MUTATION, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def finished() -> dg.DagsterRun | None:
            run = instance.get_run_by_id(run_id)
            return run if run and run.is_finished else None

        run = poll("the launched run to finish", finished, procs, timeout=240)
        events = {e.dagster_event_type for e in instance.all_logs(run_id) if e.dagster_event_type}
        # Enqueued by the webserver; only the daemon's queue could have started it.
        assert {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING} <= events
        assert run.status == dg.DagsterRunStatus.SUCCESS, procs.logs()

        assert procs.stop() == [], "a process ignored SIGTERM for 30 s"
    finally:
        procs.stop()
        instance.dispose()


# ----------------------------------------------------------------------------- the spark profile


def spark_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_SPARK.read_text())


def conf_pairs(command: list[str]) -> dict[str, str]:
    """`--conf key=value` arguments of a spark-submit command."""
    assert command[::2] == ["--conf"] * (len(command) // 2), command
    return dict(arg.split("=", 1) for arg in command[1::2])


def test_spark_connect_runs_the_embedded_servers_confs_on_a_volume() -> None:
    """The compose server is configured as nudge.core.spark configures the embedded one; only
    where it listens, its master and its folder differ."""
    from nudge.core.spark import local_server_conf

    svc = service("spark-connect")
    volume, landing = svc["volumes"]
    name, home = volume.split(":")
    # Ingestion passes the landing files' paths to Spark: the server sees them where the code
    # location lists them, read-only.
    user_code_landing = [v for v in service("user_code")["volumes"] if "/landing" in v]
    assert [landing] == user_code_landing and landing.endswith(":ro")
    assert landing.rsplit(":", 2)[1] == service("user_code")["environment"]["NUDGE_LANDING_DIR"]
    assert name in compose()["volumes"]  # a named volume: the warehouse outlives the container
    memory = "${NUDGE_SPARK_DRIVER_MEMORY:-2g}"
    settings = Settings(
        warehouse="spark://local[*]",
        spark_dir=home,
        spark_connect_port=15002,
        spark_driver_memory=memory,
        _env_file=None,
    )
    expected = local_server_conf(settings, "local[*]")
    # Inside the compose network only (see the network test below).
    expected["spark.connect.grpc.binding.address"] = "0.0.0.0"
    assert conf_pairs(svc["command"]) == expected
    steps = dockerfile(DOCKER / "Dockerfile.spark_connect")
    assert ("WORKDIR", home) in steps
    health = " ".join(svc["healthcheck"]["test"])
    assert "15002" in health


def test_spark_connect_is_reachable_by_user_code_alone_and_published_nowhere() -> None:
    """Spark Connect has no login: the server listens on an internal network that only the
    code location joins; the public-facing `nudge serve` and the Dagster UI cannot reach it."""
    base, spark = compose(), spark_compose()
    server = base["services"]["spark-connect"]
    assert server["profiles"] == ["spark"]
    assert "ports" not in server and "expose" not in server
    assert server["networks"] == ["spark"]
    assert base["networks"]["spark"] == {"internal": True}
    for name, svc in base["services"].items():
        if name != "spark-connect":
            assert "spark" not in (svc.get("networks") or []), name
    assert set(spark["services"]) == {"user_code", "serve"}
    assert spark["services"]["user_code"]["networks"] == ["default", "spark"]
    assert "networks" not in spark["services"]["serve"]
    assert spark["services"]["user_code"]["depends_on"] == {
        "spark-connect": {"condition": "service_healthy"}
    }
    port = conf_pairs(server["command"])["spark.connect.grpc.binding.port"]
    for name in ("user_code", "serve"):
        env = spark["services"][name]["environment"]
        assert env["NUDGE_WAREHOUSE"] == f"sc://spark-connect:{port}", name
        assert env["NUDGE_STATE_STORE"].startswith("postgresql://"), name


def test_spark_images_install_hashed_locks_and_hold_no_secret() -> None:
    """The server image: Debian's Java 17 and PyPI's pyspark at the version Nudge's client
    runs, nothing else; the code image gets nudge[spark] only from a hashed lock."""
    steps = dockerfile(DOCKER / "Dockerfile.spark_connect")
    op, base = steps[0]
    assert op == "FROM" and base.startswith("python:3.11-slim-bookworm"), base  # Debian 12
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "apt-get install -y --no-install-recommends openjdk-17-jre-headless" in runs
    assert "pip install --require-hashes --no-deps -r" in runs
    [entry] = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    from nudge.core.spark import SERVER_CLASS

    assert entry[0].endswith("pyspark/bin/spark-submit") and entry[1:] == ["--class", SERVER_CLASS]
    assert [args for op, args in steps if op == "USER"] == ["spark"]
    server_lock = REPO / "requirements.spark-connect.runtime.lock"
    assert set(lock_pins(server_lock)) == {"pyspark", "py4j"}
    spark_pins = lock_pins(REPO / "requirements.spark.lock")
    for lock in (server_lock, REPO / "requirements.spark.runtime.lock"):
        assert_hashed(lock)
        pins = lock_pins(lock)
        assert pins["pyspark"] == spark_pins["pyspark"], lock.name
    # The code image with NUDGE_EXTRAS=spark: the runtime set plus the spark extra, at the
    # versions `make install` and `make install-spark` put in .venv, and no dev tool.
    spark_runtime = lock_pins(REPO / "requirements.spark.runtime.lock")
    wanted = {**lock_pins(REPO / "requirements.runtime.lock"), **spark_pins}
    assert spark_runtime == {p: v for p, v in wanted.items() if p in spark_runtime}
    assert set(lock_pins(REPO / "requirements.runtime.lock")) <= set(spark_runtime)
    assert {"dbt-spark", "pyspark", "pyarrow"} <= set(spark_runtime)
    assert not [p for p in spark_runtime if p.startswith(DEV_TOOLS)]
    # No credential is baked into any image: none is an ARG or ENV of any Dockerfile.
    for path in DOCKER.glob("Dockerfile.*"):
        if path.suffix == ".dockerignore":
            continue
        for op, args in dockerfile(path):
            if op in ("ARG", "ENV"):
                assert not re.search(r"PASSWORD|TOKEN|SECRET|_KEY", args), (path.name, args)
    assert "!requirements.spark.runtime.lock" in (
        (DOCKER / "Dockerfile.user_code.dockerignore").read_text().splitlines()
    )


def assert_hashed(path: Path) -> None:
    text = re.sub(r"\\\n", " ", path.read_text())
    requirements = [
        ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert requirements, path.name
    for req in requirements:
        assert re.match(r"^[A-Za-z0-9_.\-]+==\S+ ", req), req
        assert "--hash=sha256:" in req, f"{path.name}: no hash for {req.split()[0]}"


def test_compose_resolves_the_spark_profile_with_the_state_on_postgres(tmp_path: Path) -> None:
    """`compose config` with docker-compose.spark.yml: the code location's warehouse is the
    spark-connect service, its state store the warehouse role's Postgres database, whatever a
    .env written for local use says; the server gets no secret."""
    lines = [
        *ENV_EXAMPLE.read_text().splitlines(),
        *PASSWORDS,
        "NUDGE_STATE_STORE=duckdb:///data/state.duckdb",  # a local .env's
        "NUDGE_WAREHOUSE=sc://spark.example.com:443/;token=dapi-local-s3cret",
    ]
    proc = run_compose_config(tmp_path, lines, spark=True)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    values = env_example()
    postgres = (
        f"postgresql://{values['NUDGE_WAREHOUSE_USERNAME']}:wh-s3cret@postgres:5432/"
        f"{values['NUDGE_WAREHOUSE_DB']}"
    )
    for name in ("user_code", "serve"):
        env = resolved[name]["environment"]
        assert env["NUDGE_WAREHOUSE"] == "sc://spark-connect:15002", name
        assert env["NUDGE_STATE_STORE"] == postgres, name
    assert resolved["user_code"]["build"]["args"] == {"NUDGE_EXTRAS": "spark"}
    server = resolved["spark-connect"]
    assert "ports" not in server and "environment" not in server
    for secret in ("su-s3cret", "dg-s3cret", "wh-s3cret", "dapi-local-s3cret"):
        assert secret not in json.dumps(server), secret
    conf = conf_pairs(server["command"])
    assert conf["spark.driver.memory"] == "2g"

    # Without the spark file, the state store is the warehouse's database, not the local one.
    proc = run_compose_config(tmp_path, lines)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    for name in ("user_code", "serve"):
        assert resolved[name]["environment"]["NUDGE_STATE_STORE"] == "", name
        assert resolved[name]["environment"]["NUDGE_WAREHOUSE"] == postgres, name
