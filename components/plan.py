"""`mlinfra plan`: what a stack would create, whether it passes the policies, and what it
would cost a month - offline, with no credentials and no Pulumi CLI.

The program runs under the mock runtime (`components.mockrun.render_stack`); the policy
pack's validate functions run on what it registered (`policy/mlinfra_policies.py`); the
cost comes from the dated price table (`components/prices.json`):

- node pools (GPU and system) at their minimum and maximum sizes; spot pools at the
  family's typical spot factor; a pool is priced at its first (preferred) instance type;
- SageMaker endpoints at their minimum and maximum instance counts (Kubernetes endpoints
  run on the node pools, already counted). An endpoint the stack does not create now (an
  unpinned one, which the first `mlinfra deploy` creates, or a pinned one that waits for
  its version) is priced at zero for its minimum and at its maximum for the maximum, and
  the plan says so. The offline render assumes pinned versions are registered and approved
  (the stack as it will run), so a pinned endpoint is priced as created;
- NAT gateways (hours plus a baseline of processed data), the EKS control plane, and S3
  storage at a baseline per bucket.

A price missing from the table is reported as unpriced and left out of the totals, never
counted as zero. `--against REF` renders the same stack at another git revision (its own
code and config, from `git archive`, in a child process) and prints the cost delta; both
sides are priced with this revision's table, so the delta is what the change does.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from components.pricing import PriceTable, PriceTableError, load_prices
from components.spec import PlatformSpec, SpecError, load_stack_file

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY_MODULE = REPO_ROOT / "policy" / "mlinfra_policies.py"

# Stated baselines for usage-driven charges (the plan prints them).
STORAGE_GB_PER_BUCKET = 1024  # 1 TB in every bucket
NAT_GB_PER_GATEWAY = 100  # data processed per NAT gateway a month

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ENDPOINT_CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
ENDPOINT = "aws:sagemaker/endpoint:Endpoint"
SCALING_TARGET = "aws:appautoscaling/target:Target"
NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")


class PlanError(Exception):
    """Something the user can fix: an unknown stack or git ref, a bad config."""


@dataclass(frozen=True)
class Resource:
    """A rendered resource, as plain data (also what `--against` reads back from git)."""

    type: str
    name: str
    urn: str
    custom: bool
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    parent: str | None
    protect: bool
    retain_on_delete: bool = False


@dataclass
class CostLine:
    item: str  # "node pool vision-dev-train-a10g", "NAT gateways", ...
    detail: str  # what is counted: "0-4 x g5.xlarge spot"
    hourly: float | None  # unit price (per instance or per gateway), None: unpriced
    min_monthly: float | None
    max_monthly: float | None
    note: str = ""


@dataclass
class Cost:
    region: str
    currency: str
    prices_as_of: str
    lines: list[CostLine] = field(default_factory=list)

    @property
    def unpriced(self) -> list[str]:
        return [f"{line.item}: {line.note}" for line in self.lines if line.hourly is None]

    @property
    def min_total(self) -> float:
        return round(sum(line.min_monthly or 0.0 for line in self.lines), 2)

    @property
    def max_total(self) -> float:
        return round(sum(line.max_monthly or 0.0 for line in self.lines), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "currency": self.currency,
            "prices_as_of": self.prices_as_of,
            "baseline": {
                "storage_gb_per_bucket": STORAGE_GB_PER_BUCKET,
                "nat_gb_per_gateway": NAT_GB_PER_GATEWAY,
            },
            "lines": [asdict(line) for line in self.lines],
            "min_monthly": self.min_total,
            "max_monthly": self.max_total,
            "unpriced": self.unpriced,
        }


# --- cost -------------------------------------------------------------------------------------


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _monthly(hourly: float | None, count: float, prices: PriceTable) -> float | None:
    return None if hourly is None else round(hourly * count * prices.hours_per_month, 2)


def _line(item: str, detail: str, hourly: float | None, lo: float, hi: float, prices, note=""):
    return CostLine(
        item, detail, hourly, _monthly(hourly, lo, prices), _monthly(hourly, hi, prices), note
    )


def _endpoint_max(resources: Sequence[Resource], config: Resource) -> dict[str, float]:
    """Autoscaling maximum per variant of an endpoint configuration, where one is set."""
    names = {config.name, str(config.outputs.get("name")), str(config.inputs.get("name"))}
    endpoints = {
        str(e.inputs.get("name") or e.name)
        for e in resources
        if e.type == ENDPOINT and str(e.inputs.get("endpointConfigName")) in names
    } | names  # components name an endpoint and its configuration alike
    found: dict[str, float] = {}
    for t in resources:
        if t.type != SCALING_TARGET or t.inputs.get("serviceNamespace") != "sagemaker":
            continue
        parts = str(t.inputs.get("resourceId", "")).split("/")  # endpoint/<E>/variant/<V>
        if len(parts) == 4 and parts[1] in endpoints:
            found[parts[3]] = _num(t.inputs.get("maxCapacity"))
    return found


def not_deployed(spec: PlatformSpec, resources: Sequence[Resource]) -> list[tuple[Any, str]]:
    """SageMaker endpoints of the spec with no EndpointConfiguration in the render, and why."""
    rendered = {r.name for r in resources if r.type == ENDPOINT_CONFIG}
    out = []
    for ep in spec.endpoints:
        if ep.kind != "sagemaker" or f"{spec.prefix}-{ep.name}" in rendered:
            continue
        why = (
            "created by the first `mlinfra deploy`"
            if ep.model_version is None
            else f"waits for model version {ep.model_version}"
        )
        out.append((ep, why))
    return out


def estimate_cost(
    resources: Sequence[Resource],
    region: str,
    prices: PriceTable,
    spec: PlatformSpec | None = None,
) -> Cost:
    cost = Cost(region, prices.currency, prices.as_of)
    table = prices.region(region)
    no_region = f"no prices for region {region} in the table"

    for ng in (r for r in resources if r.type == NODE_GROUP):
        types = [str(t) for t in ng.inputs.get("instanceTypes") or []]
        scaling = ng.inputs.get("scalingConfig") or {}
        lo, hi = _num(scaling.get("minSize")), _num(scaling.get("maxSize"))
        capacity = "spot" if ng.inputs.get("capacityType") == "SPOT" else "onDemand"
        itype = types[0] if types else "?"
        hourly = prices.ec2_hourly(region, itype, capacity)
        note = "" if hourly is not None else (f"{itype} not in the table" if table else no_region)
        pool = ng.inputs.get("nodeGroupName") or ng.name
        detail = f"{lo:g}-{hi:g} x {itype} {capacity}"
        cost.lines.append(_line(f"node pool {pool}", detail, hourly, lo, hi, prices, note))

    for cfg in (r for r in resources if r.type == ENDPOINT_CONFIG):
        maxima = _endpoint_max(resources, cfg)
        for variant in cfg.inputs.get("productionVariants") or []:
            itype = str(variant.get("instanceType", "?"))
            lo = _num(variant.get("initialInstanceCount"), 1.0)
            hi = maxima.get(str(variant.get("variantName")), lo)
            hourly = prices.sagemaker_hourly(region, itype)
            note = (
                "" if hourly is not None else (f"{itype} not in the table" if table else no_region)
            )
            detail = f"{lo:g}-{hi:g} x {itype}"
            cost.lines.append(_line(f"endpoint {cfg.name}", detail, hourly, lo, hi, prices, note))

    for ep, why in not_deployed(spec, resources) if spec is not None else []:
        hourly = prices.sagemaker_hourly(region, ep.instance_type)
        note = f"not yet deployed ({why}): 0 until then, {ep.min_instances} after"
        if hourly is None:
            note = f"{ep.instance_type} not in the table" if table else no_region
        detail = f"0-{ep.max_instances} x {ep.instance_type}, not yet deployed"
        cost.lines.append(
            _line(
                f"endpoint {spec.prefix}-{ep.name}",  # type: ignore[union-attr]
                detail,
                hourly,
                0,
                ep.max_instances,
                prices,
                note,
            )
        )

    nats = sum(1 for r in resources if r.type == NAT_GATEWAY)
    if nats:
        hourly = (
            table.nat_gateway_hour
            + table.nat_gateway_gb * NAT_GB_PER_GATEWAY / prices.hours_per_month
            if table
            else None
        )
        detail = f"{nats} x (hours + {NAT_GB_PER_GATEWAY} GB processed)"
        cost.lines.append(
            _line("NAT gateways", detail, hourly, nats, nats, prices, "" if table else no_region)
        )

    clusters = sum(1 for r in resources if r.type == EKS_CLUSTER)
    if clusters:
        hourly = table.eks_cluster_hour if table else None
        cost.lines.append(
            _line(
                "EKS control plane",
                f"{clusters} cluster(s)",
                hourly,
                clusters,
                clusters,
                prices,
                "" if table else no_region,
            )
        )

    buckets = sum(1 for r in resources if r.type in BUCKETS)
    if buckets:
        # Priced per GB-month; expressed per hour so every line uses the same arithmetic.
        hourly = (
            table.s3_standard_gb_month * STORAGE_GB_PER_BUCKET / prices.hours_per_month
            if table
            else None
        )
        detail = f"{buckets} bucket(s) x {STORAGE_GB_PER_BUCKET} GB S3 Standard"
        cost.lines.append(
            _line(
                "S3 storage", detail, hourly, buckets, buckets, prices, "" if table else no_region
            )
        )
    return cost


# --- rendering this revision and another ------------------------------------------------------


def _policies() -> ModuleType:
    if "mlinfra_policies" in sys.modules:
        return sys.modules["mlinfra_policies"]
    spec = importlib.util.spec_from_file_location("mlinfra_policies", POLICY_MODULE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["mlinfra_policies"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _from_rendered(rendered: Any) -> list[Resource]:
    return [
        Resource(
            type=r.type,
            name=r.name,
            urn=r.urn,
            custom=r.custom,
            inputs=r.inputs,
            outputs=r.outputs,
            parent=r.parent,
            protect=r.protect,
            retain_on_delete=r.retain_on_delete,
        )
        for r in rendered.resources
    ]


def render(stack: str, stacks_dir: str | Path = "stacks") -> tuple[list[Resource], PlatformSpec]:
    """(resources, spec) of a stack in this working tree."""
    if importlib.util.find_spec("pulumi") is None:
        raise PlanError("the plan runs the Pulumi program: pip install 'mlinfra[infra]' first")
    from components.mockrun import render_stack  # imports Pulumi: only when planning

    path = Path(stacks_dir) / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise PlanError(f"no stack config {path}")
    spec = load_stack_file(path)  # a bad config fails here, naming the field
    program = Path(stacks_dir) / "__main__.py"
    if not program.is_file():  # a folder of configs only: run this checkout's program
        program = REPO_ROOT / "stacks" / "__main__.py"
    return _from_rendered(render_stack(stack, Path(stacks_dir), program=program)), spec


# Runs inside an exported tree of another revision, with that revision's own code.
_DUMP = """
import json, sys
from pathlib import Path
from components.mockrun import render_stack
rendered = render_stack(sys.argv[1], Path(sys.argv[2]))
keys = ("type", "name", "urn", "custom", "inputs", "outputs", "parent", "protect",
        "retain_on_delete")
print(json.dumps([{k: getattr(r, k, None) for k in keys} for r in rendered.resources],
                 default=str))
"""


def _git(*args: str, cwd: Path = REPO_ROOT, binary: bool = False) -> Any:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    if out.returncode != 0:
        raise PlanError(f"git {' '.join(args)}: {out.stderr.decode().strip()}")
    return out.stdout if binary else out.stdout.decode()


def render_at(
    ref: str, stack: str, stacks_dir: str | Path = "stacks"
) -> tuple[list[Resource], PlatformSpec | None, str]:
    """(resources, spec, how) of `stack` at git revision `ref` of the repository that
    holds `stacks_dir`; ([], None, why) when the stack does not exist there (a new stack
    costs its full amount)."""
    stacks = Path(stacks_dir).resolve()
    repo = Path(_git("rev-parse", "--show-toplevel", cwd=stacks).strip())
    commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=repo).strip()
    stacks_rel = stacks.relative_to(repo).as_posix()
    config = f"{stacks_rel}/Pulumi.{stack}.yaml"
    exists = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}:{config}"], cwd=repo, capture_output=True
    )
    if exists.returncode:
        return [], None, f"{stack} does not exist at {ref}"
    with tempfile.TemporaryDirectory(prefix="mlinfra-plan-") as tmp:
        root = Path(tmp)
        archive = _git("archive", "--format=tar", commit, cwd=repo, binary=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
        try:
            old_spec: PlatformSpec | None = load_stack_file(root / config)
        except SpecError:  # valid under that revision's rules, not this one's
            old_spec = None
        if (root / "components" / "mockrun.py").is_file():
            out = subprocess.run(
                [sys.executable, "-c", _DUMP, stack, stacks_rel],
                cwd=root,
                capture_output=True,
                text=True,
                env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": tmp},
                timeout=300,
            )
            if out.returncode == 0:
                rows = json.loads(out.stdout.strip().splitlines()[-1])
                return [Resource(**row) for row in rows], old_spec, f"rendered at {ref}"
            raise PlanError(f"rendering {stack} at {ref} failed:\n{out.stderr.strip()[-2000:]}")
        # A revision from before the mock runner: its config, with this revision's code.
        from components.mockrun import render_stack

        rendered = render_stack(
            stack, root / stacks_rel, program=REPO_ROOT / "stacks" / "__main__.py"
        )
        return _from_rendered(rendered), old_spec, f"config at {ref}, rendered with this code"


# --- output -----------------------------------------------------------------------------------

_KEY_SETTINGS: dict[str, tuple[str, ...]] = {
    NODE_GROUP: ("instanceTypes", "capacityType", "scalingConfig", "amiType"),
    ENDPOINT_CONFIG: ("productionVariants", "dataCaptureConfig.initialSamplingPercentage"),
    "aws:ec2/launchTemplate:LaunchTemplate": (
        "metadataOptions.httpTokens",
        "blockDeviceMappings.0.ebs.volumeSize",
        "blockDeviceMappings.0.ebs.encrypted",
    ),
    "aws:eks/cluster:Cluster": ("version",),
    "aws:s3/bucket:Bucket": ("bucket",),
    "aws:sagemaker/featureGroup:FeatureGroup": (
        "featureGroupName",
        "onlineStoreConfig.enableOnlineStore",
    ),
    "aws:ec2/vpc:Vpc": ("cidrBlock",),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "availabilityZone"),
    "kubernetes:apps/v1:Deployment": ("spec.replicas",),
    SCALING_TARGET: ("resourceId", "minCapacity", "maxCapacity"),
}


def _dig(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "; ".join(_short(v) for v in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return ",".join(_short(v) for v in value)
    return str(value)


def key_settings(r: Resource) -> str:
    paths = _KEY_SETTINGS.get(r.type, ("name",))
    found = [(p, _dig(r.inputs, p)) for p in paths]
    parts = [f"{p.rsplit('.', 1)[-1]}={_short(v)}" for p, v in found if v not in (None, "", [])]
    if r.protect:
        parts.append("protected")
    return " ".join(parts)


def _money(value: float | None, currency: str = "USD") -> str:
    return "unpriced" if value is None else f"{value:,.2f}"


def _render_text(report: dict[str, Any], resources: list[Resource], cost: Cost, old: Cost | None):
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree

    buf = io.StringIO()
    console = Console(file=buf, width=130, force_terminal=False, color_system=None)
    console.print(f"mlinfra plan: stack {report['stack']} ({cost.region})", highlight=False)

    tree = Tree(f"{report['stack']}: {len(resources)} resources")
    nodes = {}
    by_parent: dict[str | None, list[Resource]] = {}
    urns = {r.urn for r in resources}
    for r in resources:
        by_parent.setdefault(r.parent if r.parent in urns else None, []).append(r)

    def add(branch: Tree, parent: str | None) -> None:
        for r in by_parent.get(parent, []):
            settings = key_settings(r)
            node = branch.add(f"{r.type}  {r.name}" + (f"  [{settings}]" if settings else ""))
            nodes[r.urn] = node
            add(node, r.urn)

    add(tree, None)
    console.print(tree, markup=False, highlight=False)

    table = Table(title="Policies (all mandatory)", title_justify="left")
    for col in ("policy", "result", "violations"):
        table.add_column(col)
    for name, found in report["policies"].items():
        text = "\n".join(f"{v['resource']}: {v['message']}" for v in found)
        table.add_row(name, "FAIL" if found else "pass", text)
    console.print(table, markup=False, highlight=False)

    costs = Table(
        title=f"Estimated monthly cost ({cost.currency}, prices as of {cost.prices_as_of}; "
        f"baseline {STORAGE_GB_PER_BUCKET} GB per bucket, {NAT_GB_PER_GATEWAY} GB per NAT)",
        title_justify="left",
    )
    for col in ("item", "counted", "unit/h", "min/month", "max/month"):
        costs.add_column(
            col, justify="right" if col in ("unit/h", "min/month", "max/month") else "left"
        )
    for line in cost.lines:
        unit = "unpriced" if line.hourly is None else f"{line.hourly:.4f}"
        costs.add_row(
            line.item, line.detail, unit, _money(line.min_monthly), _money(line.max_monthly)
        )
    costs.add_row("total (priced items)", "", "", _money(cost.min_total), _money(cost.max_total))
    console.print(costs, markup=False, highlight=False)
    for item in cost.unpriced:
        console.print(f"UNPRICED (not in the totals): {item}", markup=False, highlight=False)
    for line in cost.lines:
        if line.hourly is not None and line.note.startswith("not yet deployed"):
            console.print(
                f"NOT YET DEPLOYED: {line.item} is {line.note}; priced at 0 for the minimum, "
                "at its maximum for the maximum",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    if old is not None:
        against = report["against"]
        console.print(
            f"Cost delta against {against['ref']} ({against['how']}): "
            f"min {old.min_total:,.2f} -> {cost.min_total:,.2f} ({against['delta_min']:+,.2f}), "
            f"max {old.max_total:,.2f} -> {cost.max_total:,.2f} ({against['delta_max']:+,.2f}) "
            f"{cost.currency}/month",
            markup=False,
            highlight=False,
        )
        if against["unpriced_before"]:
            console.print(
                "unpriced before: " + "; ".join(against["unpriced_before"]),
                markup=False,
                highlight=False,
            )
    return buf.getvalue()


def plan(
    stack: str,
    *,
    against: str | None = None,
    as_json: bool = False,
    stacks_dir: str | Path = "stacks",
    prices: PriceTable | None = None,
) -> tuple[str, int]:
    """The plan's text (table or JSON) and exit code: 0 passed, 1 a policy violation,
    2 the plan could not be made (bad config, unknown ref, bad price table)."""
    try:
        prices = prices or load_prices()
        resources, spec = render(stack, stacks_dir)
        region = spec.region
        cost = estimate_cost(resources, region, prices, spec)
        violations = _policies().evaluate(resources)
        report: dict[str, Any] = {
            "stack": stack,
            "region": region,
            "resources": [
                {"type": r.type, "name": r.name, "parent": r.parent, "settings": key_settings(r)}
                for r in resources
            ],
            "policies": {name: [asdict(v) for v in found] for name, found in violations.items()},
            "cost": cost.to_json(),
        }
        old = None
        if against:
            old_resources, old_spec, how = render_at(against, stack, stacks_dir)
            old = estimate_cost(
                old_resources, old_spec.region if old_spec else region, prices, old_spec
            )
            report["against"] = {
                "ref": against,
                "how": how,
                "min_monthly": old.min_total,
                "max_monthly": old.max_total,
                "delta_min": round(cost.min_total - old.min_total, 2),
                "delta_max": round(cost.max_total - old.max_total, 2),
                "unpriced_before": old.unpriced,
            }
    except (PlanError, SpecError, PriceTableError) as exc:
        if as_json:
            return json.dumps({"stack": stack, "error": str(exc)}, indent=2), 2
        return f"error: {exc}", 2
    code = 1 if any(report["policies"].values()) else 0
    if as_json:
        return json.dumps(report, indent=2, default=str), code
    return _render_text(report, resources, cost, old), code


def plan_command(
    stack: Annotated[
        str, typer.Option("--stack", "-s", help="Stack config: stacks/Pulumi.<stack>.yaml")
    ],
    against: Annotated[
        str | None,
        typer.Option("--against", help="Git revision to compare the cost with, e.g. origin/main"),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON for machines")] = False,
    stacks_dir: Annotated[
        str, typer.Option("--stacks-dir", help="Folder of the stack configs")
    ] = "stacks",
) -> None:
    """Offline plan: resource tree, policy results and monthly cost (no credentials)."""
    text, code = plan(stack, against=against, as_json=json_output, stacks_dir=stacks_dir)
    print(text, file=sys.stderr if code == 2 else sys.stdout)
    raise typer.Exit(code)


if __name__ == "__main__":  # python -m components.plan --stack vision-dev [--against REF]
    typer.run(plan_command)
