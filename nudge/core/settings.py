"""Configuration from environment variables (and an optional `.env`), as the contract lists them.

Validation happens here, before any work starts, so that a bad setting fails with one line that
names the variable and says what to do.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Backend = Literal["outbox", "smtp", "sendgrid"]


class ConfigError(Exception):
    """A setting is wrong; the message names it and says what to do."""


class WarehouseUrl:
    """`duckdb:///path.duckdb`, `postgresql://user[:password]@host[:port]/db`, `spark://local[N]`
    (an embedded Spark, run by Nudge as a local Spark Connect server) or `sc://HOST:PORT[/;k=v]`
    (a Spark Connect server: a cluster). `env` names the variable in messages."""

    def __init__(self, url: str, env: str = "NUDGE_WAREHOUSE") -> None:
        self.url = url
        self.env = env
        # urlparse reads spark://local[2] as an IPv6 host and fails: take the scheme by hand.
        parsed = urlparse("spark://local" if url.startswith("spark://") else url)
        url = _without_password(url)  # the messages below echo the URL
        self.kind: Literal["duckdb", "postgres", "spark"]
        if parsed.scheme == "duckdb":
            # duckdb:///relative/path.duckdb -> "relative/path.duckdb"; duckdb:////abs -> "/abs"
            raw = url[len("duckdb:///") :] if url.startswith("duckdb:///") else ""
            if not raw:
                raise ConfigError(
                    f"{env}={url!r}: a DuckDB database is written duckdb:///path/to/file.duckdb"
                )
            self.kind = "duckdb"
            self.path = Path(raw).expanduser().resolve()
        elif parsed.scheme in ("postgresql", "postgres"):
            if not parsed.hostname or not parsed.path.strip("/"):
                raise ConfigError(
                    f"{env}={url!r}: a Postgres database is written "
                    "postgresql://user@host:port/database"
                )
            try:
                port = parsed.port
            except ValueError:
                raise ConfigError(
                    f"{env}={url!r}: the port is not a number; a Postgres database is "
                    "written postgresql://user@host:port/database"
                ) from None
            self.kind = "postgres"
            self.host = parsed.hostname
            self.port = port or 5432
            self.user = unquote(parsed.username or "postgres")
            self.password = unquote(parsed.password or "")
            self.database = parsed.path.strip("/")
        elif parsed.scheme == "spark":
            master = _SPARK_LOCAL.fullmatch(url.removeprefix("spark://"))
            if not master:
                raise ConfigError(
                    f"{env}={url!r}: an embedded Spark is written spark://local[N] "
                    "(N worker threads, or *); a cluster is sc://HOST:PORT"
                )
            self.kind = "spark"
            self.spark_master: str | None = master.group(0)
            self.spark_remote: str | None = None
        elif parsed.scheme == "sc":
            _check_spark_connect(url, env)
            self.kind = "spark"
            self.spark_master = None
            self.spark_remote = self.url
        else:
            raise ConfigError(
                f"{env}={_without_token(url)!r}: unknown scheme {parsed.scheme!r}; use "
                "duckdb:///path.duckdb, postgresql://user@host:port/db, spark://local[N] or "
                "sc://HOST:PORT"
            )

    @property
    def shown(self) -> str:
        """The URL with its password or token masked, for messages and metadata."""
        return _without_token(_without_password(self.url))

    def same_database(self, other: WarehouseUrl) -> bool:
        """Whether both name the same database (then one connection serves both roles)."""
        if self.kind != other.kind:
            return False
        if self.kind == "duckdb":
            return self.path == other.path
        if self.kind == "postgres":
            return (self.host, self.port, self.database) == (other.host, other.port, other.database)
        return False

    def __repr__(self) -> str:
        return f"WarehouseUrl({self.kind})"


_SPARK_LOCAL = re.compile(r"local(\[(\d+|\*)\])?")


def _check_spark_connect(url: str, env: str) -> None:
    """Refuse what pyspark's Spark Connect client would refuse: its messages echo the whole
    URL, token included, so a bad URL must be caught here, in a message that masks it."""
    shown = _without_token(url)
    form = "sc://HOST:PORT (options after /;, e.g. sc://host:443/;use_ssl=true;token=...)"
    parsed = urlparse("http" + url[2:])  # as pyspark reads it
    try:
        _ = parsed.port  # ValueError when it is not a number
    except ValueError:
        raise ConfigError(
            f"{env}={shown!r}: the port is not a number from 1 to 65535; write {form}"
        ) from None
    if not parsed.hostname:
        raise ConfigError(f"{env}={shown!r}: a Spark Connect server is written {form}")
    if parsed.path not in ("", "/"):
        raise ConfigError(f"{env}={shown!r}: no path after the host; write {form}")
    for option in filter(None, parsed.params.split(";")):
        if option.count("=") != 1:
            key = option.split("=", 1)[0]
            raise ConfigError(
                f"{env}={shown!r}: the option {key!r} is written key=value with one '=' "
                "(write an '=' inside a value as %3D)"
            )


def _without_token(url: str) -> str:
    """A Spark Connect URL with its `token=` parameter masked, for messages."""
    return re.sub(r"(?i)(token=)[^;]*", r"\1***", url)


def _without_password(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for messages."""
    if url.startswith("spark://"):
        return url
    parsed = urlparse(url)
    if not parsed.password:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NUDGE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    landing_dir: Path = Path("data/landing")
    warehouse: str = "duckdb:///data/warehouse.duckdb"
    # Where the nudge.* tables live (contract "Warehouses"); unset: the warehouse itself, which
    # a Spark warehouse cannot be (it has no transactions).
    state_store: str | None = None
    # An embedded Spark (spark://local[N]): its local Spark Connect server's port, and the folder
    # that holds its tables (Parquet) and its metastore.
    spark_connect_port: int = 15002
    spark_dir: Path = Path("data/spark")
    spark_driver_memory: str = "2g"
    email_backend: str = "outbox"
    outbox_dir: Path = Path("data/outbox")

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    # starttls | implicit | none; unset: starttls with a password, else none (`smtp_tls_mode`).
    smtp_tls: Literal["starttls", "implicit", "none"] | None = None
    smtp_starttls: bool | None = None  # the older switch: true = starttls, false = none
    smtp_ca_file: Path | None = None  # CA bundle to verify the relay with (default: the system's)

    sendgrid_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SENDGRID_API_KEY", "sendgrid_api_key")
    )
    sendgrid_host: str | None = None
    sendgrid_sandbox: bool = False

    from_email: str = "nudge@localhost"
    dagster_home: Path = Field(
        default=Path("data/dagster_home"),
        validation_alias=AliasChoices("DAGSTER_HOME", "dagster_home"),
    )

    # Guards (contract, section "Guards").
    max_send_lag_days: float = 2
    freshness_hours: float = 48
    min_day_volume_share: float = 0.1
    max_rejected_share: float = 0.01
    max_sends_per_evaluation: int = 500
    max_entry_share: float = 0.5
    # Frequency cap across campaigns, per recipient, within a day of the send's evaluation
    # instant; 0 turns it off (email_jobs.ledger.claim_for_send).
    max_emails_per_recipient_per_day: int = 1

    # Operational knobs beyond the contract.
    duckdb_memory_limit: str = "2GB"
    daily_cron: str = "0 6 * * *"
    send_concurrency: int = 8
    # A send run's claim is its own for this long unless its heartbeat (every quarter of it)
    # extends it; only an expired claim counts as left by a crashed run (email_jobs.ledger).
    send_lease_seconds: float = Field(default=120.0, ge=4)
    # Without NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL (outbox only): a placeholder link for the
    # template, as before signed links existed (email_jobs.render).
    unsubscribe_url: str = "https://example.com/unsubscribe?c={campaign}&e={entity}"

    # Signed unsubscribe links and `nudge serve` (contract "After the send").
    secret_key: SecretStr | None = None
    public_url: str | None = None
    sendgrid_webhook_public_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SENDGRID_WEBHOOK_PUBLIC_KEY", "sendgrid_webhook_public_key"),
    )

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        """repr() and str() mask the URLs' passwords and tokens, as SecretStr fields are."""
        for name, value in super().__repr_args__():
            if name in ("warehouse", "state_store") and isinstance(value, str):
                value = _without_token(_without_password(value))
            yield name, value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        parsed = urlparse(v.strip())
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.query
            or parsed.fragment
            or parsed.username
            or parsed.password
        ):
            raise ValueError(
                "write the URL recipients reach `nudge serve` at, e.g. https://nudge.example.com "
                "(http or https, a host, optionally a path; no query or login)"
            )
        return v.strip().rstrip("/")

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        if len(v.get_secret_value()) < 16:
            raise ValueError(
                "too short: use at least 16 random characters (e.g. `openssl rand -hex 32`)"
            )
        return v

    @field_validator("email_backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in ("outbox", "smtp", "sendgrid"):
            raise ValueError(f"unknown backend {v!r}; use outbox, smtp or sendgrid")
        return v

    @cached_property
    def warehouse_url(self) -> WarehouseUrl:
        return WarehouseUrl(self.warehouse)

    @cached_property
    def state_store_url(self) -> WarehouseUrl:
        """The state store: NUDGE_STATE_STORE, else the warehouse (DuckDB or Postgres)."""
        if not self.state_store:
            if self.warehouse_url.kind == "spark":
                raise ConfigError(
                    "NUDGE_STATE_STORE: a Spark warehouse needs a state store for the nudge.* "
                    "tables (ledger, suppressions...); set it to postgresql://user@host:port/db "
                    "or duckdb:///path.duckdb"
                )
            return self.warehouse_url
        url = WarehouseUrl(self.state_store, env="NUDGE_STATE_STORE")
        if url.kind == "spark":
            raise ConfigError(
                f"NUDGE_STATE_STORE={url.shown!r}: the state store must be transactional; use "
                "postgresql://user@host:port/db or duckdb:///path.duckdb"
            )
        return url

    @property
    def state_is_warehouse(self) -> bool:
        """One database holds both roles (then SQL may join the nudge.* tables and the models)."""
        return self.state_store_url is self.warehouse_url or self.state_store_url.same_database(
            self.warehouse_url
        )

    @property
    def smtp_tls_mode(self) -> Literal["starttls", "implicit", "none"]:
        """NUDGE_SMTP_TLS, else the NUDGE_SMTP_STARTTLS alias, else starttls with a password."""
        if self.smtp_tls is not None:
            return self.smtp_tls
        if self.smtp_starttls is not None:
            return "starttls" if self.smtp_starttls else "none"
        return "starttls" if self.smtp_password else "none"

    def _check_smtp(self) -> None:
        """SMTP never authenticates over a plain connection."""
        if self.smtp_tls_mode != "none" or not (self.smtp_user or self.smtp_password):
            return
        if self.smtp_tls is None and self.smtp_starttls is False:
            raise ConfigError(
                "NUDGE_SMTP_STARTTLS=false with NUDGE_SMTP_USER/NUDGE_SMTP_PASSWORD would send the "
                "password in clear; set NUDGE_SMTP_TLS=starttls (or implicit, port 465)"
            )
        raise ConfigError(
            "NUDGE_SMTP_TLS=none with NUDGE_SMTP_USER/NUDGE_SMTP_PASSWORD would send the password "
            "in clear; set NUDGE_SMTP_TLS=starttls (or implicit, port 465), or unset the login"
        )

    def check(self) -> Settings:
        """Raise ConfigError for settings that cannot work, before any work starts."""
        _ = self.warehouse_url, self.state_store_url
        if self.email_backend == "smtp":
            self._check_smtp()
        if bool(self.secret_key) != bool(self.public_url):
            # One without the other signs no link: say so now, not at the first send.
            missing = "NUDGE_PUBLIC_URL" if self.secret_key else "NUDGE_SECRET_KEY"
            raise ConfigError(
                f"{missing}: unsubscribe links need both NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL; "
                f"set {missing} too (or unset the other)"
            )
        if self.email_backend == "sendgrid" and not self.sendgrid_api_key:
            raise ConfigError(
                "NUDGE_EMAIL_BACKEND=sendgrid needs SENDGRID_API_KEY: create an API key with "
                "Mail Send permission in SendGrid and set it"
            )
        return self


def load_settings(*, check: bool = True, **overrides: object) -> Settings:
    """Settings from the environment; a validation error becomes a one-line ConfigError.

    `check=False` skips the checks across settings (`Settings.check`), for commands that need
    only a few of them (`nudge spark status` needs no state store or email backend)."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        return settings.check() if check else settings
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        env = field.upper() if field.isupper() else f"NUDGE_{field.upper()}"
        if field in ("sendgrid_api_key", "sendgrid_webhook_public_key"):
            env = field.upper()
        if field == "dagster_home":
            env = "DAGSTER_HOME"
        # One line naming the variable and its value; pydantic's "Value error, " prefix says
        # nothing to a user. Secrets are never echoed.
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        secret = field.endswith(("password", "api_key", "secret_key"))
        shown = f"={value!r}" if isinstance(value, str) and not secret else ""
        raise ConfigError(f"{env}{shown}: {msg}") from None


def export_runtime_env(settings: Settings) -> None:
    """Make the resolved settings visible to child processes (dbt, Dagster code servers).

    Called by the `nudge` command only, the one process that starts Dagster and dbt children;
    loading settings never writes the environment. A Dagster step that runs dbt hands it
    `dbt_env` itself (orchestration.defs.transform.assets)."""
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home.resolve()))
    os.environ.update(dbt_env(settings))


def dbt_env(settings: Settings) -> dict[str, str]:
    """The variables dbt_project/profiles.yml reads, derived from NUDGE_WAREHOUSE."""
    wh = settings.warehouse_url
    if wh.kind == "spark":
        # dbt-spark's `session` method: SparkSession.builder.getOrCreate() in dbt's process
        # connects to the Spark Connect server SPARK_REMOTE names (nudge.core.spark).
        from nudge.core.spark import remote_url

        return {"NUDGE_DBT_TARGET": "spark", "SPARK_REMOTE": remote_url(settings)}
    if wh.kind == "duckdb":
        return {
            "NUDGE_DBT_TARGET": "duckdb",
            "NUDGE_DBT_DUCKDB_PATH": str(wh.path),
            "NUDGE_DBT_MEMORY_LIMIT": settings.duckdb_memory_limit,
        }
    return {
        "NUDGE_DBT_TARGET": "postgres",
        "NUDGE_DBT_PG_HOST": wh.host,
        "NUDGE_DBT_PG_PORT": str(wh.port),
        "NUDGE_DBT_PG_USER": wh.user,
        "NUDGE_DBT_PG_PASSWORD": wh.password,
        "NUDGE_DBT_PG_DATABASE": wh.database,
    }


class _CampaignSwitches(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUDGE_", env_file=".env", extra="ignore")

    enabled_campaigns: str = ""
    holdout_shares: str = ""


def enabled_campaigns_setting() -> str:
    """NUDGE_ENABLED_CAMPAIGNS (comma-separated campaign names the operator turns on over their
    yml's `enabled: false`). Read on its own: loading the campaigns (the Dagster code location,
    `nudge status`) must not depend on every other setting being valid."""
    return _CampaignSwitches().enabled_campaigns


def holdout_shares_setting() -> str:
    """NUDGE_HOLDOUT_SHARES (`campaign=share,...`: holdout shares over the yml's, the way
    `nudge demo` gives the seed campaigns a control group without editing their yml)."""
    return _CampaignSwitches().holdout_shares
