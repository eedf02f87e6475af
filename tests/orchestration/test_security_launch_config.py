"""Launch config cannot choose what the code server runs (issue 12, hole 1).

Whoever reaches the Dagster UI can launch runs with any run config. Before the fix the `dbt`
resource took `dbt_executable`, `global_config_flags` and `project_dir` from it, so a launch
ran any program in the code server, which holds the SendGrid key and the warehouse password.
Every resource is now bound with an empty config schema: such a launch fails validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._config import ConfigTypeKind

from tests.support.dagster_web import dagster_webserver, graphql

JOBS = ("nudge_evaluate", "nudge_send", "nudge_ingest")


DBT_FIELDS = ("dbt_executable", "global_config_flags", "project_dir")


def attack(marker: Path) -> dict[str, Any]:
    """Run config that, if accepted, would make `dbt build` run `sh -c 'touch MARKER'`."""
    dbt = {
        "dbt_executable": "/bin/sh",
        "global_config_flags": ["-c", f"touch {marker}"],
        "project_dir": str(marker.parent),
    }
    return {"resources": {"dbt": {"config": dbt}}}


# Nudge's settings come from the environment only: a launch cannot redirect mail.
MAIL_ATTACK = {"resources": {"nudge": {"config": {"email_backend": "smtp"}}}}


@pytest.fixture(scope="module")
def repository(dbt_manifest: None) -> dg.RepositoryDefinition:
    from orchestration.definitions import defs

    return defs().get_repository_def()


def config_fields(config_type: Any, path: str = "") -> Iterator[str]:
    """Every field path under a config type (selectors and arrays included)."""
    for name, field in (getattr(config_type, "fields", None) or {}).items():
        yield f"{path}{name}"
        yield from config_fields(field.config_type, f"{path}{name}.")
    inner = getattr(config_type, "inner_type", None)
    if inner is not None:
        yield from config_fields(inner, f"{path}[].")


def test_no_resource_or_op_of_any_job_takes_config(repository: dg.RepositoryDefinition) -> None:
    """Structural: what a launch may set holds no program, path, recipient or backend."""
    jobs = repository.get_all_jobs()
    assert {j.name for j in jobs} >= set(JOBS)
    for job in jobs:
        root = job.run_config_schema.config_type.fields
        resources = list(config_fields(root["resources"].config_type))
        # Each resource has its `config` key, and nothing below it.
        settable = [p for p in resources if p.count(".") > 1]
        assert resources and settable == [], (job.name, settable)
        for op in job.graph.iterate_op_defs():
            schema = op.config_schema.as_field().config_type if op.config_schema else None
            fields = list(config_fields(schema)) if schema is not None else []
            assert fields == [], (job.name, op.name, fields)
            # An `Any` op config is accepted but must be read by nobody: no asset declares one.
            assert schema is None or schema.kind in (
                ConfigTypeKind.STRICT_SHAPE,
                ConfigTypeKind.ANY,
            ), (job.name, op.name, schema.kind)
        # No executor choice that imports modules or starts processes (forkserver preloads).
        executor = list(config_fields(root["execution"].config_type))
        assert not [p for p in executor if "preload_modules" in p], (job.name, executor)


@pytest.mark.parametrize("job_name", JOBS)
def test_run_config_choosing_dbts_program_is_invalid(
    repository: dg.RepositoryDefinition, job_name: str, tmp_path: Path
) -> None:
    job = repository.get_job(job_name)
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        dg.validate_run_config(job, attack(tmp_path / "pwned"))
    for field in DBT_FIELDS:
        assert field in str(refused.value), (field, str(refused.value))
    with pytest.raises(dg.DagsterInvalidConfigError, match="email_backend"):
        dg.validate_run_config(job, MAIL_ATTACK)
    # The same launch without that config is valid: the refusal is about those fields.
    dg.validate_run_config(job, {})


@pytest.mark.integration
def test_ui_launch_with_dbt_program_config_is_refused_and_runs_nothing(
    tmp_path: Path, dbt_manifest: None
) -> None:
    """Through the path the UI uses: GraphQL mutations on a real dagster-webserver process."""
    marker = tmp_path / "pwned"
    env = {
        "NUDGE_WAREHOUSE": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "NUDGE_LANDING_DIR": str(tmp_path / "landing"),
        "NUDGE_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NUDGE_EMAIL_BACKEND": "outbox",
    }
    with dagster_webserver(env=env) as base_url:
        [repo] = [
            r
            for e in graphql(base_url, REPOS_QUERY)["workspaceOrError"]["locationEntries"]
            for r in e["locationOrLoadError"]["repositories"]
        ]

        def params(job: str, run_config: dict[str, Any], tags: list[dict]) -> dict[str, Any]:
            return {
                "selector": {
                    "repositoryLocationName": "nudge",
                    "repositoryName": repo["name"],
                    "jobName": job,
                },
                "runConfigData": run_config,
                "executionMetadata": {"tags": tags},
            }

        partition = [{"key": "dagster/partition", "value": "2026-03-01"}]
        launches = [
            ("launchRun", "nudge_evaluate", partition),
            ("launchPipelineExecution", "nudge_evaluate", partition),  # the launchpad's mutation
            ("launchRun", "nudge_send", []),
        ]
        for mutation, job, tags in launches:
            answer = graphql(
                base_url,
                LAUNCH.replace("MUTATION", mutation),
                {"params": params(job, attack(marker), tags)},
            )[mutation]
            assert answer["__typename"] == "RunConfigValidationInvalid", (mutation, job, answer)
            messages = " ".join(e["message"] for e in answer["errors"])
            for field in DBT_FIELDS:
                assert field in messages, (mutation, job, field, messages)

            # The launchpad's own check agrees, and accepts the job without that config.
            for run_config, valid in ((attack(marker), False), ({}, True)):
                selector = {
                    "repositoryLocationName": "nudge",
                    "repositoryName": repo["name"],
                    "pipelineName": job,
                }
                checked = graphql(
                    base_url,
                    VALIDATE,
                    {"selector": selector, "runConfigData": run_config},
                )["isPipelineConfigValid"]["__typename"]
                assert (checked == "PipelineConfigValidationValid") is valid, (job, checked)

        runs = graphql(base_url, RUNS_QUERY)["runsOrError"]["results"]
        assert runs == [], f"a refused launch left runs behind: {runs}"
    assert not marker.exists()


REPOS_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
    ... on RepositoryLocation { repositories { name } } } } } } }
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) { MUTATION(executionParams: $params) { __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message } } }
"""
VALIDATE = """
query Valid($selector: PipelineSelector!, $runConfigData: RunConfigData) {
  isPipelineConfigValid(pipeline: $selector, runConfigData: $runConfigData, mode: "default") {
    __typename } }
"""
RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId status } } } }"
