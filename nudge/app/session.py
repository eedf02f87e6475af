"""What every `nudge` command that runs a Dagster job needs first: settings exported for the
processes it starts, the Dagster instance, a current dbt manifest, campaigns that load. Shared by
the command line and the demo."""

from __future__ import annotations

from nudge.core.settings import Settings, export_runtime_env, load_settings


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


def command_settings() -> Settings:
    settings = load_settings()
    export_runtime_env(settings)
    return settings


def prepare_pipeline(settings: Settings) -> None:
    """Everything a Dagster run needs: the instance folder and a current dbt manifest. Every
    refusal comes before the instance folder exists: a refused command starts nothing."""
    from nudge.app.preflight import check_ready
    from nudge.app.runner import ensure_dagster_home
    from nudge.core.dbt_project import ensure_manifest

    check_ready(settings)
    ensure_manifest()
    # A broken cohort yml or template fails here, in one line naming the model, rather than
    # deep inside the code location's loading.
    from email_jobs.campaigns import CampaignError
    from email_jobs.unsubscribe import check_unsubscribe_ready
    from orchestration.defs.email.campaigns import manifest_campaigns

    try:
        campaigns = manifest_campaigns()
    except CampaignError as exc:
        raise UserError(str(exc)) from None
    # smtp/sendgrid without signed unsubscribe links: refused before any work (one line).
    check_unsubscribe_ready(
        settings,
        settings.email_backend,
        [(c.name, c.unsubscribe_group_id) for c in campaigns if c.enabled],
    )
    ensure_dagster_home(settings)


def dagster_instance():
    from nudge.app.runner import open_instance

    return open_instance()
