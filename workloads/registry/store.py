"""The model registry: versions of a model group, their metrics, and approval.

Two backends behind one interface, picked from the platform descriptor:

- `SageMakerModelRegistry`: SageMaker Model Registry (model package groups created by the
  platform; each registration is a versioned model package).
- `LocalModelRegistry`: the same semantics on one machine, in a SQLite database: versions
  numbered from 1 per group, unique under concurrent registration from several processes
  (the next number is taken inside a write transaction), and crash-safe (a version is either
  fully registered or not at all).

Groups are addressed by the spec's logical model group name; the descriptor maps it to the
physical name.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict

from workloads.platform import ApprovalGate, ModelGroupRef, NotDeclaredError, PlatformDescriptor
from workloads.storage import SqliteDatabase

Status = Literal["PendingManualApproval", "Approved", "Rejected"]
STATUSES: tuple[str, ...] = get_args(Status)
_METRIC_PREFIX = "metric:"  # CustomerMetadataProperties key prefix for metrics


class ModelVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    group: str  # the spec's logical model group name
    version: int
    status: Status
    model_uri: str
    image: str | None
    metrics: dict[str, float]
    created_at: datetime
    arn: str | None
    description: str


class RegistryError(ValueError):
    """A request the registry refuses: unknown version, bad status, bad metrics."""


class UnknownGroupError(NotDeclaredError):
    kind = "model group"


class ModelRegistry(Protocol):
    def register(
        self,
        group: str,
        model_uri: str,
        metrics: Mapping[str, float],
        image: str | None = None,
        description: str = "",
    ) -> ModelVersion: ...

    def approve(self, group: str, version: int, reason: str = "") -> ModelVersion: ...

    def reject(self, group: str, version: int, reason: str = "") -> ModelVersion: ...

    def get(self, group: str, version: int) -> ModelVersion: ...

    def list_versions(self, group: str) -> list[ModelVersion]: ...

    def latest_approved(self, group: str) -> ModelVersion | None: ...

    def passes_gate(self, group: str, metrics: Mapping[str, float]) -> bool: ...


def gate_passes(gate: ApprovalGate | None, metrics: Mapping[str, float]) -> bool:
    """True when the metric the gate names is present, finite, and on the right side.

    A group without a gate is never approved automatically: it needs a person.
    """
    if gate is None:
        return False
    value = metrics.get(gate.metric)
    if value is None or not math.isfinite(float(value)):
        return False
    if gate.mode == "max":
        return float(value) >= gate.threshold
    return float(value) <= gate.threshold


def _clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"metrics must be a mapping of name to number, got {type(metrics)}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RegistryError(f"metric {name!r}: {value!r} is not a number")
        out[str(name)] = float(value)
    return out


class _Groups:
    """Logical -> physical model group names, and each group's gate."""

    def __init__(self, groups: Mapping[str, ModelGroupRef]):
        self.groups = dict(groups)

    def ref(self, group: str) -> ModelGroupRef:
        return UnknownGroupError.lookup(self.groups, group)

    def passes_gate(self, group: str, metrics: Mapping[str, float]) -> bool:
        return gate_passes(self.ref(group).gate, metrics)


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"version must be a positive integer, got {version!r}")
    return version


# --- local ----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    group_name  TEXT NOT NULL,
    version     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    model_uri   TEXT NOT NULL,
    image       TEXT,
    metrics     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (group_name, version)
);
CREATE INDEX IF NOT EXISTS versions_by_artifact ON versions (group_name, model_uri);
CREATE TABLE IF NOT EXISTS transitions (
    group_name TEXT NOT NULL,
    version    INTEGER NOT NULL,
    status     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         TEXT NOT NULL
);
"""


class LocalModelRegistry(_Groups):
    """The registry in `<root>/registry.db` (SQLite, WAL, one transaction per change).

    A `registry.db` that exists but cannot be read (truncated, malformed) is a
    `CorruptStoreError` naming it, never an empty registry.
    """

    def __init__(self, root: str | Path, groups: Mapping[str, ModelGroupRef]):
        super().__init__(groups)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "registry.db"
        self.db = SqliteDatabase(
            self.path,
            _SCHEMA,
            what="the model registry",
            remedy=(
                "restore it from a backup; to start an empty registry instead (its versions "
                "are lost), move the file away and run `mlinfra up`"
            ),
            pragmas=("journal_mode=WAL", "synchronous=FULL"),
        )

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE takes the write
        # lock up front, so two registrations cannot read the same max version).
        con = self.db.connect()
        con.row_factory = sqlite3.Row
        return con

    def _row(self, group: str, row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            group=group,
            version=row["version"],
            status=row["status"],
            model_uri=row["model_uri"],
            image=row["image"],
            metrics=json.loads(row["metrics"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            arn=None,
            description=row["description"],
        )

    def register(
        self,
        group: str,
        model_uri: str,
        metrics: Mapping[str, float],
        image: str | None = None,
        description: str = "",
    ) -> ModelVersion:
        """A new version for `model_uri`, or the one it already has: an artifact is
        registered once per group (checked inside the write transaction, so two processes
        registering one artifact at once get one version)."""
        physical = self.ref(group).name
        if not model_uri:
            raise RegistryError("model_uri is empty: register the artifact's location")
        clean = _clean_metrics(metrics)
        now = datetime.now(UTC).isoformat()
        with self.db.write(self._connect) as con:
            known = con.execute(
                "SELECT MIN(version) FROM versions WHERE group_name = ? AND model_uri = ?",
                (physical, model_uri),
            ).fetchone()[0]
            if known is not None:
                return self._row(group, self._select(con, physical, known))
            (version,) = con.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE group_name = ?",
                (physical,),
            ).fetchone()
            con.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    physical,
                    version,
                    "PendingManualApproval",
                    model_uri,
                    image,
                    json.dumps(clean),
                    now,
                    description,
                ),
            )
            con.execute(
                "INSERT INTO transitions VALUES (?, ?, ?, ?, ?)",
                (physical, version, "PendingManualApproval", "registered", now),
            )
        return self.get(group, version)

    def set_status(self, group: str, version: int, status: str, reason: str = "") -> ModelVersion:
        physical = self.ref(group).name
        _check_version(version)
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        with self.db.write(self._connect) as con:
            updated = con.execute(
                "UPDATE versions SET status = ? WHERE group_name = ? AND version = ?",
                (status, physical, version),
            ).rowcount
            if not updated:  # the transaction rolls back on the way out
                raise RegistryError(self._unknown(con, group, physical, version))
            con.execute(
                "INSERT INTO transitions VALUES (?, ?, ?, ?, ?)",
                (physical, version, status, reason, datetime.now(UTC).isoformat()),
            )
        return self.get(group, version)

    def approve(self, group: str, version: int, reason: str = "") -> ModelVersion:
        return self.set_status(group, version, "Approved", reason)

    def reject(self, group: str, version: int, reason: str = "") -> ModelVersion:
        return self.set_status(group, version, "Rejected", reason)

    @staticmethod
    def _unknown(con: sqlite3.Connection, group: str, physical: str, version: int) -> str:
        (count,) = con.execute(
            "SELECT COUNT(*) FROM versions WHERE group_name = ?", (physical,)
        ).fetchone()
        known = f"versions 1-{count}" if count else "no versions yet"
        return f"model group {group!r} has no version {version} ({known})"

    @staticmethod
    def _select(con: sqlite3.Connection, physical: str, version: int) -> sqlite3.Row | None:
        return con.execute(
            "SELECT * FROM versions WHERE group_name = ? AND version = ?", (physical, version)
        ).fetchone()

    def get(self, group: str, version: int) -> ModelVersion:
        physical = self.ref(group).name
        _check_version(version)
        with self.db.read(self._connect) as con:
            row = self._select(con, physical, version)
            if row is None:
                raise RegistryError(self._unknown(con, group, physical, version))
        return self._row(group, row)

    def list_versions(self, group: str) -> list[ModelVersion]:
        physical = self.ref(group).name
        with self.db.read(self._connect) as con:
            rows = con.execute(
                "SELECT * FROM versions WHERE group_name = ? ORDER BY version", (physical,)
            ).fetchall()
        return [self._row(group, row) for row in rows]

    def latest_approved(self, group: str) -> ModelVersion | None:
        physical = self.ref(group).name
        with self.db.read(self._connect) as con:
            row = con.execute(
                "SELECT * FROM versions WHERE group_name = ? AND status = 'Approved' "
                "ORDER BY version DESC LIMIT 1",
                (physical,),
            ).fetchone()
        return None if row is None else self._row(group, row)


# --- SageMaker ------------------------------------------------------------------------------


class SageMakerModelRegistry(_Groups):
    """Model package groups in SageMaker Model Registry (created by the platform's Pulumi)."""

    def __init__(
        self,
        groups: Mapping[str, ModelGroupRef],
        client: Any = None,
        default_image: str | None = None,
    ):
        super().__init__(groups)
        if client is None:
            import boto3

            client = boto3.client("sagemaker")
        self.client = client
        self.default_image = default_image

    def _version(self, group: str, package: Mapping[str, Any]) -> ModelVersion:
        containers = package.get("InferenceSpecification", {}).get("Containers", [{}])
        properties = package.get("CustomerMetadataProperties") or {}
        metrics = {
            key.removeprefix(_METRIC_PREFIX): float(value)
            for key, value in properties.items()
            if key.startswith(_METRIC_PREFIX)
        }
        return ModelVersion(
            group=group,
            version=int(package["ModelPackageVersion"]),
            status=package["ModelApprovalStatus"],
            model_uri=containers[0].get("ModelDataUrl", ""),
            image=containers[0].get("Image"),
            metrics=metrics,
            created_at=package["CreationTime"],
            arn=package["ModelPackageArn"],
            description=package.get("ModelPackageDescription", ""),
        )

    def _summaries(self, physical: str, **filters: Any) -> list[dict[str, Any]]:
        paginator = self.client.get_paginator("list_model_packages")
        summaries: list[dict[str, Any]] = []
        for page in paginator.paginate(
            ModelPackageGroupName=physical,
            SortBy="CreationTime",
            SortOrder="Descending",
            **filters,
        ):
            summaries.extend(page["ModelPackageSummaryList"])
        return summaries

    def _arn(self, group: str, version: int) -> str:
        physical = self.ref(group).name
        _check_version(version)
        summaries = self._summaries(physical)
        for summary in summaries:
            if int(summary.get("ModelPackageVersion", 0)) == version:
                return summary["ModelPackageArn"]
        known = f"versions 1-{len(summaries)}" if summaries else "no versions yet"
        raise RegistryError(f"model group {group!r} has no version {version} ({known})")

    def register(
        self,
        group: str,
        model_uri: str,
        metrics: Mapping[str, float],
        image: str | None = None,
        description: str = "",
    ) -> ModelVersion:
        physical = self.ref(group).name
        if not model_uri:
            raise RegistryError("model_uri is empty: register the artifact's location")
        image = image or self.default_image
        if not image:
            raise RegistryError(
                "image: SageMaker needs the serving image URI for a model package; pass image="
            )
        clean = _clean_metrics(metrics)
        if len(clean) > 50:
            raise RegistryError(f"{len(clean)} metrics: SageMaker keeps at most 50 per version")
        response = self.client.create_model_package(
            ModelPackageGroupName=physical,
            ModelPackageDescription=description,
            InferenceSpecification={
                "Containers": [{"Image": image, "ModelDataUrl": model_uri}],
                "SupportedContentTypes": ["application/json", "text/csv"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
            CustomerMetadataProperties={
                f"{_METRIC_PREFIX}{name}": repr(value) for name, value in clean.items()
            },
            ModelApprovalStatus="PendingManualApproval",
        )
        package = self.client.describe_model_package(ModelPackageName=response["ModelPackageArn"])
        return self._version(group, package)

    def set_status(self, group: str, version: int, status: str, reason: str = "") -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        arn = self._arn(group, version)
        current = self.client.describe_model_package(ModelPackageName=arn)
        # ModelApprovalStatus is always passed. The metric properties are passed back as
        # they are: a no-op on SageMaker, and it keeps them on clients that reset omitted
        # fields on update.
        self.client.update_model_package(
            ModelPackageArn=arn,
            ModelApprovalStatus=status,
            ApprovalDescription=reason,
            CustomerMetadataProperties=current.get("CustomerMetadataProperties") or {},
        )
        return self._version(group, self.client.describe_model_package(ModelPackageName=arn))

    def approve(self, group: str, version: int, reason: str = "") -> ModelVersion:
        return self.set_status(group, version, "Approved", reason)

    def reject(self, group: str, version: int, reason: str = "") -> ModelVersion:
        return self.set_status(group, version, "Rejected", reason)

    def get(self, group: str, version: int) -> ModelVersion:
        arn = self._arn(group, version)
        return self._version(group, self.client.describe_model_package(ModelPackageName=arn))

    def list_versions(self, group: str) -> list[ModelVersion]:
        physical = self.ref(group).name
        summaries = sorted(self._summaries(physical), key=lambda s: s["ModelPackageVersion"])
        return [
            self._version(
                group, self.client.describe_model_package(ModelPackageName=s["ModelPackageArn"])
            )
            for s in summaries
        ]

    def latest_approved(self, group: str) -> ModelVersion | None:
        physical = self.ref(group).name
        approved = self._summaries(physical, ModelApprovalStatus="Approved")
        if not approved:
            return None
        newest = max(approved, key=lambda s: s["ModelPackageVersion"])
        return self._version(
            group, self.client.describe_model_package(ModelPackageName=newest["ModelPackageArn"])
        )


def registry_from_descriptor(
    descriptor: PlatformDescriptor, session: Any = None, serve_image_tag: str | None = None
) -> LocalModelRegistry | SageMakerModelRegistry:
    """The registry backend the descriptor names (`backend: local` or `backend: aws`).

    On AWS a model package names its serving image: `serve_image_tag` picks it from the
    team's serve repository (tags are immutable, so there is no `latest` to fall back on);
    without it, `register` needs `image=`.
    """
    groups = descriptor.registry.model_groups
    if descriptor.backend == "local":
        if descriptor.local is None:
            raise ValueError("descriptor: backend is local but it has no `local` section")
        return LocalModelRegistry(descriptor.local.registry, groups)
    import boto3

    session = session or boto3.Session(region_name=descriptor.region)
    repo = descriptor.registry.repositories.get("serve")
    return SageMakerModelRegistry(
        groups,
        client=session.client("sagemaker", region_name=descriptor.region),
        default_image=f"{repo}:{serve_image_tag}" if repo and serve_image_tag else None,
    )
