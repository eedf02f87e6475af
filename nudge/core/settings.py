"""Configuration from environment variables (and an optional `.env`), as the contract lists them.

Validation happens here, before any work starts, so that a bad setting fails with one line that
names the variable and says what to do.
"""

from __future__ import annotations

import os
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
    """`duckdb:///path.duckdb` or `postgresql://user[:password]@host[:port]/db`."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        url = _without_password(url)  # the messages below echo the URL
        if parsed.scheme == "duckdb":
            # duckdb:///relative/path.duckdb -> "relative/path.duckdb"; duckdb:////abs -> "/abs"
            raw = url[len("duckdb:///") :] if url.startswith("duckdb:///") else ""
            if not raw:
                raise ConfigError(
                    f"NUDGE_WAREHOUSE={url!r}: a DuckDB warehouse is written duckdb:///path/to/file.duckdb"
                )
            self.kind: Literal["duckdb", "postgres"] = "duckdb"
            self.path = Path(raw).expanduser().resolve()
        elif parsed.scheme in ("postgresql", "postgres"):
            if not parsed.hostname or not parsed.path.strip("/"):
                raise ConfigError(
                    f"NUDGE_WAREHOUSE={url!r}: a Postgres warehouse is written "
                    "postgresql://user@host:port/database"
                )
            try:
                port = parsed.port
            except ValueError:
                raise ConfigError(
                    f"NUDGE_WAREHOUSE={url!r}: the port is not a number; a Postgres warehouse is "
                    "written postgresql://user@host:port/database"
                ) from None
            self.kind = "postgres"
            self.host = parsed.hostname
            self.port = port or 5432
            self.user = unquote(parsed.username or "postgres")
            self.password = unquote(parsed.password or "")
            self.database = parsed.path.strip("/")
        else:
            raise ConfigError(
                f"NUDGE_WAREHOUSE={url!r}: unknown scheme {parsed.scheme!r}; use "
                "duckdb:///path.duckdb or postgresql://user@host:port/db"
            )

    def __repr__(self) -> str:
        return f"WarehouseUrl({self.kind})"


def _without_password(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for messages."""
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
        _ = self.warehouse_url
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


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a validation error becomes a one-line ConfigError."""
    try:
        return Settings(**overrides).check()  # type: ignore[arg-type]
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
