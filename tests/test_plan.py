"""The offline plan: cost arithmetic on a hand-checked stack, the price table and its
refresh (botocore Stubber, no network), `--against` on a real git history, and the plan of
every real stack."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from components import plan as planmod
from components.gpu import GPU_INSTANCE_TYPES
from components.plan import plan, plan_command
from components.pricing import (
    PriceTableError,
    ec2_filters,
    load_prices,
    parse_prices,
    refresh_prices,
    sagemaker_filters,
)
from components.spec import load_stack

ROOT = Path(__file__).resolve().parents[1]
STACKS = sorted(p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))

# Round prices so the expected figures can be worked out by hand.
PRICES = {
    "as_of": "2026-01-15",
    "currency": "USD",
    "hours_per_month": 730,
    "spot_price_factor": {"default": 0.4, "g5": 0.5},
    "regions": {
        "us-east-1": {
            "eks_cluster_hour": 0.1,
            "nat_gateway_hour": 0.05,
            "nat_gateway_gb": 0.05,
            "s3_standard_gb_month": 0.02,
            "ec2": {"m6i.large": 0.1, "g5.xlarge": 1.0},
            "sagemaker": {"ml.m5.large": 0.2},
        }
    },
}

SMALL_STACK = {
    "config": {
        "aws:region": "us-east-1",
        "mlinfra:team": "calc",
        "mlinfra:environment": "dev",
        "mlinfra:costCenter": "cc-1",
        "mlinfra:network": {"natGateways": "single"},
        "mlinfra:cluster": {
            "systemPool": {"instanceType": "m6i.large", "minSize": 1, "maxSize": 2},
            "gpuPools": [
                {
                    "name": "train",
                    "instanceTypes": ["g5.xlarge"],
                    "capacity": "spot",
                    "minSize": 0,
                    "maxSize": 3,
                },
                # Not in the table above: must come out unpriced, never as zero.
                {"name": "big", "instanceTypes": ["g6e.xlarge"], "minSize": 1, "maxSize": 1},
            ],
        },
        "mlinfra:modelRegistry": {"modelGroups": [{"name": "m"}]},
        "mlinfra:endpoints": [
            {
                "name": "api",
                "modelGroup": "m",
                "instanceType": "ml.m5.large",
                "minInstances": 1,
                "maxInstances": 4,
            }
        ],
        "mlinfra:budget": {"monthlyLimitUsd": 100, "alertEmails": ["a@example.com"]},
    }
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    stacks = tmp_path_factory.mktemp("stacks")
    (stacks / "Pulumi.calc-dev.yaml").write_text(yaml.safe_dump(SMALL_STACK))
    return stacks


@cache
def small_report(stacks: Path) -> tuple[dict, int]:
    text, code = plan("calc-dev", as_json=True, stacks_dir=stacks, prices=parse_prices(PRICES))
    return json.loads(text), code


def test_cost_arithmetic_on_a_hand_checked_stack(small: Path):
    report, code = small_report(small)
    assert code == 0, report
    cost = report["cost"]
    lines = {line["item"]: line for line in cost["lines"]}
    # 730 h/month. system: 0.10/h x 1..2 nodes
    assert (
        lines["node pool calc-dev-system"]["min_monthly"],
        lines["node pool calc-dev-system"]["max_monthly"],
    ) == (73.0, 146.0)
    # spot g5.xlarge: 1.00/h x 0.5 spot factor x 0..3 nodes
    train = lines["node pool calc-dev-train"]
    assert train["hourly"] == 0.5 and (train["min_monthly"], train["max_monthly"]) == (0.0, 1095.0)
    # SageMaker ml.m5.large, 0.20/h, 1..4 instances, unpinned: the first `mlinfra deploy`
    # creates it, so it costs nothing until then (min) and 4 instances at most (max).
    api = lines["endpoint calc-dev-api"]
    assert (api["min_monthly"], api["max_monthly"]) == (0.0, 584.0)
    assert api["detail"] == "0-4 x ml.m5.large, not yet deployed"
    assert api["note"].startswith("not yet deployed (created by the first `mlinfra deploy`)")
    # one NAT gateway: 0.05/h x 730 + 100 GB x 0.05 = 36.50 + 5.00
    assert lines["NAT gateways"]["min_monthly"] == lines["NAT gateways"]["max_monthly"] == 41.5
    assert lines["EKS control plane"]["min_monthly"] == 73.0
    # five buckets (four data, one access-log) x 1024 GB x 0.02
    assert lines["S3 storage"]["min_monthly"] == 102.4
    # The unknown instance type is unpriced and out of the totals.
    big = lines["node pool calc-dev-big"]
    assert big["hourly"] is None and big["min_monthly"] is None and big["max_monthly"] is None
    assert cost["unpriced"] == ["node pool calc-dev-big: g6e.xlarge not in the table"]
    assert cost["min_monthly"] == 289.9  # 73 + 0 + 0 + 41.5 + 73 + 102.4
    assert cost["max_monthly"] == 2041.9  # 146 + 1095 + 584 + 41.5 + 73 + 102.4
    assert cost["prices_as_of"] == "2026-01-15"


def test_the_text_plan_shows_tree_policies_cost_and_unpriced(small: Path):
    text, code = plan("calc-dev", stacks_dir=small, prices=parse_prices(PRICES))
    assert code == 0
    assert "mlinfra:cluster:GpuCluster" in text and "aws:eks/nodeGroup:NodeGroup" in text
    assert "instanceTypes=g5.xlarge" in text
    assert "imdsv2-required" in text and "FAIL" not in text
    assert "289.90" in text and "2,041.90" in text
    assert (
        "NOT YET DEPLOYED: endpoint calc-dev-api is not yet deployed (created by the first "
        "`mlinfra deploy`): 0 until then, 1 after; priced at 0 for the minimum" in text
    )
    assert "UNPRICED (not in the totals): node pool calc-dev-big" in text
    assert "prices as of 2026-01-15" in text


def test_a_policy_violation_makes_the_plan_fail(tmp_path: Path):
    doc = json.loads(json.dumps(SMALL_STACK))
    # p3 is an EC2 GPU type the spec knows, but not on the policy's allowed list.
    doc["config"]["mlinfra:cluster"]["gpuPools"][0]["instanceTypes"] = ["p3.2xlarge"]
    (tmp_path / "Pulumi.calc-dev.yaml").write_text(yaml.safe_dump(doc))
    text, code = plan("calc-dev", as_json=True, stacks_dir=tmp_path, prices=parse_prices(PRICES))
    assert code == 1
    found = json.loads(text)["policies"]["gpu-instance-types-allowed"]
    assert found and "p3.2xlarge" in found[0]["message"]


def test_bad_input_gets_a_clear_error(tmp_path: Path):
    text, code = plan("nope", stacks_dir=tmp_path)
    assert code == 2 and "no stack config" in text and "Pulumi.nope.yaml" in text
    doc = json.loads(json.dumps(SMALL_STACK))
    doc["config"]["mlinfra:cluster"]["systemPool"]["minSize"] = 5
    (tmp_path / "Pulumi.bad-dev.yaml").write_text(yaml.safe_dump(doc))
    text, code = plan("bad-dev", stacks_dir=tmp_path)
    assert code == 2 and "mlinfra:cluster.systemPool.minSize" in text


# --- --against: the same stack at another revision -------------------------------------------


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def test_against_renders_the_other_revision_and_prints_the_delta(tmp_path: Path):
    """A repository whose HEAD has the small stack; the working tree raises the GPU pool's
    maximum from 3 to 5 nodes: +2 x 0.5/h x 730 = +730.00 at the maximum, nothing at the
    minimum. The old revision is rendered by its own code, in its own process."""
    repo = tmp_path / "repo"
    for part in ("components", "stacks", "workloads", "policy"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Pulumi.yaml", repo / "Pulumi.yaml")
    for old in (repo / "stacks").glob("Pulumi.*.yaml"):
        old.unlink()
    config = repo / "stacks" / "Pulumi.calc-dev.yaml"
    config.write_text(yaml.safe_dump(SMALL_STACK))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    doc = json.loads(json.dumps(SMALL_STACK))
    doc["config"]["mlinfra:cluster"]["gpuPools"][0]["maxSize"] = 5
    config.write_text(yaml.safe_dump(doc))

    prices = parse_prices(PRICES)
    text, code = plan(
        "calc-dev", against="HEAD", as_json=True, stacks_dir=repo / "stacks", prices=prices
    )
    assert code == 0, text
    against = json.loads(text)["against"]
    assert against["how"] == "rendered at HEAD"
    assert (against["min_monthly"], against["max_monthly"]) == (289.9, 2041.9)
    assert (against["delta_min"], against["delta_max"]) == (0.0, 730.0)

    # A stack that does not exist at the base revision costs its whole amount.
    shutil.copy(config, repo / "stacks" / "Pulumi.new-dev.yaml")
    text, code = plan(
        "new-dev", against="HEAD", as_json=True, stacks_dir=repo / "stacks", prices=prices
    )
    new = json.loads(text)["against"]
    assert "does not exist at HEAD" in new["how"] and new["delta_max"] == 2771.9

    text, code = plan("calc-dev", against="no-such-ref", stacks_dir=repo / "stacks", prices=prices)
    assert code == 2 and "no-such-ref" in text


# --- the price table ------------------------------------------------------------------------


def test_the_repo_price_table_is_valid_and_dated():
    prices = load_prices()
    dt.date.fromisoformat(prices.as_of)
    assert {"us-east-1", "eu-west-1"} <= set(prices.regions)


def test_every_gpu_type_and_every_stack_type_is_priced_in_us_east_1():
    prices = load_prices()
    missing = [t for t in GPU_INSTANCE_TYPES if prices.ec2_hourly("us-east-1", t) is None]
    assert missing == []
    for stack in STACKS:
        spec = load_stack(stack, ROOT / "stacks")
        types = [spec.cluster.system_pool.instance_type]
        types += [t for pool in spec.cluster.gpu_pools for t in pool.instance_types]
        for t in types:
            assert prices.ec2_hourly("us-east-1", t) is not None, (stack, t)
        for ep in spec.endpoints:
            if ep.kind == "sagemaker":
                assert prices.sagemaker_hourly("us-east-1", ep.instance_type), (stack, ep.name)


def test_spot_is_cheaper_by_the_family_factor():
    prices = load_prices()
    on_demand = prices.ec2_hourly("us-east-1", "g5.xlarge")
    assert prices.ec2_hourly("us-east-1", "g5.xlarge", "spot") == pytest.approx(on_demand * 0.4)
    assert prices.ec2_hourly("us-east-1", "x9.unknown") is None
    assert prices.ec2_hourly("mars-north-1", "g5.xlarge") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("as_of"), "missing field 'as_of'"),
        (lambda d: d.update(as_of="last tuesday"), "not a date"),
        (lambda d: d["regions"]["us-east-1"]["ec2"].update({"g5.xlarge": -1}), "ec2.g5.xlarge"),
        (lambda d: d["regions"]["us-east-1"].pop("nat_gateway_gb"), "nat_gateway_gb"),
        (lambda d: d["spot_price_factor"].pop("default"), "spot_price_factor.default"),
    ],
)
def test_a_bad_price_table_is_rejected_with_the_field(change, message):
    doc = json.loads(json.dumps(PRICES))
    change(doc)
    with pytest.raises(PriceTableError, match=message.replace(".", r"\.")):
        parse_prices(doc, "prices.json")


def _price_list(usd: str) -> list[str]:
    return [
        json.dumps(
            {
                "product": {"attributes": {}},
                "terms": {
                    "OnDemand": {
                        "T1": {
                            "priceDimensions": {"D1": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}}
                        }
                    }
                },
            }
        )
    ]


def test_refresh_prices_from_the_pricing_api_with_stubber():
    client = boto3.client(
        "pricing",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    doc = json.loads(json.dumps(PRICES))
    stub = Stubber(client)
    expected = [
        ("AmazonEC2", ec2_filters("us-east-1", "g5.xlarge"), _price_list("1.0060000000")),
        ("AmazonEC2", ec2_filters("us-east-1", "g6.xlarge"), _price_list("0.8048000000")),
        ("AmazonEC2", ec2_filters("us-east-1", "m6i.large"), []),  # AWS has no price: dropped
        ("AmazonSageMaker", sagemaker_filters("us-east-1", "ml.m5.large"), _price_list("0.115")),
    ]
    for service, filters, price_list in expected:
        stub.add_response(
            "get_products",
            {"PriceList": price_list, "FormatVersion": "aws_v1"},
            {"ServiceCode": service, "Filters": filters, "MaxResults": 100},
        )
    with stub:
        new, missing = refresh_prices(
            doc, client=client, extra_ec2_types=["g6.xlarge"], today=dt.date(2026, 11, 20)
        )
    stub.assert_no_pending_responses()
    assert new["as_of"] == "2026-11-20"
    assert new["regions"]["us-east-1"]["ec2"] == {"g5.xlarge": 1.006, "g6.xlarge": 0.8048}
    assert new["regions"]["us-east-1"]["sagemaker"] == {"ml.m5.large": 0.115}
    assert missing == ["us-east-1 ec2 m6i.large"]
    assert doc["regions"]["us-east-1"]["ec2"]["m6i.large"] == 0.1  # the input is not changed
    assert parse_prices(new).ec2_hourly("us-east-1", "m6i.large") is None


def test_ec2_filters_ask_for_linux_shared_on_demand():
    fields = {f["Field"]: f["Value"] for f in ec2_filters("eu-west-1", "g5.xlarge")}
    assert fields == {
        "regionCode": "eu-west-1",
        "instanceType": "g5.xlarge",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }


# --- the real stacks ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_plan_of_every_real_stack(stack: str):
    text, code = plan(stack, as_json=True, stacks_dir=ROOT / "stacks")
    report = json.loads(text)
    assert code == 0, report.get("error") or report["policies"]
    cost = report["cost"]
    assert cost["max_monthly"] >= cost["min_monthly"] > 0
    spec = load_stack(stack, ROOT / "stacks")
    pools = [line for line in cost["lines"] if line["item"].startswith("node pool")]
    assert len(pools) == 1 + len(spec.cluster.gpu_pools)
    sagemaker = [e for e in spec.endpoints if e.kind == "sagemaker"]
    endpoints = {
        line["item"]: line for line in cost["lines"] if line["item"].startswith("endpoint")
    }
    assert sorted(endpoints) == sorted(f"endpoint {spec.prefix}-{e.name}" for e in sagemaker)
    for ep in sagemaker:
        line = endpoints[f"endpoint {spec.prefix}-{ep.name}"]
        # Unpinned: created by `mlinfra deploy`, nothing until then. Pinned: the plan
        # assumes the version approved, so the stack creates it at its minimum.
        low = 0 if ep.model_version is None else ep.min_instances
        assert line["min_monthly"] == round(line["hourly"] * low * 730, 2), line
        assert line["max_monthly"] == round(line["hourly"] * ep.max_instances * 730, 2), line
        assert ("not yet deployed" in line["note"]) is (ep.model_version is None)
    nat = [line for line in cost["lines"] if line["item"] == "NAT gateways"]
    if spec.network.vpc_id:  # an existing VPC: its NAT gateways are not ours
        assert nat == []
    else:
        expected = spec.network.availability_zones if spec.network.nat_gateways == "perAz" else 1
        assert nat[0]["detail"].startswith(f"{expected} x")


def test_an_unpriced_type_in_a_real_stack_is_reported_not_zero():
    # nlp-prod trains on p5.48xlarge in eu-west-1, which the table does not price.
    report = json.loads(plan("nlp-prod", as_json=True, stacks_dir=ROOT / "stacks")[0])
    assert report["cost"]["unpriced"] == [
        "node pool nlp-prod-train-h100: p5.48xlarge not in the table"
    ]


def test_plan_command_is_a_typer_command(capsys):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("plan")(plan_command)
    app.command("noop")(lambda: None)  # more than one command: `plan` is a subcommand
    result = CliRunner().invoke(app, ["plan", "--stack", "nope", "--stacks-dir", "/nonexistent"])
    assert result.exit_code == 2
    assert "no stack config" in result.output
    assert planmod.STORAGE_GB_PER_BUCKET == 1024
