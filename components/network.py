"""The team's network: a VPC across availability zones, or an existing VPC given by id.

A new VPC gets one private subnet per zone (nodes, endpoints) and one small public subnet
per zone (NAT only), NAT gateways (one, or one per zone for prod), a gateway endpoint for
S3 and interface endpoints for ECR, STS and SageMaker, so image pulls, data reads and
model calls stay off the internet. With `network.vpcId` only the security group for the
endpoints is created; the VPC's owners keep its routing and endpoints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.spec import PlatformSpec

INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts", "sagemaker.api", "sagemaker.runtime")


@dataclass
class NetworkArgs:
    spec: PlatformSpec


def subnet_cidrs(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Split the VPC block into 8 parts: one private part per zone, public /+6s in the last."""
    net = ipaddress.ip_network(cidr, strict=False)
    parts = list(net.subnets(prefixlen_diff=3))
    public = list(parts[-1].subnets(prefixlen_diff=3))
    return [str(p) for p in parts[:zones]], [str(p) for p in public[:zones]]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    endpoint_security_group_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlinfra:network:Network", name, None, opts)
        spec = args.spec
        self._spec, self._name = spec, name
        self._child = pulumi.ResourceOptions(parent=self)
        net = spec.network
        if net.vpc_id is not None:
            self.vpc_id = pulumi.Output.from_input(net.vpc_id)
            self.private_subnet_ids = pulumi.Output.from_input(list(net.private_subnet_ids))
            vpc_cidr = aws.ec2.get_vpc_output(
                id=net.vpc_id, opts=pulumi.InvokeOutputOptions(parent=self)
            ).cidr_block
            self.endpoint_security_group_id = self._security_group(self.vpc_id, vpc_cidr).id
        else:
            self._new_vpc()
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "private_subnet_ids": self.private_subnet_ids,
                "endpoint_security_group_id": self.endpoint_security_group_id,
            }
        )

    def _tags(self, name: str, **extra: str) -> dict[str, str]:
        return {**self._spec.tags, "Name": f"{self._spec.prefix}-{name}", **extra}

    def _new_vpc(self) -> None:
        spec, name, child = self._spec, self._name, self._child
        net = spec.network
        zones = aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(parent=self)
        ).names
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
            zone = zones.apply(lambda names, i=i: names[i])
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[i],
                availability_zone=zone,
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
                availability_zone=zone,
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

        sg = self._security_group(vpc.id, vpc.cidr_block)
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

    def _security_group(
        self, vpc_id: pulumi.Input[str], vpc_cidr: pulumi.Input[str]
    ) -> aws.ec2.SecurityGroup:
        """HTTPS from inside the VPC only: for SageMaker endpoints and VPC interface endpoints."""
        name, child = self._name, self._child
        sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            name=f"{self._spec.prefix}-endpoints",
            description="HTTPS from inside the VPC to SageMaker and AWS service endpoints",
            vpc_id=vpc_id,
            tags=self._tags("endpoints"),
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-endpoints-https-in",
            security_group_id=sg.id,
            description="HTTPS from the VPC",
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4=vpc_cidr,
            tags=self._tags("endpoints-https-in"),
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-endpoints-out",
            security_group_id=sg.id,
            description="Responses and calls inside the VPC",
            ip_protocol="-1",
            cidr_ipv4=vpc_cidr,
            tags=self._tags("endpoints-out"),
            opts=child,
        )
        return sg
