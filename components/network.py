"""The team's network: a VPC across availability zones, or an existing VPC given by id.

A new VPC gets one private subnet per zone (nodes, endpoints) and one small public subnet
per zone (NAT only), NAT gateways (one, or one per zone for prod), a gateway endpoint for
S3 and interface endpoints for ECR, STS and SageMaker, so image pulls, data reads and
model calls stay off the internet. With `network.vpcId` only the security groups are
created; the VPC's owners keep its routing and endpoints, and the program checks, before
it registers anything, what the endpoints rely on: DNS hostnames and support, and a route
to S3's prefix list (a gateway endpoint) from every private subnet.

SageMaker endpoints get a security group of their own: with network isolation SageMaker
downloads the model and uploads captured data through the endpoint's network interfaces,
and the S3 gateway endpoint routes to S3's public prefix list, not to the VPC's CIDR. So
the group allows 443 out to the S3 prefix list (`com.amazonaws.<region>.s3`) and to every
CIDR block of the VPC (the interface endpoints), and nothing in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.spec import PlatformSpec

INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts", "sagemaker.api", "sagemaker.runtime")
# Zones where EKS refuses cluster subnets (UnsupportedAvailabilityZoneException). Zone
# names map to zone IDs differently in every account, so zones are chosen by ID.
EKS_UNSUPPORTED_ZONE_IDS = ("use1-az3", "usw1-az2", "cac1-az3")


@dataclass
class NetworkArgs:
    spec: PlatformSpec


def subnet_cidrs(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Split the VPC block into 8 parts: one private part per zone, public /+6s in the last."""
    net = ipaddress.ip_network(cidr, strict=False)
    parts = list(net.subnets(prefixlen_diff=3))
    public = list(parts[-1].subnets(prefixlen_diff=3))
    return [str(p) for p in parts[:zones]], [str(p) for p in public[:zones]]


def s3_prefix_list_name(region: str) -> str:
    """The AWS-managed prefix list that an S3 gateway endpoint routes to."""
    return f"com.amazonaws.{region}.s3"


def eks_zone_ids(parent: pulumi.Resource, count: int) -> list[str]:
    """The first `count` zone IDs of the region where EKS accepts cluster subnets.

    Only the region's own zones (no Local or Wavelength Zones, which need an opt-in),
    without the zone IDs EKS refuses. Asked before anything is created, so too few zones
    fail the run with the zones there are, not half-way through an `up`.
    """
    zones = aws.get_availability_zones(
        state="available",
        exclude_zone_ids=list(EKS_UNSUPPORTED_ZONE_IDS),
        filters=[
            aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])
        ],
        opts=pulumi.InvokeOptions(parent=parent),
    )
    usable = sorted(i for i in zones.zone_ids if i not in EKS_UNSUPPORTED_ZONE_IDS)
    if len(usable) < count:
        raise ValueError(
            f"mlinfra:network.availabilityZones: {count} zones asked for, but the region "
            f"has only {len(usable)} that EKS supports ({', '.join(usable) or 'none'})"
        )
    return usable[:count]


def existing_subnets_in_eks_zones(parent: pulumi.Resource, subnet_ids: list[str]) -> list[str]:
    """The given subnets, once each is known to lie in a zone where EKS accepts them."""
    for i, sid in enumerate(subnet_ids):
        zone = aws.ec2.get_subnet(id=sid, opts=pulumi.InvokeOptions(parent=parent))
        if zone.availability_zone_id in EKS_UNSUPPORTED_ZONE_IDS:
            raise ValueError(
                f"mlinfra:network.privateSubnetIds[{i}]: {sid} is in "
                f"{zone.availability_zone_id}, a zone where EKS refuses cluster subnets "
                f"({', '.join(EKS_UNSUPPORTED_ZONE_IDS)})"
            )
    return subnet_ids


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    endpoint_security_group_id: pulumi.Output[str]  # VPC interface endpoints
    sagemaker_security_group_id: pulumi.Output[str]  # SageMaker endpoints' interfaces
    vpc_cidrs: list[str]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlinfra:network:Network", name, None, opts)
        spec = args.spec
        self._spec, self._name = spec, name
        self._child = pulumi.ResourceOptions(parent=self)
        net = spec.network
        self._s3_prefix_list = aws.ec2.get_managed_prefix_list_output(
            name=s3_prefix_list_name(spec.region), opts=pulumi.InvokeOutputOptions(parent=self)
        ).id
        if net.vpc_id is not None:
            self.vpc_cidrs = self._check_existing_vpc(net.vpc_id, net.private_subnet_ids)
            self.vpc_id = pulumi.Output.from_input(net.vpc_id)
            self.private_subnet_ids = pulumi.Output.from_input(
                existing_subnets_in_eks_zones(self, list(net.private_subnet_ids))
            )
            self.endpoint_security_group_id = self._security_group(self.vpc_id).id
        else:
            self.vpc_cidrs = [net.cidr]
            self._new_vpc()
        self.sagemaker_security_group_id = self._sagemaker_security_group(self.vpc_id).id
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "private_subnet_ids": self.private_subnet_ids,
                "endpoint_security_group_id": self.endpoint_security_group_id,
                "sagemaker_security_group_id": self.sagemaker_security_group_id,
            }
        )

    def _check_existing_vpc(self, vpc_id: str, subnet_ids: list[str]) -> list[str]:
        """The CIDR blocks of an existing VPC, once it is fit for the endpoints; otherwise a
        ValueError naming `network.vpcId` (or the subnets) and what is missing."""
        invoke = pulumi.InvokeOptions(parent=self)
        where = "mlinfra:network.vpcId"
        vpc = aws.ec2.get_vpc(id=vpc_id, opts=invoke)
        problems = []
        if not vpc.enable_dns_support or not vpc.enable_dns_hostnames:
            problems.append(
                "DNS support and DNS hostnames must both be enabled (the interface endpoints' "
                "private DNS names, and SageMaker in the VPC, need them)"
            )
        prefix_list = aws.ec2.get_managed_prefix_list(
            name=s3_prefix_list_name(self._spec.region), opts=invoke
        ).id

        def tables(name: str, value: str) -> set[str]:
            found = aws.ec2.get_route_tables(
                vpc_id=vpc_id,
                filters=[aws.ec2.GetRouteTablesFilterArgs(name=name, values=[value])],
                opts=invoke,
            )
            return set(found.ids or [])

        routed = tables("route.destination-prefix-list-id", prefix_list)
        main = tables("association.main", "true")
        unrouted = [
            s for s in subnet_ids if not (tables("association.subnet-id", s) or main) & routed
        ]
        if unrouted:
            problems.append(
                f"subnets {', '.join(unrouted)} have no route to S3 ({prefix_list}, an S3 "
                "gateway endpoint): SageMaker endpoints could not fetch models or write "
                "captured data; associate the VPC's S3 gateway endpoint with their route tables"
            )
        if problems:
            raise ValueError(f"{where}: {vpc_id}: " + "; ".join(problems))
        cidrs = [a.cidr_block for a in vpc.cidr_block_associations or [] if a.state == "associated"]
        return cidrs or [vpc.cidr_block]

    def _tags(self, name: str, **extra: str) -> dict[str, str]:
        return {**self._spec.tags, "Name": f"{self._spec.prefix}-{name}", **extra}

    def _new_vpc(self) -> None:
        spec, name, child = self._spec, self._name, self._child
        net = spec.network
        zone_ids = eks_zone_ids(self, net.availability_zones)
        private_cidrs, public_cidrs = subnet_cidrs(net.cidr, net.availability_zones)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=net.cidr,
            enable_dns_support=True,  # interface endpoints' private DNS needs both
            enable_dns_hostnames=True,
            tags=self._tags("vpc"),
            opts=child,
        )
        self.vpc_id = vpc.id
        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=vpc.id, tags=self._tags("igw"), opts=child
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id, tags=self._tags("public"), opts=child
        )
        aws.ec2.Route(
            f"{name}-public-default",
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )

        private_subnets: list[aws.ec2.Subnet] = []
        nat_gateways: list[aws.ec2.NatGateway] = []
        private_rts: list[aws.ec2.RouteTable] = []
        for i in range(net.availability_zones):
            zone = zone_ids[i]
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[i],
                availability_zone_id=zone,
                map_public_ip_on_launch=False,  # only the NAT gateways live here
                tags=self._tags(f"public-{i}", **{"kubernetes.io/role/elb": "1"}),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}-rt",
                subnet_id=public.id,
                route_table_id=public_rt.id,
                opts=child,
            )
            if i == 0 or net.nat_gateways == "perAz":
                eip = aws.ec2.Eip(
                    f"{name}-nat-{i}-ip", domain="vpc", tags=self._tags(f"nat-{i}"), opts=child
                )
                nat_gateways.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}",
                        allocation_id=eip.allocation_id,
                        subnet_id=public.id,
                        tags=self._tags(f"nat-{i}"),
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                    )
                )
            private = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[i],
                availability_zone_id=zone,
                tags=self._tags(f"private-{i}", **{"kubernetes.io/role/internal-elb": "1"}),
                opts=child,
            )
            private_subnets.append(private)
            rt = aws.ec2.RouteTable(
                f"{name}-private-{i}-rt", vpc_id=vpc.id, tags=self._tags(f"private-{i}"), opts=child
            )
            private_rts.append(rt)
            aws.ec2.Route(
                f"{name}-private-{i}-default",
                route_table_id=rt.id,
                destination_cidr_block="0.0.0.0/0",
                # Single NAT: every zone goes through zone 0's; perAz: each its own.
                nat_gateway_id=nat_gateways[-1].id,
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}-rt", subnet_id=private.id, route_table_id=rt.id, opts=child
            )
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private_subnets])

        sg = self._security_group(vpc.id)
        self.endpoint_security_group_id = sg.id
        region = spec.region
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_rts],
            tags=self._tags("s3"),
            opts=child,
        )
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=self.private_subnet_ids,
                security_group_ids=[sg.id],
                tags=self._tags(service),
                opts=child,
            )

    def _rule(self, kind: str, sg: aws.ec2.SecurityGroup, rule: str, **args: Any) -> None:
        cls = aws.vpc.SecurityGroupIngressRule if kind == "in" else aws.vpc.SecurityGroupEgressRule
        cls(
            f"{self._name}-{rule}",
            security_group_id=sg.id,
            tags=self._tags(rule),
            opts=self._child,
            **args,
        )

    def _group(
        self, vpc_id: pulumi.Input[str], key: str, name: str, description: str
    ) -> aws.ec2.SecurityGroup:
        return aws.ec2.SecurityGroup(
            f"{self._name}-{key}",
            name=f"{self._spec.prefix}-{name}",
            description=description,
            vpc_id=vpc_id,
            tags=self._tags(name),
            opts=self._child,
        )

    def _security_group(self, vpc_id: pulumi.Input[str]) -> aws.ec2.SecurityGroup:
        """HTTPS from inside the VPC only: for the VPC interface endpoints."""
        sg = self._group(
            vpc_id,
            "endpoints",
            "endpoints",
            "HTTPS from inside the VPC to SageMaker and AWS service endpoints",
        )
        for i, cidr in enumerate(self.vpc_cidrs):
            suffix = "" if i == 0 else f"-{i}"  # the first keeps its name (no replacement)
            self._rule(
                "in",
                sg,
                f"endpoints-https-in{suffix}",
                description="HTTPS from the VPC",
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                cidr_ipv4=cidr,
            )
            self._rule(
                "out",
                sg,
                f"endpoints-out{suffix}",
                description="Responses and calls inside the VPC",
                ip_protocol="-1",
                cidr_ipv4=cidr,
            )
        return sg

    def _sagemaker_security_group(self, vpc_id: pulumi.Input[str]) -> aws.ec2.SecurityGroup:
        """SageMaker endpoints' interfaces: 443 out to S3 (prefix list) and the VPC, none in."""
        sg = self._group(
            vpc_id,
            "sagemaker",
            "sagemaker-endpoints",
            "SageMaker endpoints: HTTPS to S3 and to the service endpoints of the VPC",
        )
        # 443 to S3 through its gateway endpoint (model download, data capture), and to
        # the interface endpoints in every CIDR block of the VPC.
        destinations = [("sagemaker-s3", {"prefix_list_id": self._s3_prefix_list})] + [
            (f"sagemaker-vpc-{i}", {"cidr_ipv4": cidr}) for i, cidr in enumerate(self.vpc_cidrs)
        ]
        for rule, destination in destinations:
            self._rule(
                "out",
                sg,
                rule,
                description="HTTPS to S3 and the service endpoints of the VPC",
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                **destination,
            )
        return sg
