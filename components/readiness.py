"""What an endpoint waits for before the stack can create it, looked up when the program runs.

An endpoint that pins `modelVersion` is created by `pulumi up` from that model package
version, and a Kubernetes endpoint also runs `<serve repository>:<imageTag>`. On the first
`up` of a stack neither exists yet: the model package group is created in the same run and
no image has been pushed. So the program asks the account, at preview time, before it
registers anything:

- the pinned version is registered and `Approved`: the endpoint is created (or kept);
- the version is not registered yet (or the image not pushed) and the endpoint does not
  exist: the endpoint **waits**: no resource that references the version is registered, and
  the preview says what it waits for (a warning and the descriptor's `waiting_for`);
- the version is registered but not approved (pending, rejected), or an existing endpoint's
  pinned version is gone: the program fails, naming the field. It never removes or scales
  down a serving endpoint because of what the registry says.

Looking the account up (rather than a config flag) keeps one source of truth, the registry,
and a lookup that fails for any other reason (no permission, throttling) fails the preview
instead of guessing. The lookup is an `AccountState`: `AwsAccountState` (boto3, the
credentials and region Pulumi runs with) in a real `pulumi up`; `FakeAccount` under the
mock runtime (tests, `mlinfra plan`), which never talks to AWS.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.spec import EndpointSpec, PlatformSpec

APPROVED = "Approved"


class AccountLookupError(RuntimeError):
    """The account could not be asked (permissions, throttling): never read as 'absent'."""


class AccountState(Protocol):
    """What exists in the team's account right now, as far as endpoints care."""

    def model_package_status(self, group: str, version: int) -> str | None:
        """`ModelApprovalStatus` of version `version` of package group `group`, None if absent."""

    def endpoint_exists(self, name: str) -> bool:
        """Whether a SageMaker endpoint of this name exists."""

    def image_exists(self, repository: str, tag: str) -> bool:
        """Whether the ECR repository holds an image with this tag."""


@dataclass
class FakeAccount:
    """An account described in memory: for the mock runtime and tests.

    `FakeAccount.ready()` answers as an account where every pinned version is approved,
    every image pushed and every stack-created endpoint up (the steady state);
    `FakeAccount.empty()` as a new account where nothing exists yet (a first `up`).
    """

    packages: dict[tuple[str, int], str] = field(default_factory=dict)
    endpoints: set[str] = field(default_factory=set)
    images: set[tuple[str, str]] = field(default_factory=set)
    everything: bool = False  # answers "approved / exists" to every question

    @classmethod
    def ready(cls) -> FakeAccount:
        return cls(everything=True)

    @classmethod
    def empty(cls) -> FakeAccount:
        return cls()

    def model_package_status(self, group: str, version: int) -> str | None:
        return APPROVED if self.everything else self.packages.get((group, version))

    def endpoint_exists(self, name: str) -> bool:
        return self.everything or name in self.endpoints

    def image_exists(self, repository: str, tag: str) -> bool:
        return self.everything or (repository, tag) in self.images


# SageMaker answers a missing model package or endpoint with a ValidationException.
_SAGEMAKER_NOT_FOUND = ("does not exist", "could not find", "not found")


class AwsAccountState:
    """The account Pulumi deploys to, asked through boto3 with the same credentials.

    Needs `sagemaker:DescribeModelPackage`, `sagemaker:DescribeEndpoint`,
    `ecr:DescribeImages` and `sts:GetCallerIdentity` (the preview role too).
    """

    def __init__(self, region: str, profile: str | None = None, session: Any = None):
        import boto3  # only a real `pulumi up` gets here

        self.region = region
        self._session = session or boto3.Session(region_name=region, profile_name=profile)

    @functools.cached_property
    def _clients(self) -> dict[str, Any]:
        return {s: self._session.client(s, region_name=self.region) for s in ("sagemaker", "ecr")}

    @functools.cached_property
    def _identity(self) -> tuple[str, str]:
        """(partition, account) of the credentials."""
        arn = self._describe(
            "sts:GetCallerIdentity", self._session.client("sts").get_caller_identity, ()
        )["Arn"]
        parts = arn.split(":")
        return parts[1], parts[4]

    def _describe(
        self, action: str, call: Any, not_found: tuple[str, ...], **kwargs: Any
    ) -> dict | None:
        """The answer, None when the service says the thing does not exist (an error code
        in `not_found`, or SageMaker's ValidationException saying so); any other failure
        raises AccountLookupError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in not_found or (
                action.startswith("sagemaker:") and _sagemaker_not_found(error)
            ):
                return None
            raise AccountLookupError(
                f"{action} failed ({error.get('Code')}: {error.get('Message')}); the program "
                "asks it to know whether a pinned model version exists (the role running "
                "Pulumi needs it)"
            ) from exc
        except BotoCoreError as exc:
            raise AccountLookupError(f"{action} failed: {exc}") from exc

    def model_package_status(self, group: str, version: int) -> str | None:
        partition, account = self._identity
        arn = (
            f"arn:{partition}:sagemaker:{self.region}:{account}:model-package/"
            f"{group.lower()}/{version}"
        )
        found = self._describe(
            "sagemaker:DescribeModelPackage",
            self._clients["sagemaker"].describe_model_package,
            (),
            ModelPackageName=arn,
        )
        return None if found is None else str(found.get("ModelApprovalStatus"))

    def endpoint_exists(self, name: str) -> bool:
        found = self._describe(
            "sagemaker:DescribeEndpoint",
            self._clients["sagemaker"].describe_endpoint,
            (),
            EndpointName=name,
        )
        return found is not None

    def image_exists(self, repository: str, tag: str) -> bool:
        found = self._describe(
            "ecr:DescribeImages",
            self._clients["ecr"].describe_images,
            ("ImageNotFoundException", "RepositoryNotFoundException"),
            repositoryName=repository,
            imageIds=[{"imageTag": tag}],
        )
        return found is not None


def _sagemaker_not_found(error: dict) -> bool:
    if error.get("Code") in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    message = str(error.get("Message", "")).lower()
    return error.get("Code") == "ValidationException" and any(
        m in message for m in _SAGEMAKER_NOT_FOUND
    )


# --- which account the program asks -----------------------------------------------------------

_override: AccountState | None = None


@contextlib.contextmanager
def use(account: AccountState) -> Iterator[AccountState]:
    """Make the program ask `account` instead of AWS (the mock runtime does, always)."""
    global _override
    before, _override = _override, account
    try:
        yield account
    finally:
        _override = before


def current(region: str, profile: str | None = None) -> AccountState:
    return _override if _override is not None else AwsAccountState(region, profile)


# --- the decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    ready: bool
    waiting_for: str | None = None  # what the endpoint waits for, in words


def endpoint_readiness(
    spec: PlatformSpec, index: int, ep: EndpointSpec, account: AccountState
) -> Readiness:
    """Whether a pinned endpoint can be created now; raises ValueError naming the field when
    the stack asks for something it must not do (serve an unapproved version)."""
    assert ep.model_version is not None
    physical = f"{spec.prefix}-{ep.name}"
    group = f"{spec.prefix}-{ep.model_group}"
    field_path = f"mlinfra:endpoints[{index}].modelVersion"
    status = account.model_package_status(group, ep.model_version)
    if status is not None and status != APPROVED:
        raise ValueError(
            f"{field_path}: version {ep.model_version} of model package group {group} is "
            f"{status}; {physical} serves only an approved version: approve it or pin another"
        )
    repository, tag = f"{spec.prefix}-serve", ep.image_tag
    if status is None:
        if ep.kind == "sagemaker" and account.endpoint_exists(physical):
            raise ValueError(
                f"{field_path}: endpoint {physical} exists but version {ep.model_version} of "
                f"model package group {group} is not registered; pin a registered version"
            )
        waits = [f"model package {group}/{ep.model_version} to be registered and approved"]
        if ep.kind == "kubernetes" and not account.image_exists(repository, tag):
            waits.append(f"image {repository}:{tag} to be pushed")
        return Readiness(False, " and ".join(waits))
    # Approved. A missing image now is a mistake, not a first `up`: fail the preview rather
    # than let Pulumi wait 20 minutes for pods that cannot pull (or scale a serving one down).
    if ep.kind == "kubernetes" and not account.image_exists(repository, tag):
        raise ValueError(
            f"mlinfra:endpoints[{index}].imageTag: image {repository}:{tag} is not in the "
            "repository; push it, or name a pushed tag"
        )
    return Readiness(True)


def decide(spec: PlatformSpec, account: AccountState) -> dict[str, Readiness]:
    """Readiness of every pinned endpoint (keyed by the spec's name). The program calls it
    before it registers anything, so a version that must not be served fails the preview
    with nothing created."""
    return {
        ep.name: endpoint_readiness(spec, i, ep, account)
        for i, ep in enumerate(spec.endpoints)
        if ep.model_version is not None
    }
