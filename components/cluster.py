"""The team's EKS cluster and GPU node pools, built from plain pulumi-aws resources.

The cluster encrypts Kubernetes secrets with its own KMS key, ships every control-plane
log type to CloudWatch, keeps its API private unless the spec says otherwise and trusts
an OIDC provider for IRSA. A small on-demand system node group runs cluster add-ons; each
GPU pool of the spec becomes a managed node group of NVIDIA AMIs that scales from zero,
is tainted `nvidia.com/gpu=true:NoSchedule` so only GPU work lands there, and boots from a
launch template that requires IMDSv2 and encrypts the root volume.

On the cluster, through a Kubernetes provider built from the cluster's own endpoint: the
NVIDIA device plugin, the team namespace (components/tenancy.py: quota, LimitRange,
`restricted` Pod Security, NetworkPolicies), and a service account bound by IRSA to a
role that reaches only the team's data.

Sub-parts live in modules of their own: who reaches the API and from where
(cluster_access.py), cluster-autoscaler and the metrics-server add-on (autoscaling.py),
the team namespace (tenancy.py), and the monitoring job's identity, the only reader of
captured traffic (monitoring_identity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.autoscaling import (
    autoscaler_tags,
    cluster_autoscaler,
    metrics_server,
    propagate_to_asg,
)
from components.cluster_access import access_entries, api_security_group, bootstrap_creator_admin
from components.iam import assume_role_policy, irsa_role
from components.monitoring_identity import monitoring_identity
from components.network import Network
from components.serving_pod import capture_prefixes
from components.spec import GpuPoolSpec, PlatformSpec
from components.storage import DataLake
from components.tenancy import team_namespace

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
GPU_TAINT_KEY = "nvidia.com/gpu"
POOL_LABEL = "mlinfra.io/pool"
GPU_LABEL = "mlinfra.io/gpu"
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
# AL2023 NVIDIA AMIs ship drivers but no device plugin; Bottlerocket NVIDIA ships its own.
# The DaemonSet runs only where this label says "daemonset", so two plugins never race.
DEVICE_PLUGIN_LABEL = "mlinfra.io/nvidia-device-plugin"
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
SYSTEM_POOL = "system"
GPU_TAINT = aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")
MANAGED_POLICY = "arn:aws:iam::aws:policy/"
# The buckets every pod of the team may read and write (not the logs bucket).
WORKLOAD_BUCKETS = ("raw", "features", "artifacts")


@dataclass
class GpuClusterArgs:
    spec: PlatformSpec
    network: Network
    data_lake: DataLake
    feature_group_arns: list[pulumi.Output[str]] | None = None
    model_group_arns: list[pulumi.Output[str]] | None = None
    # Building training sets with Athena (components.feature_store.training_set_statements).
    training_set_statements: list[dict[str, Any]] | None = None


def pool_labels(pool: GpuPoolSpec) -> dict[str, str]:
    """Node labels of a GPU pool: its name, the GPU model and which device plugin it runs."""
    builtin = pool.ami_type.startswith("BOTTLEROCKET")
    return {
        **pool.labels,
        POOL_LABEL: pool.name,
        GPU_LABEL: pool.gpu,
        "nvidia.com/gpu.present": "true",
        # cluster-autoscaler's GPU label on AWS: it waits for the device plugin on such nodes
        # and counts only GPU requests when it decides a GPU node is idle.
        ACCELERATOR_LABEL: f"nvidia-{pool.gpu.lower()}",
        DEVICE_PLUGIN_LABEL: "builtin" if builtin else "daemonset",
    }


def root_device(ami_type: str) -> str:
    """Bottlerocket boots from a small OS volume; images and scratch live on /dev/xvdb."""
    return "/dev/xvdb" if ami_type.startswith("BOTTLEROCKET") else "/dev/xvda"


class GpuCluster(pulumi.ComponentResource):
    cluster_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]  # the API server URL, for job clients
    certificate_authority: pulumi.Output[str]  # base64 PEM
    namespace: pulumi.Output[str]
    service_account: pulumi.Output[str]
    workload_role_arn: pulumi.Output[str]
    k8s_provider: k8s.Provider
    node_group_names: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, args: GpuClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlinfra:cluster:GpuCluster", name, None, opts)
        spec = args.spec
        self._spec, self._name = spec, name
        child = pulumi.ResourceOptions(parent=self)
        cluster_name = spec.prefix
        tags = spec.tags

        # --- control plane -------------------------------------------------------------
        cluster_role = aws.iam.Role(
            f"{name}-cluster-role",
            name=f"{spec.prefix}-eks-cluster",
            assume_role_policy=assume_role_policy("eks.amazonaws.com"),
            tags=tags,
            opts=child,
        )
        cluster_policy = aws.iam.RolePolicyAttachment(
            f"{name}-cluster-policy",
            role=cluster_role.name,
            policy_arn=f"{MANAGED_POLICY}AmazonEKSClusterPolicy",
            opts=child,
        )
        secrets_key = aws.kms.Key(
            f"{name}-secrets-key",
            description=f"{spec.prefix} EKS secrets encryption",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags={**tags, "Name": f"{spec.prefix}-eks-secrets"},
            opts=child,
        )
        # The control plane envelope-encrypts secrets with this key and nothing else.
        key_use = aws.iam.RolePolicy(
            f"{name}-cluster-secrets-key",
            role=cluster_role.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": [
                                "kms:Encrypt",
                                "kms:Decrypt",
                                "kms:ListGrants",
                                "kms:DescribeKey",
                            ],
                            "Resource": secrets_key.arn,
                        }
                    ],
                }
            ),
            opts=child,
        )
        # EKS creates this group itself, never expiring; owning it sets retention.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane-logs",
            name=f"/aws/eks/{cluster_name}/cluster",
            retention_in_days=365 if spec.is_prod else 90,
            tags=tags,
            opts=child,
        )
        public = spec.cluster.public_endpoint
        api_sg = api_security_group(self, name, spec, args.network.vpc_id, args.network.vpc_cidrs)
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=cluster_name,
            version=spec.cluster.kubernetes_version,
            role_arn=cluster_role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.network.private_subnet_ids,
                endpoint_private_access=True,
                endpoint_public_access=public,
                public_access_cidrs=list(spec.cluster.public_access_cidrs) if public else None,
                security_group_ids=[api_sg.id],
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                resources=["secrets"],
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn),
            ),
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API",
                bootstrap_cluster_creator_admin_permissions=bootstrap_creator_admin(spec),
            ),
            # Outside prod, never drift into extended support's billing: upgrade instead.
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(
                support_type="EXTENDED" if spec.is_prod else "STANDARD"
            ),
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[log_group, cluster_policy, key_use]
            ),
        )
        self.cluster_name = cluster.name
        self.endpoint = cluster.endpoint
        self.certificate_authority = cluster.certificate_authority.data
        issuer = cluster.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc",
            url=issuer,
            client_id_lists=["sts.amazonaws.com"],
            tags=tags,
            opts=child,
        )

        # --- node groups ---------------------------------------------------------------
        node_role = aws.iam.Role(
            f"{name}-node-role",
            name=f"{spec.prefix}-eks-node",
            assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
            tags=tags,
            opts=child,
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}",
                role=node_role.name,
                policy_arn=f"{MANAGED_POLICY}{policy}",
                opts=child,
            )
            for policy in (
                "AmazonEKSWorkerNodePolicy",
                "AmazonEKS_CNI_Policy",
                "AmazonEC2ContainerRegistryReadOnly",
            )
        ]
        self.node_group_names = {}
        system = spec.cluster.system_pool
        system_labels = {POOL_LABEL: SYSTEM_POOL}
        system_nodes = self._node_group(
            pool=SYSTEM_POOL,
            cluster=cluster,
            node_role=node_role,
            subnet_ids=args.network.private_subnet_ids,
            ami_type="AL2023_x86_64_STANDARD",
            instance_types=[system.instance_type],
            capacity_type="ON_DEMAND",
            sizes=(system.min_size, system.min_size, system.max_size),
            disk_gib=50,
            labels=system_labels,
            gpu=None,
            depends_on=attachments,
        )
        self.node_group_names[SYSTEM_POOL] = system_nodes.node_group_name
        for pool in spec.cluster.gpu_pools:
            self.node_group_names[pool.name] = self._node_group(
                pool=pool.name,
                cluster=cluster,
                node_role=node_role,
                subnet_ids=args.network.private_subnet_ids,
                ami_type=pool.ami_type,
                instance_types=list(pool.instance_types),
                capacity_type="SPOT" if pool.capacity == "spot" else "ON_DEMAND",
                sizes=(pool.min_size, pool.desired, pool.max_size),
                disk_gib=pool.disk_size_gib,
                labels=pool_labels(pool),
                gpu=pool,
                depends_on=attachments,
            ).node_group_name

        # --- in-cluster --------------------------------------------------------------------
        self.k8s_provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=pulumi.Output.json_dumps(
                kubeconfig(
                    cluster.name, cluster.endpoint, cluster.certificate_authority.data, spec.region
                )
            ),
            # A destroyed review cluster must not block `pulumi destroy` of what ran on it.
            delete_unreachable=not spec.is_prod,
            # Kubernetes calls wait until the deploy role's access entry works.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=access_entries(self, name, spec, cluster)
            ),
        )
        on_cluster = pulumi.ResourceOptions(parent=self, provider=self.k8s_provider)
        self._device_plugin(on_cluster)
        cluster_autoscaler(
            self,
            name,
            spec,
            cluster=cluster,
            oidc_arn=oidc.arn,
            issuer=issuer,
            provider=self.k8s_provider,
            system_nodes=system_nodes,
        )
        metrics_server(self, name, spec, cluster, system_nodes)
        # The namespace, its quota, LimitRange, Pod Security level and NetworkPolicies.
        ns = team_namespace(name, spec, cluster.name, self.k8s_provider, parent=self)
        self.namespace = ns.metadata.name
        in_ns = pulumi.ResourceOptions(parent=self, provider=self.k8s_provider, depends_on=[ns])

        # --- IRSA: the team's workloads reach the team's data and nothing else ------------
        sa_name = f"{spec.team}-workloads"
        role = irsa_role(
            self,
            f"{name}-workload",
            role_name=f"{spec.prefix}-workloads",
            oidc_arn=oidc.arn,
            issuer=issuer,
            namespace=spec.team,
            service_account=sa_name,
            policy=workload_policy(
                args.data_lake,
                args.feature_group_arns or [],
                args.model_group_arns or [],
                args.training_set_statements or [],
                capture_prefixes(spec),
            ),
            tags=tags,
        )
        self.workload_role_arn = role.arn
        sa = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata={
                "name": sa_name,
                "namespace": self.namespace,
                "annotations": {"eks.amazonaws.com/role-arn": role.arn},
            },
            # IRSA projects its own token; no workload needs the Kubernetes API.
            automount_service_account_token=False,
            opts=in_ns,
        )
        self.service_account = sa.metadata.name
        # Captured request bodies: read by the monitoring job's own identity only.
        monitoring_identity(
            self,
            name,
            spec,
            oidc_arn=oidc.arn,
            issuer=issuer,
            lake=args.data_lake,
            namespace=self.namespace,
            opts=in_ns,
            model_group_arns=args.model_group_arns or [],
        )

        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "endpoint": self.endpoint,
                "certificate_authority": self.certificate_authority,
                "namespace": self.namespace,
                "service_account": self.service_account,
                "workload_role_arn": self.workload_role_arn,
                "node_group_names": self.node_group_names,
            }
        )

    def _node_group(
        self,
        *,
        pool: str,
        cluster: aws.eks.Cluster,
        node_role: aws.iam.Role,
        subnet_ids: pulumi.Input[list[str]],
        ami_type: str,
        instance_types: list[str],
        capacity_type: str,
        sizes: tuple[int, int, int],
        disk_gib: int,
        labels: dict[str, str],
        gpu: GpuPoolSpec | None,
        depends_on: list[pulumi.Resource],
    ) -> aws.eks.NodeGroup:
        spec, name = self._spec, self._name
        tags = {**spec.tags, "Name": spec.physical(pool), "pool": pool}
        template = aws.ec2.LaunchTemplate(
            f"{name}-{pool}-template",
            name=spec.physical(pool),
            description=f"{spec.prefix} {pool} nodes: IMDSv2 only, encrypted root volume",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",  # IMDSv2 only
                http_put_response_hop_limit=2,  # pods on the node network can reach it
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=root_device(ami_type),
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=disk_gib,
                        volume_type="gp3",
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                for kind in ("instance", "volume")
            ],
            update_default_version=True,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        taint = None if gpu is None else "true:NoSchedule"
        cluster_name = spec.prefix
        hints = autoscaler_tags(
            cluster_name, labels, taint, gpu.gpus_per_node if gpu is not None else 0
        )
        group = aws.eks.NodeGroup(
            f"{name}-{pool}",
            cluster_name=cluster.name,
            node_group_name=spec.physical(pool),
            node_role_arn=node_role.arn,
            subnet_ids=subnet_ids,
            ami_type=ami_type,
            instance_types=instance_types,
            capacity_type=capacity_type,
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=sizes[0], desired_size=sizes[1], max_size=sizes[2]
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            labels=labels,
            taints=[]
            if gpu is None
            else [
                aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")
            ],
            tags={**tags, **hints},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends_on,
                # The autoscaler owns the desired size once the group exists.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        # EKS does not copy node group tags to the Auto Scaling group the autoscaler reads.
        propagate_to_asg(self, f"{name}-{pool}", group, hints)
        return group

    def _device_plugin(self, opts: pulumi.ResourceOptions) -> None:
        """The NVIDIA device plugin: advertises `nvidia.com/gpu` on AL2023 GPU nodes."""
        labels = {"app.kubernetes.io/name": "nvidia-device-plugin"}
        k8s.apps.v1.DaemonSet(
            f"{self._name}-nvidia-device-plugin",
            metadata={"name": "nvidia-device-plugin", "namespace": "kube-system"},
            spec={
                "selector": {"matchLabels": labels},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "priorityClassName": "system-node-critical",
                        # It serves the kubelet over a socket, never the Kubernetes API.
                        "automountServiceAccountToken": False,
                        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                        "tolerations": [
                            {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {
                                                    "key": DEVICE_PLUGIN_LABEL,
                                                    "operator": "In",
                                                    "values": ["daemonset"],
                                                }
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                        "containers": [
                            {
                                "name": "nvidia-device-plugin",
                                "image": DEVICE_PLUGIN_IMAGE,
                                "imagePullPolicy": "IfNotPresent",  # public image
                                "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                                # Root, for the kubelet's root-owned socket directory (a
                                # hostPath): the one privilege it keeps. See README.
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"cpu": "500m", "memory": "256Mi"},
                                },
                                "volumeMounts": [
                                    {
                                        "name": "device-plugin",
                                        "mountPath": "/var/lib/kubelet/device-plugins",
                                    }
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "device-plugin",
                                "hostPath": {"path": "/var/lib/kubelet/device-plugins"},
                            }
                        ],
                    },
                },
            },
            opts=opts,
        )


def kubeconfig(
    name: pulumi.Input[str],
    endpoint: pulumi.Input[str],
    ca_data: pulumi.Input[str],
    region: str,
) -> dict[str, Any]:
    """A kubeconfig that authenticates with `aws eks get-token` (no static credentials)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "eks", "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}
        ],
        "users": [
            {
                "name": "aws",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "aws",
                        "args": ["eks", "get-token", "--cluster-name", name, "--region", region],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "eks", "context": {"cluster": "eks", "user": "aws"}}],
        "current-context": "eks",
    }


def workload_policy(
    lake: DataLake,
    feature_group_arns: list[pulumi.Output[str]],
    model_group_arns: list[pulumi.Output[str]],
    training_set_statements: list[dict[str, Any]] = (),  # type: ignore[assignment]
    capture_prefixes: list[str] | None = None,
) -> dict[str, Any]:
    """Least privilege for the team's workloads: named actions on the team's ARNs only.

    Not the logs bucket: captured request and response bodies are read by the monitoring
    job's own identity (components/monitoring_identity.py), not by every pod. The serving
    pods of Kubernetes endpoints with capture on (this identity) only put objects under
    their endpoints' `capture_prefixes` (`data-capture/<endpoint>/AllTraffic/`).
    """
    data = [lake.bucket_arns[p] for p in WORKLOAD_BUCKETS]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListTeamBuckets",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": data,
        },
        {
            "Sid": "ReadWriteTeamData",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": [pulumi.Output.concat(arn, "/*") for arn in data],
        },
        {
            "Sid": "UseTeamKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
            "Resource": [lake.kms_key_arn],
        },
    ]
    if capture_prefixes:
        logs = lake.bucket_arns["logs"]
        statements.append(
            {
                "Sid": "WriteEndpointCaptures",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [pulumi.Output.concat(logs, "/", p, "*") for p in capture_prefixes],
            }
        )
    if feature_group_arns:
        statements.append(
            {
                "Sid": "TeamFeatureGroups",
                "Effect": "Allow",
                "Action": [
                    "sagemaker:DescribeFeatureGroup",
                    "sagemaker:PutRecord",
                    "sagemaker:GetRecord",
                    "sagemaker:BatchGetRecord",
                    "sagemaker:DeleteRecord",
                ],
                "Resource": list(feature_group_arns),
            }
        )
    if model_group_arns:
        # Versions live under model-package/<group>/<n>, next to the group's own ARN.
        versions = [
            pulumi.Output.from_input(arn).apply(
                lambda a: a.replace(":model-package-group/", ":model-package/") + "/*"
            )
            for arn in model_group_arns
        ]
        statements.append(
            {
                "Sid": "TeamModelRegistry",
                "Effect": "Allow",
                "Action": [
                    "sagemaker:DescribeModelPackageGroup",
                    "sagemaker:CreateModelPackage",
                    "sagemaker:DescribeModelPackage",
                    "sagemaker:UpdateModelPackage",
                ],
                "Resource": [*model_group_arns, *versions],
            }
        )
        statements.append(
            {
                # List actions take no resource in IAM; they return metadata, never data.
                "Sid": "ListModelVersions",
                "Effect": "Allow",
                "Action": ["sagemaker:ListModelPackages"],
                "Resource": "*",
            }
        )
    statements.extend(training_set_statements)
    return {"Version": "2012-10-17", "Statement": statements}
