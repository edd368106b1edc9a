"""Batch scoring in this process: the `batch` entrypoint on the version's local artifact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workloads.jobs.batch import BatchBackend, BatchJobError, BatchResult
from workloads.registry.store import ModelVersion


@dataclass
class _Plan:
    version: ModelVersion
    input_uri: str
    output: Path


class LocalBatch(BatchBackend):
    name = "local"

    def _prepare(
        self, version: ModelVersion, input_uri: str, output_uri: str, image_tag: str | None
    ) -> _Plan:
        from workloads.local.env import uri_path

        if image_tag:
            raise BatchJobError("--image-tag: local batch runs this checkout's code, no image")
        if output_uri.startswith("s3://"):
            raise BatchJobError(f"{output_uri}: local batch writes a local file")
        return _Plan(version, input_uri, uri_path(output_uri))

    def _run(self, plan: _Plan) -> BatchResult:
        from workloads.local.env import uri_path
        from workloads.serving.batch import score

        model_dir = uri_path(plan.version.model_uri)
        rows = score(plan.input_uri, plan.output, model_dir)
        return BatchResult(
            job="local",
            version=plan.version.version,
            output_uri=str(plan.output),
            messages=[f"scored {rows} rows with {plan.version.group} v{plan.version.version}"],
        )
