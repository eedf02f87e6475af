"""New or changed dump files in the landing folder start ingest runs of their dt= partitions."""

import json

import dagster as dg

from nudge.core.settings import load_settings
from nudge.ingest.watch import changes_since, event_file_versions
from orchestration.defs.ingest.jobs import ingest_job
from orchestration.defs.shared.partitions import days


@dg.sensor(
    name="landing_files",
    job=ingest_job,
    minimum_interval_seconds=60,
    description="Ingests the dt= partition of every new or changed event dump file.",
)
def landing_files(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    seen = {rel: tuple(v) for rel, v in json.loads(context.cursor or "{}").items()}
    changes = changes_since(seen, event_file_versions(load_settings().landing_dir))
    valid = set(days.get_partition_keys())
    requests = []
    for dt in sorted(changes.dts):
        key = dt.isoformat()
        if key not in valid:
            context.log.warning(f"dt={key} is outside the day partitions; not ingested")
            continue
        requests.append(dg.RunRequest(run_key=changes.run_key(dt), partition_key=key))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(changes.cursor))


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[landing_files])
