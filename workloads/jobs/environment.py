"""The training container's environment, built in one place for every backend.

The inverse of `workloads.training.contract.resolve`: what a job sets so that
`python -m workloads.train` finds its channels, model and output folders, checkpoints,
failure file and hyperparameters. (SageMaker sets the `SM_*` paths itself; the Kubernetes
and local backends set them here.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping


def container_env(
    *,
    channels: Mapping[str, str],
    model_dir: str,
    output_dir: str,
    checkpoint_dir: str,
    failure_file: str,
    hyperparameters: Mapping[str, str],
    model_uri: str | None = None,
    checkpoint_uri: str | None = None,
) -> dict[str, str]:
    env = {f"SM_CHANNEL_{name.upper()}": uri for name, uri in channels.items()}
    env |= {
        "SM_MODEL_DIR": model_dir,
        "SM_OUTPUT_DATA_DIR": output_dir,
        "MLINFRA_CHECKPOINT_DIR": checkpoint_dir,
        "SM_CHECKPOINT_DIR": checkpoint_dir,
        "MLINFRA_FAILURE_FILE": failure_file,
        "SM_HPS": json.dumps(dict(hyperparameters), sort_keys=True),
    }
    if model_uri:
        env["MLINFRA_MODEL_URI"] = model_uri
    if checkpoint_uri:
        env["MLINFRA_CHECKPOINT_URI"] = checkpoint_uri
    return env
