"""Run the real Pulumi program for one stack offline, under Pulumi's mock runtime.

`render_stack("vision-dev")` reads `stacks/Pulumi.vision-dev.yaml` (plus the `config:`
defaults of `Pulumi.yaml`, as the Pulumi CLI applies them), runs `stacks/__main__.py`
exactly as `pulumi up` would, with every provider call answered by mocks, and returns
what the program registered:

    rendered = render_stack("vision-dev")
    for node_group in rendered.by_type("aws:eks/nodeGroup:NodeGroup"):
        print(node_group.name, node_group.inputs["scalingConfig"])
    rendered.outputs["platform"]  # the resolved stack outputs

What the program looks up in the account is answered by fakes: `account` (a
`components.readiness.FakeAccount`; by default every pinned model version is approved and
every image pushed, the steady state; `FakeAccount.empty()` is a first `up`) and
`existing_vpc` (what an existing VPC given by `network.vpcId` looks like).

Inputs are plain Python values keyed as on the wire (camelCase, like the engine sees
them). Each resource also carries the options that matter for review: its parent, the
explicit provider, `protect`, `retain_on_delete` and what it waits for (`dependencies`).
Nothing here talks to AWS, Kubernetes or the Pulumi CLI; it is used by the tests, the
policy-pack tests and the offline `mlinfra plan` command.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import runpy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
import pulumi.runtime.settings
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components import readiness
from components.network import EKS_UNSUPPORTED_ZONE_IDS
from components.readiness import AccountState, FakeAccount

PROJECT = "mlinfra"
ACCOUNT_ID = "123456789012"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RenderedResource:
    """One registered resource: what `pulumi preview` would show for it."""

    type: str  # type token, e.g. "aws:s3/bucket:Bucket"
    name: str  # logical name
    urn: str
    custom: bool  # False for ComponentResources
    inputs: dict[str, Any]  # plain values, camelCase keys
    outputs: dict[str, Any]  # what the mocks answered (inputs plus computed fields)
    id: str | None
    parent: str | None  # parent URN (the stack's URN for top-level resources)
    provider: str | None  # explicit provider reference "urn::id", None for the default
    protect: bool
    retain_on_delete: bool
    ignore_changes: tuple[str, ...] = ()  # property paths `pulumi up` leaves as they are
    # URNs it waits for: `depends_on`, and the resources its inputs came from.
    dependencies: tuple[str, ...] = ()


@dataclass
class Rendered:
    """Everything one run of the program registered and exported."""

    stack: str
    resources: list[RenderedResource]
    outputs: dict[str, Any]  # resolved stack outputs
    logs: list[tuple[str, str]] = field(default_factory=list)  # (level, message) from Pulumi
    warnings: list[str] = field(default_factory=list)  # Python warnings raised while running
    error: BaseException | None = None  # what the program raised, with raise_errors=False

    def by_type(self, token: str) -> list[RenderedResource]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str, name: str | None = None) -> RenderedResource:
        """The single resource of a type (and logical name); fails loudly otherwise."""
        found = [r for r in self.by_type(token) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {token} {name or ''}, found {len(found)}")
        return found[0]

    def get(self, urn: str) -> RenderedResource:
        return next(r for r in self.resources if r.urn == urn)

    def children(self, parent: RenderedResource) -> list[RenderedResource]:
        return [r for r in self.resources if r.parent == parent.urn]

    def ancestors(self, resource: RenderedResource) -> Iterator[RenderedResource]:
        by_urn = {r.urn: r for r in self.resources}
        parent = by_urn.get(resource.parent or "")
        while parent is not None:
            yield parent
            parent = by_urn.get(parent.parent or "")

    def component_of(self, resource: RenderedResource) -> RenderedResource | None:
        """The nearest ComponentResource above a resource."""
        return next((a for a in self.ancestors(resource) if not a.custom), None)

    @property
    def custom_resources(self) -> list[RenderedResource]:
        return [r for r in self.resources if r.custom]


# pulumi-aws warns about its own deprecated classes when their module is first imported,
# whether or not a program uses them. Import the modules the components use up front, with
# those warnings silenced, so `Rendered.warnings` holds only what the program itself caused.
PROVIDER_MODULES = (
    "pulumi_aws.appautoscaling",
    "pulumi_aws.autoscaling",
    "pulumi_aws.budgets",
    "pulumi_aws.cloudwatch",
    "pulumi_aws.ec2",
    "pulumi_aws.ecr",
    "pulumi_aws.eks",
    "pulumi_aws.glue",
    "pulumi_aws.iam",
    "pulumi_aws.kms",
    "pulumi_aws.s3",
    "pulumi_aws.sagemaker",
    "pulumi_aws.sns",
    "pulumi_aws.vpc",
    "pulumi_kubernetes.apps.v1",
    "pulumi_kubernetes.autoscaling.v2",
    "pulumi_kubernetes.core.v1",
    "pulumi_kubernetes.rbac.v1",
    "pulumi_kubernetes.networking.v1",
)


def _import_provider_modules() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in PROVIDER_MODULES:
            getattr(importlib.import_module(module), "_loaded_", None)  # loads lazily: touch it


# --- config -------------------------------------------------------------------------------


def project_defaults(project_file: str | Path = REPO_ROOT / "Pulumi.yaml") -> dict[str, Any]:
    """The `default:` values that `Pulumi.yaml` declares, keyed `mlinfra:<key>`."""
    doc = yaml.safe_load(Path(project_file).read_text()) or {}
    out: dict[str, Any] = {}
    for key, decl in (doc.get("config") or {}).items():
        if isinstance(decl, dict) and "default" in decl:
            out[key if ":" in key else f"{PROJECT}:{key}"] = decl["default"]
    return out


def stack_config(stack: str, stacks_dir: str | Path = "stacks") -> dict[str, str]:
    """The config map the Pulumi CLI hands a program: strings, structured values as JSON."""
    path = Path(stacks_dir) / f"Pulumi.{stack}.yaml"
    doc = yaml.safe_load(path.read_text()) or {}
    values = {**project_defaults(), **(doc.get("config") or {})}
    return {
        key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()
    }


# --- mocks --------------------------------------------------------------------------------


# Inputs that carry a resource's physical name, in the order they are looked for.
_NAME_KEYS = (
    "name",
    "bucket",
    "featureGroupName",
    "modelPackageGroupName",
    "endpointName",
    "endpointConfigName",
    "modelName",
    "nodeGroupName",
    "budgetName",
    "alarmName",
)


_DIRECTIONS = {"north": "n", "south": "s", "east": "e", "west": "w", "central": "c"}


def zone_map(region: str) -> list[tuple[str, str]]:
    """(zone name, zone ID) of a region as one mock account sees it.

    Names map to IDs per account; here name `a` is the region's az2, `b` its az3 and so on,
    so a program that picks zones by their first names lands in us-east-1's use1-az3,
    where EKS refuses cluster subnets. us-east-1 has six zones, other regions three.
    """
    area, direction, number = region.split("-", 2)
    short = "".join(
        _DIRECTIONS.get(d, d[0])
        for d in re.findall("north|south|east|west|central|[a-z]+", direction)
    )
    prefix = f"{area}{short}{number}"
    count = 6 if region == "us-east-1" else 3
    return [
        (f"{region}{letter}", f"{prefix}-az{(k + 1) % count + 1}")
        for k, letter in enumerate("abcdef"[:count])
    ]


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:17]


@dataclass(frozen=True)
class ExistingVpc:
    """How the mocks describe a VPC given by `network.vpcId` (a fit one by default: two
    CIDR blocks, DNS on, every route table routing S3's prefix list)."""

    cidrs: tuple[str, ...] = ("10.0.0.0/16", "100.64.0.0/16")
    dns_hostnames: bool = True
    dns_support: bool = True
    unrouted_subnets: tuple[str, ...] = ()  # subnets whose route table has no S3 route


def s3_prefix_list_id(region: str) -> str:
    """The id the mocks give the region's S3 prefix list."""
    return f"pl-{_short_hash('s3', region)[:8]}"


class PlatformMocks(Mocks):
    """Answers provider calls and resource registrations the way AWS would, roughly.

    Each resource gets back its inputs plus the computed fields the program reads
    (ids, ARNs, names, endpoints, the EKS OIDC issuer, ECR URLs), so every Output resolves.
    """

    def __init__(self, region: str, existing_vpc: ExistingVpc | None = None):
        self.region = region
        self.vpc = existing_vpc or ExistingVpc()

    def call(self, args: MockCallArgs) -> dict:  # type: ignore[override]
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            excluded = set(args.args.get("excludeZoneIds") or [])
            zones = [(n, z) for n, z in zone_map(self.region) if z not in excluded]
            return {"names": [n for n, _ in zones], "zoneIds": [z for _, z in zones]}
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT_ID,
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/mock",
                "userId": "AIDAMOCK",
                "id": ACCOUNT_ID,
            }
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if token == "aws:ec2/getVpc:getVpc":
            return {
                "id": args.args["id"],
                "cidrBlock": self.vpc.cidrs[0],
                "cidrBlockAssociations": [
                    {"associationId": f"vpc-cidr-assoc-{i}", "cidrBlock": c, "state": "associated"}
                    for i, c in enumerate(self.vpc.cidrs)
                ],
                "enableDnsHostnames": self.vpc.dns_hostnames,
                "enableDnsSupport": self.vpc.dns_support,
                "arn": f"arn:aws:ec2:{self.region}:{ACCOUNT_ID}:vpc/{args.args['id']}",
            }
        if token == "aws:ec2/getManagedPrefixList:getManagedPrefixList":
            name = args.args.get("name", "")
            if name != f"com.amazonaws.{self.region}.s3":
                raise NotImplementedError(f"no mock for the prefix list {name!r}")
            return {"id": s3_prefix_list_id(self.region), "name": name, "entries": []}
        if token == "aws:ec2/getRouteTables:getRouteTables":
            return {"ids": self._route_tables(args.args), "id": self.region}
        if token == "aws:ec2/getSubnet:getSubnet":
            # An account's existing subnets lie where EKS accepts them.
            zones = [(n, z) for n, z in zone_map(self.region) if z not in EKS_UNSUPPORTED_ZONE_IDS]
            name, zone = zones[int(_short_hash(args.args["id"]), 16) % len(zones)]
            return {
                "id": args.args["id"],
                "availabilityZone": name,
                "availabilityZoneId": zone,
                "vpcId": "vpc-mock",
            }
        if token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}
        raise NotImplementedError(f"no mock for the provider function {token}")

    def _route_tables(self, args: dict[str, Any]) -> list[str]:
        """Explicitly associated tables: `rtb-s3` routes S3's prefix list, `rtb-local` not."""
        [query] = args.get("filters") or [{}]
        name, values = query.get("name"), query.get("values") or []
        if name == "route.destination-prefix-list-id":
            return ["rtb-s3"] if values == [s3_prefix_list_id(self.region)] else []
        if name == "association.main":
            return ["rtb-main-local"]
        if name == "association.subnet-id":
            return ["rtb-local" if values[0] in self.vpc.unrouted_subnets else "rtb-s3"]
        raise NotImplementedError(f"no mock for route tables by {name!r}")

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        token, name = args.typ, args.name
        package, _, rest = token.partition(":")
        module = rest.split("/")[0].split(":")[0]
        rid = f"{module}-{_short_hash(token, name)}"
        if package == "aws":
            physical = next((str(state[k]) for k in _NAME_KEYS if state.get(k)), name)
            state.setdefault("arn", self._arn(module, token, physical))
            state.setdefault("tagsAll", state.get("tags", {}))
            rid = self._aws(token, name, state) or rid
        elif package == "kubernetes":
            meta = dict(state.get("metadata") or {})
            meta.setdefault("name", name)
            meta.setdefault("uid", _short_hash(token, name))
            state["metadata"] = meta
            rid = f"{meta.get('namespace', 'default')}/{meta['name']}"
        if not args.custom:
            rid = None  # ComponentResources have no physical id
        return rid, state

    def _arn(self, service: str, token: str, physical: str) -> str:
        kind = re.sub(r"(?<!^)(?=[A-Z])", "-", token.rsplit(":", 1)[-1]).lower()
        if service == "iam":
            return f"arn:aws:iam::{ACCOUNT_ID}:{kind}/{physical}"
        return f"arn:aws:{service}:{self.region}:{ACCOUNT_ID}:{kind}/{physical}"

    def _aws(self, token: str, name: str, state: dict[str, Any]) -> str | None:
        """Type-specific computed fields; returns the physical id where it is not generic."""
        h = _short_hash(token, name)
        if token == "aws:s3/bucket:Bucket":
            bucket = state.get("bucket") or name
            state.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}", name=bucket)
            state["bucketDomainName"] = f"{bucket}.s3.amazonaws.com"
            return bucket
        if token == "aws:kms/key:Key":
            key_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-0000-{h[:12]}"
            state.update(keyId=key_id, arn=f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:key/{key_id}")
            return key_id
        if token == "aws:eks/cluster:Cluster":
            state["endpoint"] = f"https://{h.upper()}.gr7.{self.region}.eks.amazonaws.com"
            state["certificateAuthority"] = {"data": "TU9DSy1DQQ=="}
            issuer = f"https://oidc.eks.{self.region}.amazonaws.com/id/{h.upper()}"
            state["identities"] = [{"oidcs": [{"issuer": issuer}]}]
            state["status"] = "ACTIVE"
            return state["name"]
        if token == "aws:eks/nodeGroup:NodeGroup":
            # EKS names the group's Auto Scaling group itself: eks-<group>-<uuid>.
            asg = f"eks-{state.get('nodeGroupName')}-{h[:8]}-{h[8:12]}"
            state["resources"] = [{"autoscalingGroups": [{"name": asg}]}]
            return f"{state.get('clusterName')}:{state.get('nodeGroupName')}"
        if token == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
            host = str(state.get("url", "")).removeprefix("https://")
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{host}"
            return state["arn"]
        if token == "aws:ec2/eip:Eip":
            state.update(allocationId=f"eipalloc-{h}", publicIp="198.51.100.7")
            return f"eipalloc-{h}"
        if token == "aws:iam/role:Role":
            state["uniqueId"] = f"AROA{h.upper()}"
            return state["name"]
        if token == "aws:ecr/repository:Repository":
            url = f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com/{state['name']}"
            state.update(repositoryUrl=url, registryId=ACCOUNT_ID)
            return state["name"]
        if token == "aws:ec2/launchTemplate:LaunchTemplate":
            state.update(latestVersion=1, defaultVersion=1)
            return f"lt-{h}"
        ec2_ids = {
            "aws:ec2/vpc:Vpc": "vpc",
            "aws:ec2/subnet:Subnet": "subnet",
            "aws:ec2/securityGroup:SecurityGroup": "sg",
            "aws:ec2/natGateway:NatGateway": "nat",
            "aws:ec2/eip:Eip": "eipalloc",
            "aws:ec2/internetGateway:InternetGateway": "igw",
            "aws:ec2/routeTable:RouteTable": "rtb",
            "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce",
        }
        if token in ec2_ids:
            return f"{ec2_ids[token]}-{h}"
        return None


class _RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping each registration's parent and resource options."""

    def __init__(self, mocks: Mocks):
        super().__init__(mocks)
        self.requests: dict[str, Any] = {}
        self.inputs: dict[str, dict] = {}

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.requests[response.urn] = request
            self.inputs[response.urn] = rpc.deserialize_properties(request.object)
        return response


class _CollectingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname.lower(), record.getMessage()))


def _plain(value: Any) -> Any:
    """Inputs as JSON-like Python values (a resource reference becomes a placeholder)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, pulumi.Resource):
        return f"<resource {type(value).__name__}>"
    return value


def render_stack(
    stack: str,
    stacks_dir: str | Path = REPO_ROOT / "stacks",
    *,
    config: dict[str, str] | None = None,
    program: str | Path | None = None,
    raise_errors: bool = True,
    account: AccountState | None = None,
    existing_vpc: ExistingVpc | None = None,
) -> Rendered:
    """Run the program for `stack` under mocks and return what it registered.

    `config` replaces the stack file's config (keys like `mlinfra:team`, structured values
    as JSON strings), for testing configs that are not on disk. With `raise_errors=False`
    an exception from the program is returned in `Rendered.error`, together with whatever
    was registered before it (the spec tests assert that nothing was).
    """
    stacks_dir = Path(stacks_dir)
    program = Path(program) if program else stacks_dir / "__main__.py"
    values = stack_config(stack, stacks_dir) if config is None else dict(config)
    region = values.get("aws:region", "us-east-1")

    _import_provider_modules()
    handler = _CollectingHandler()
    logger = logging.getLogger(f"mlinfra.mockrun.{stack}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)

    pulumi.runtime.settings.reset_options(project=PROJECT, stack=stack, preview=False)
    monitor = _RecordingMonitor(PlatformMocks(region, existing_vpc))
    pulumi.runtime.set_mocks(
        monitor.mocks, project=PROJECT, stack=stack, preview=False, logger=logger, monitor=monitor
    )
    pulumi.runtime.set_all_config(values, [])
    pulumi.runtime.settings.SETTINGS.rpc_manager.clear()
    pulumi.runtime.settings.SETTINGS.outputs.clear()

    error: BaseException | None = None
    outputs: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with readiness.use(account or FakeAccount.ready()):
                _sync_await(
                    run_pulumi_func(lambda: runpy.run_path(str(program), run_name="__main__"))
                )
            root = pulumi.runtime.settings.get_root_resource()
            for key, value in (getattr(root, "outputs", None) or {}).items():
                outputs[key] = _sync_await(pulumi.Output.from_input(value).future())
        except Exception as exc:  # noqa: BLE001 - handed back or re-raised below
            error = exc

    resources = []
    for urn, request in monitor.requests.items():
        reg = monitor.resources.get(urn)
        resources.append(
            RenderedResource(
                type=request.type,
                name=request.name,
                urn=urn,
                custom=bool(request.custom),
                inputs=_plain(monitor.inputs[urn]),
                outputs=_plain(dict(reg.state)) if reg else {},
                id=reg.id if reg else None,
                parent=request.parent or None,
                provider=request.provider or None,
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                ignore_changes=tuple(request.ignoreChanges),
                dependencies=tuple(request.dependencies),
            )
        )
    rendered = Rendered(
        stack=stack,
        resources=resources,
        outputs=outputs,
        logs=handler.records,
        warnings=[f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught],
        error=error,
    )
    if error is not None and raise_errors:
        raise error
    return rendered
