"""The dated price table behind `mlinfra plan`'s cost estimate, and its refresh.

`components/prices.json` holds hourly on-demand prices per region (EC2 instance types for
node pools, SageMaker `ml.*` hosting types for endpoints), the EKS control plane, NAT
gateway hours and GB processed, S3 Standard per GB-month, and a typical spot price factor
per instance family. It carries its `as_of` date; the plan prints it.

A price that is not in the table is None, and the plan reports it as unpriced: a missing
price is never a zero.

    python -m components.pricing refresh            # rewrite prices.json from the Pricing API
    python -m components.pricing refresh --dry-run  # print what would change
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices.json")
# The Pricing API answers only in a few regions; us-east-1 serves every region's prices.
PRICING_API_REGION = "us-east-1"
_UNIT_KEYS = ("eks_cluster_hour", "nat_gateway_hour", "nat_gateway_gb", "s3_standard_gb_month")


class PriceTableError(ValueError):
    """The price table file is missing a field or has a bad value."""


@dataclass(frozen=True)
class RegionPrices:
    ec2: dict[str, float]
    sagemaker: dict[str, float]
    eks_cluster_hour: float
    nat_gateway_hour: float
    nat_gateway_gb: float
    s3_standard_gb_month: float


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    currency: str
    hours_per_month: float
    source: str
    spot_price_factor: dict[str, float]
    regions: dict[str, RegionPrices]

    def region(self, region: str) -> RegionPrices | None:
        return self.regions.get(region)

    def spot_factor(self, instance_type: str) -> float:
        family = instance_type.removeprefix("ml.").split(".")[0]
        return self.spot_price_factor.get(family, self.spot_price_factor["default"])

    def ec2_hourly(
        self, region: str, instance_type: str, capacity: str = "onDemand"
    ) -> float | None:
        """Hourly price of one instance; spot is on-demand times the family's spot factor."""
        prices = self.region(region)
        price = prices.ec2.get(instance_type) if prices else None
        if price is None:
            return None
        return price * self.spot_factor(instance_type) if capacity == "spot" else price

    def sagemaker_hourly(self, region: str, instance_type: str) -> float | None:
        prices = self.region(region)
        return prices.sagemaker.get(instance_type) if prices else None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PriceTableError(f"{where}: {value!r} is not a price (a number >= 0)")
    return float(value)


def parse_prices(doc: dict[str, Any], source: str = "prices") -> PriceTable:
    """Validate a price table document; errors name the file and the field."""
    try:
        as_of = str(doc["as_of"])
        dt.date.fromisoformat(as_of)
        regions = {}
        for name, r in doc["regions"].items():
            where = f"{source}: regions.{name}"
            regions[name] = RegionPrices(
                ec2={k: _number(v, f"{where}.ec2.{k}") for k, v in r["ec2"].items()},
                sagemaker={
                    k: _number(v, f"{where}.sagemaker.{k}") for k, v in r["sagemaker"].items()
                },
                **{k: _number(r[k], f"{where}.{k}") for k in _UNIT_KEYS},
            )
        spot = {
            k: _number(v, f"{source}: spot_price_factor.{k}")
            for k, v in doc["spot_price_factor"].items()
            if not k.startswith("_")
        }
        if "default" not in spot:
            raise PriceTableError(f"{source}: spot_price_factor.default is missing")
        return PriceTable(
            as_of=as_of,
            currency=str(doc.get("currency", "USD")),
            hours_per_month=_number(doc["hours_per_month"], f"{source}: hours_per_month"),
            source=str(doc.get("source", "")),
            spot_price_factor=spot,
            regions=regions,
        )
    except KeyError as exc:
        raise PriceTableError(f"{source}: missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        if isinstance(exc, PriceTableError):
            raise
        raise PriceTableError(f"{source}: as_of {doc.get('as_of')!r} is not a date") from None


def load_prices(path: str | Path = PRICES_FILE) -> PriceTable:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PriceTableError(f"{path}: no price table there") from None
    except json.JSONDecodeError as exc:
        raise PriceTableError(f"{path}: not valid JSON: {exc}") from None
    return parse_prices(doc, str(path))


# --- refresh from the AWS Pricing API --------------------------------------------------------


def _on_demand_usd(price_list: Iterable[str]) -> float | None:
    """The hourly USD on-demand price in a GetProducts answer (the first non-zero one)."""
    for item in price_list:
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                usd = float(dim.get("pricePerUnit", {}).get("USD", "0"))
                if usd > 0:
                    return usd
    return None


def _match(**fields: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def ec2_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    return _match(
        regionCode=region,
        instanceType=instance_type,
        operatingSystem="Linux",
        tenancy="Shared",
        preInstalledSw="NA",
        capacitystatus="Used",
    )


def sagemaker_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    return _match(
        regionCode=region,
        instanceName=instance_type,
        productFamily="ML Instance",
        platoinstancetype="Hosting",
    )


def refresh_prices(
    doc: dict[str, Any],
    *,
    client: Any = None,
    regions: Iterable[str] | None = None,
    extra_ec2_types: Iterable[str] = (),
    today: dt.date | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Fetch current on-demand prices for every instance type in the table (plus
    `extra_ec2_types`) and return (the updated document, the types AWS had no price for).

    Unit prices (EKS, NAT, S3) and spot factors are kept: they change rarely and the
    Pricing API's attribute names for them differ per service. A type AWS does not price
    keeps no entry rather than a stale or zero one.
    """
    if client is None:
        import boto3  # only when refreshing for real: the plan never needs it

        client = boto3.client("pricing", region_name=PRICING_API_REGION)
    doc = json.loads(json.dumps(doc))  # a deep copy
    missing: list[str] = []
    for region in regions or list(doc["regions"]):
        table = doc["regions"][region]
        for section, service, filters, types in (
            ("ec2", "AmazonEC2", ec2_filters, sorted({*table["ec2"], *extra_ec2_types})),
            ("sagemaker", "AmazonSageMaker", sagemaker_filters, sorted(table["sagemaker"])),
        ):
            for itype in types:
                answer = client.get_products(
                    ServiceCode=service, Filters=filters(region, itype), MaxResults=100
                )
                price = _on_demand_usd(answer.get("PriceList", []))
                if price is None:
                    table[section].pop(itype, None)
                    missing.append(f"{region} {section} {itype}")
                else:
                    table[section][itype] = round(price, 6)
    doc["as_of"] = (today or dt.date.today()).isoformat()
    parse_prices(doc, "refreshed prices")  # never write a table the plan cannot read
    return doc, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.pricing")
    sub = parser.add_subparsers(dest="command", required=True)
    refresh = sub.add_parser("refresh", help="update prices.json from the AWS Pricing API")
    refresh.add_argument("--file", default=str(PRICES_FILE))
    refresh.add_argument("--region", action="append", help="only these regions")
    refresh.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)

    from components.gpu import GPU_INSTANCE_TYPES

    path = Path(args.file)
    doc = json.loads(path.read_text())
    new, missing = refresh_prices(doc, regions=args.region, extra_ec2_types=GPU_INSTANCE_TYPES)
    text = json.dumps(new, indent=2) + "\n"
    if args.dry_run:
        print(text)
    else:
        path.write_text(text)
        print(f"wrote {path} (as_of {new['as_of']})")
    for item in missing:
        print(f"no price from AWS: {item}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
