"""Where captured traffic lies, for both backends.

SageMaker writes under `<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/` (it appends
the endpoint and variant names itself), so a destination is the folder above all endpoints:
`<logs>/data-capture`. Local endpoints write the same layout under the local logs bucket.
"""

from __future__ import annotations

CAPTURE_FOLDER = "data-capture"
GROUND_TRUTH_FOLDER = "ground-truth"
REPORTS_FOLDER = "monitoring"


def capture_destination(logs_uri: str) -> str:
    """The data-capture destination of a logs bucket (`s3://b` or `file:///...`)."""
    return f"{logs_uri.rstrip('/')}/{CAPTURE_FOLDER}"


def endpoint_capture_uri(destination: str, endpoint: str, variant: str | None = None) -> str:
    """Where one endpoint's (and variant's) capture files are under a destination."""
    uri = f"{destination.rstrip('/')}/{endpoint}"
    return f"{uri}/{variant}" if variant else uri


def ground_truth_uri(logs_uri: str, endpoint: str) -> str:
    return f"{logs_uri.rstrip('/')}/{GROUND_TRUTH_FOLDER}/{endpoint}"


def reports_uri(logs_uri: str, endpoint: str) -> str:
    return f"{logs_uri.rstrip('/')}/{REPORTS_FOLDER}/{endpoint}"
