"""What a batch scoring pod runs around `batch` (the serving image has Python and boto3):

    python -m workloads.jobs.batch.pod fetch-model MODEL_PACKAGE_ARN MODEL_DIR
    python -m workloads.jobs.batch.pod upload FILE s3://bucket/key

`fetch-model` puts the package's artifact (`model.tar.gz`) into MODEL_DIR, as SageMaker does
before it starts a container; `upload` copies the scored file to its S3 destination.
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def _s3_parts(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def fetch_model(package_arn: str, model_dir: str | Path, sagemaker: Any, s3: Any) -> str:
    """Download and unpack the package's model artifact; returns its URI."""
    package = sagemaker.describe_model_package(ModelPackageName=package_arn)
    url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    bucket, key = _s3_parts(url)
    with tempfile.TemporaryFile() as handle:
        s3.download_fileobj(bucket, key, handle)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as tar:
            tar.extractall(model_dir, filter="data")
    return url


def upload(path: str | Path, uri: str, s3: Any) -> None:
    bucket, key = _s3_parts(uri)
    s3.upload_file(str(path), bucket, key)


def main(argv: list[str] | None = None) -> int:
    import boto3

    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 3 and args[0] == "fetch-model":
            url = fetch_model(args[1], args[2], boto3.client("sagemaker"), boto3.client("s3"))
            print(f"model {args[1]} from {url} in {args[2]}")
        elif len(args) == 3 and args[0] == "upload":
            upload(args[1], args[2], boto3.client("s3"))
            print(f"uploaded {args[1]} to {args[2]}")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except ValueError as exc:
        print(f"batch pod: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
