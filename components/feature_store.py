"""The feature store: SageMaker Feature Store feature groups declared from the spec.

One Glue database holds the offline store's tables; each feature group in the spec becomes
an `aws.sagemaker.FeatureGroup` with an online store (KMS-encrypted, with an optional TTL)
and an offline store (Parquet in `s3://<features bucket>/offline/<group>`, KMS-encrypted,
catalogued in Glue) as the spec asks. SageMaker writes the offline store with a role that
reaches only that prefix, the team key and the team's Glue database.

Training sets are built from the offline store by Athena (`workloads.features.athena`), in
a workgroup of the team's own: its query results go to the artifacts bucket under the team
key whatever a client asks (the workgroup overrides client-side settings), and the team's
workloads may run queries in it and nowhere else (`training_set_statements`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.iam import assume_role_policy
from components.spec import FeatureGroupSpec, PlatformSpec
from workloads.features.athena import LABELS_TABLE_PREFIX

# Spec feature types -> SageMaker Feature Store FeatureType.
FEATURE_TYPES = {"string": "String", "integral": "Integral", "fractional": "Fractional"}

# The offline store's table format. "Glue" keeps the offline store plain Parquet files
# under the group's S3 prefix, which the workloads read directly from `offline_uri`, the
# same way they read the local backend's files (Iceberg would need an Iceberg reader).
OFFLINE_TABLE_FORMAT = "Glue"

OFFLINE_PREFIX = "offline"
# Athena's query metadata and results (the training sets themselves go to training-sets/).
ATHENA_RESULTS_PREFIX = "athena-results"


def glue_database_name(spec: PlatformSpec) -> str:
    """Glue/Athena names take lowercase letters, digits and underscores only."""
    return f"{spec.prefix}_features".replace("-", "_")


def offline_uri(bucket: str, group: str) -> str:
    return f"s3://{bucket}/{OFFLINE_PREFIX}/{group}"


def workgroup_name(spec: PlatformSpec) -> str:
    return f"{spec.prefix}-training-sets"


@dataclass
class FeatureStoreArgs:
    spec: PlatformSpec
    features_bucket: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    # Where Athena writes query results; without it no workgroup is made.
    artifacts_bucket: pulumi.Input[str] | None = None


class FeatureStore(pulumi.ComponentResource):
    """A Glue database, the Feature Store role and one feature group per spec group."""

    database_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    group_names: dict[str, pulumi.Output[str]]
    group_arns: dict[str, pulumi.Output[str]]
    offline_uris: dict[str, pulumi.Output[str]]
    # The team's Athena workgroup, when some group has an offline store to query, and what
    # the workloads' role needs to build training sets in it (empty without one).
    workgroup_name: pulumi.Output[str] | None
    workgroup_arn: pulumi.Output[str] | None
    training_set_statements: list[dict]

    def __init__(
        self, name: str, args: FeatureStoreArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("mlinfra:featurestore:FeatureStore", name, None, opts)
        spec = args.spec
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOptions(parent=self)
        # Deleting a feature group drops its online records and its Glue table: prod keeps them.
        data = pulumi.ResourceOptions(parent=self, protect=spec.protect_data)
        bucket = pulumi.Output.from_input(args.features_bucket)
        kms_key_arn = pulumi.Output.from_input(args.kms_key_arn)
        partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id

        database = aws.glue.CatalogDatabase(
            f"{name}-offline",
            name=glue_database_name(spec),
            description=f"Offline feature store of {spec.prefix}",
            location_uri=bucket.apply(lambda b: f"s3://{b}/{OFFLINE_PREFIX}/"),
            tags=spec.tags,
            opts=data,
        )

        role = aws.iam.Role(
            f"{name}-role",
            name=f"{spec.prefix}-featurestore",
            description="Assumed by SageMaker Feature Store to write the offline store",
            assume_role_policy=assume_role_policy("sagemaker.amazonaws.com"),
            tags=spec.tags,
            opts=child,
        )
        policy = aws.iam.RolePolicy(
            f"{name}-role-policy",
            role=role.id,
            policy=pulumi.Output.all(
                partition=partition,
                account=account,
                region=spec.region,
                bucket=bucket,
                kms_key_arn=kms_key_arn,
                database=database.name,
            ).apply(lambda a: json.dumps(offline_store_policy(**a))),
            opts=child,
        )

        self.database_name = database.name
        self.role_arn = role.arn
        self.group_names = {}
        self.group_arns = {}
        self.offline_uris = {}
        for group in spec.feature_groups:
            fg = aws.sagemaker.FeatureGroup(
                f"{name}-{group.name}",
                **feature_group_args(spec, group, bucket, kms_key_arn, database.name, role.arn),
                # The role must be able to write before SageMaker creates the offline store.
                opts=pulumi.ResourceOptions.merge(
                    data, pulumi.ResourceOptions(depends_on=[policy])
                ),
            )
            self.group_names[group.name] = fg.feature_group_name
            self.group_arns[group.name] = fg.arn
            if group.offline:
                self.offline_uris[group.name] = bucket.apply(
                    lambda b, g=group.name: offline_uri(b, g)
                )

        self.workgroup_name = self.workgroup_arn = None
        self.training_set_statements = []
        if args.artifacts_bucket is not None and any(g.offline for g in spec.feature_groups):
            workgroup = aws.athena.Workgroup(
                f"{name}-workgroup",
                name=workgroup_name(spec),
                description=f"Training sets of {spec.prefix} from its offline feature store",
                configuration=aws.athena.WorkgroupConfigurationArgs(
                    enforce_workgroup_configuration=True,
                    publish_cloudwatch_metrics_enabled=True,
                    result_configuration=aws.athena.WorkgroupConfigurationResultConfigurationArgs(
                        output_location=pulumi.Output.concat(
                            "s3://", args.artifacts_bucket, f"/{ATHENA_RESULTS_PREFIX}/"
                        ),
                        encryption_configuration=aws.athena.WorkgroupConfigurationResultConfigurationEncryptionConfigurationArgs(  # noqa: E501
                            encryption_option="SSE_KMS", kms_key_arn=kms_key_arn
                        ),
                    ),
                ),
                # Saved queries only; results and training sets live in S3.
                force_destroy=True,
                tags=spec.tags,
                opts=child,
            )
            self.workgroup_name = workgroup.name
            self.workgroup_arn = workgroup.arn
            self.training_set_statements = training_set_statements(
                pulumi.Output.concat("arn:", partition, ":glue:", spec.region, ":", account),
                database.name,
                workgroup.arn,
                pulumi.Output.concat("arn:", partition, ":s3:::", args.artifacts_bucket),
            )

        self.register_outputs(
            {
                "database_name": self.database_name,
                "workgroup_name": self.workgroup_name,
                "role_arn": self.role_arn,
                "group_names": self.group_names,
                "group_arns": self.group_arns,
                "offline_uris": self.offline_uris,
            }
        )


def feature_group_args(
    spec: PlatformSpec,
    group: FeatureGroupSpec,
    bucket: pulumi.Output[str],
    kms_key_arn: pulumi.Output[str],
    database_name: pulumi.Output[str],
    role_arn: pulumi.Output[str],
) -> dict:
    """The inputs of one `aws.sagemaker.FeatureGroup`."""
    args: dict = {
        "feature_group_name": spec.physical(group.name),
        "description": group.description or None,
        "record_identifier_feature_name": group.record_identifier,
        "event_time_feature_name": group.event_time,
        "feature_definitions": [
            aws.sagemaker.FeatureGroupFeatureDefinitionArgs(
                feature_name=f.name, feature_type=FEATURE_TYPES[f.type]
            )
            for f in group.features
        ],
        "role_arn": role_arn,
        "tags": spec.tags,
    }
    if group.online:
        ttl = None
        if group.online_ttl_days is not None:
            ttl = aws.sagemaker.FeatureGroupOnlineStoreConfigTtlDurationArgs(
                unit="Days", value=group.online_ttl_days
            )
        args["online_store_config"] = aws.sagemaker.FeatureGroupOnlineStoreConfigArgs(
            enable_online_store=True,
            security_config=aws.sagemaker.FeatureGroupOnlineStoreConfigSecurityConfigArgs(
                kms_key_id=kms_key_arn
            ),
            ttl_duration=ttl,
        )
    if group.offline:
        args["offline_store_config"] = aws.sagemaker.FeatureGroupOfflineStoreConfigArgs(
            s3_storage_config=aws.sagemaker.FeatureGroupOfflineStoreConfigS3StorageConfigArgs(
                s3_uri=bucket.apply(lambda b: offline_uri(b, group.name)),
                kms_key_id=kms_key_arn,
            ),
            data_catalog_config=aws.sagemaker.FeatureGroupOfflineStoreConfigDataCatalogConfigArgs(
                catalog="AwsDataCatalog",
                database=database_name,
                table_name=spec.physical(group.name).replace("-", "_").lower(),
            ),
            disable_glue_table_creation=False,
            table_format=OFFLINE_TABLE_FORMAT,
        )
    return args


def offline_store_policy(
    partition: str, account: str, region: str, bucket: str, kms_key_arn: str, database: str
) -> dict:
    """Least privilege for the offline store: its prefix, the team key, the team database."""
    glue = f"arn:{partition}:glue:{region}:{account}"
    bucket_arn = f"arn:{partition}:s3:::{bucket}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OfflineStoreObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject", "s3:PutObjectAcl"],
                "Resource": f"{bucket_arn}/{OFFLINE_PREFIX}/*",
            },
            {
                "Sid": "OfflineStoreBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketAcl", "s3:GetBucketLocation", "s3:ListBucket"],
                "Resource": bucket_arn,
            },
            {
                "Sid": "TeamKey",
                "Effect": "Allow",
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                "Resource": kms_key_arn,
            },
            {
                "Sid": "OfflineStoreCatalog",
                "Effect": "Allow",
                "Action": [
                    "glue:GetDatabase",
                    "glue:GetTable",
                    "glue:GetTables",
                    "glue:CreateTable",
                    "glue:UpdateTable",
                    "glue:GetPartitions",
                    "glue:BatchCreatePartition",
                ],
                "Resource": [
                    f"{glue}:catalog",
                    f"{glue}:database/{database}",
                    f"{glue}:table/{database}/*",
                ],
            },
        ],
    }


def training_set_statements(
    glue: pulumi.Input[str],
    database: pulumi.Input[str],
    workgroup_arn: pulumi.Input[str],
    artifacts_bucket_arn: pulumi.Input[str],
) -> list[dict]:
    """What a workload needs to build a training set with Athena, as the caller Athena
    acts for: queries in the team's workgroup, the offline store's Glue tables (read), its own
    temporary labels tables (create, delete), and multipart uploads of the results it writes
    into the artifacts bucket (objects there are already the workload's), and Lake
    Formation's data access where it governs the catalog. `glue` is
    `arn:<partition>:glue:<region>:<account>`."""
    tables = pulumi.Output.concat(glue, ":table/", database, "/")
    catalog = [
        pulumi.Output.concat(glue, ":catalog"),
        pulumi.Output.concat(glue, ":database/", database),
    ]
    return [
        {
            "Sid": "TrainingSetQueries",
            "Effect": "Allow",
            "Action": [
                "athena:StartQueryExecution",
                "athena:GetQueryExecution",
                "athena:StopQueryExecution",
                "athena:GetWorkGroup",
            ],
            "Resource": [workgroup_arn],
        },
        {
            "Sid": "ReadOfflineStoreCatalog",
            "Effect": "Allow",
            "Action": [
                "glue:GetDatabase",
                "glue:GetTable",
                "glue:GetTables",
                "glue:GetPartition",
                "glue:GetPartitions",
            ],
            "Resource": [*catalog, pulumi.Output.concat(tables, "*")],
        },
        {
            "Sid": "TrainingSetLabelsTables",
            "Effect": "Allow",
            "Action": ["glue:CreateTable", "glue:DeleteTable"],
            "Resource": [*catalog, pulumi.Output.concat(tables, LABELS_TABLE_PREFIX, "*")],
        },
        {
            # Where Lake Formation governs the catalog, Athena reads the offline store with
            # credentials Lake Formation vends to the caller: "anyone who uses Athena to query
            # data registered with Lake Formation must have an IAM permissions policy that
            # allows the lakeformation:GetDataAccess action" (Athena user guide, "Manage Lake
            # Formation and Athena user permissions"). The action takes no resource ARN; what
            # it vends stays bounded by the Lake Formation grants on the team's tables.
            "Sid": "LakeFormationDataAccess",
            "Effect": "Allow",
            "Action": ["lakeformation:GetDataAccess"],
            "Resource": "*",
        },
        {
            "Sid": "TrainingSetUploads",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": [pulumi.Output.concat(artifacts_bucket_arn, "/*")],
        },
        {
            "Sid": "TrainingSetUploadsList",
            "Effect": "Allow",
            "Action": ["s3:ListBucketMultipartUploads"],
            "Resource": [artifacts_bucket_arn],
        },
    ]
