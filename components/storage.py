"""The team's data lake: one S3 bucket per purpose, encrypted with the team's own KMS key.

Every bucket gets SSE-KMS with the team key (rotation on, S3 bucket keys to keep KMS
calls cheap), versioning, all four public-access blocks, owner-enforced object ownership
(no ACLs), a policy that denies any request not made over TLS, and lifecycle rules.
Data capture and monitoring reports live in the KMS-encrypted logs bucket. S3 server
access logs of all four go to a fifth bucket, `<prefix>-access-logs-<account>`, encrypted
with SSE-S3: the only default encryption S3 documents for a server access log
destination (it does not deliver into SSE-KMS buckets). In prod the buckets and the key are
protected and retained, so `pulumi destroy` cannot take the data with it; dev buckets
are force-destroyable, so review stacks can be torn down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.spec import BUCKET_PURPOSES, PlatformSpec

# Every data bucket logs its server access into the access-log bucket (which does not log
# itself: logging a bucket into itself loops).
LOGGED_PURPOSES = BUCKET_PURPOSES
ACCESS_LOGS = "access-logs"
S3_LOGGING_SERVICE = "logging.s3.amazonaws.com"


@dataclass
class DataLakeArgs:
    spec: PlatformSpec


def tls_only_statement(bucket_arn: pulumi.Input[str]) -> pulumi.Output[dict[str, Any]]:
    """Deny every request that is not made over TLS."""
    return pulumi.Output.from_input(bucket_arn).apply(
        lambda arn: {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    )


class DataLake(pulumi.ComponentResource):
    kms_key: aws.kms.Key
    kms_key_arn: pulumi.Output[str]
    bucket_names: dict[str, pulumi.Output[str]]
    bucket_arns: dict[str, pulumi.Output[str]]
    access_logs_bucket: pulumi.Output[str]

    def __init__(
        self, name: str, args: DataLakeArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlinfra:storage:DataLake", name, None, opts)
        spec = args.spec
        account_id = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        account = account_id.account_id
        child = pulumi.ResourceOptions(parent=self)
        # Prod: losing the key would lose every object encrypted with it.
        keep = pulumi.ResourceOptions(
            parent=self, protect=spec.protect_data, retain_on_delete=spec.protect_data
        )

        self.kms_key = aws.kms.Key(
            f"{name}-key",
            description=f"{spec.prefix} data lake, feature store and registry encryption",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.json_dumps(_key_policy(account)),
            tags={**spec.tags, "Name": f"{spec.prefix}-data"},
            opts=keep,
        )
        aws.kms.Alias(
            f"{name}-key-alias",
            name=f"alias/{spec.prefix}-data",
            target_key_id=self.kms_key.key_id,
            opts=child,
        )
        self.kms_key_arn = self.kms_key.arn

        buckets: dict[str, aws.s3.Bucket] = {}
        for purpose in BUCKET_PURPOSES:
            buckets[purpose] = aws.s3.Bucket(
                f"{name}-{purpose}",
                # Bucket names are global: the account id keeps them unique.
                bucket=pulumi.Output.concat(spec.prefix, "-", purpose, "-", account),
                force_destroy=not spec.protect_data,
                tags={**spec.tags, "Name": f"{spec.prefix}-{purpose}", "purpose": purpose},
                opts=keep,
            )
        self.bucket_names = {p: b.bucket for p, b in buckets.items()}
        self.bucket_arns = {p: b.arn for p, b in buckets.items()}
        access_logs = aws.s3.Bucket(
            f"{name}-{ACCESS_LOGS}",
            bucket=pulumi.Output.concat(spec.prefix, "-", ACCESS_LOGS, "-", account),
            force_destroy=not spec.protect_data,
            tags={**spec.tags, "Name": f"{spec.prefix}-{ACCESS_LOGS}", "purpose": ACCESS_LOGS},
            opts=keep,
        )
        self.access_logs_bucket = access_logs.bucket

        for purpose, bucket in buckets.items():
            self._secure(name, purpose, bucket, spec, child)
        self._secure(name, ACCESS_LOGS, access_logs, spec, child)

        policies: dict[str, aws.s3.BucketPolicy] = {}
        for purpose, bucket in [*buckets.items(), (ACCESS_LOGS, access_logs)]:
            statements = [tls_only_statement(bucket.arn)]
            if purpose == ACCESS_LOGS:
                sources = [buckets[p].arn for p in LOGGED_PURPOSES]
                statements.append(_log_delivery_statement(bucket.arn, sources, account))
            policies[purpose] = aws.s3.BucketPolicy(
                f"{name}-{purpose}-policy",
                bucket=bucket.id,
                policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements}),
                opts=child,
            )
        for purpose in LOGGED_PURPOSES:
            aws.s3.BucketLogging(
                f"{name}-{purpose}-logging",
                bucket=buckets[purpose].id,
                target_bucket=access_logs.id,
                target_prefix=f"s3-access/{purpose}/",
                # Delivery needs the access-log bucket's policy in place first.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[policies[ACCESS_LOGS]]),
            )

        self.register_outputs(
            {
                "kms_key_arn": self.kms_key_arn,
                "bucket_names": self.bucket_names,
                "bucket_arns": self.bucket_arns,
                "access_logs_bucket": self.access_logs_bucket,
            }
        )

    def _secure(
        self,
        name: str,
        purpose: str,
        bucket: aws.s3.Bucket,
        spec: PlatformSpec,
        opts: pulumi.ResourceOptions,
    ) -> None:
        """Encryption, versioning, no public access, no ACLs and lifecycle for one bucket.

        SSE-KMS with the team key; SSE-S3 for the access-log bucket, where S3 delivers.
        """
        kms = purpose != ACCESS_LOGS
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-{purpose}-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(  # noqa: E501
                        sse_algorithm="aws:kms" if kms else "AES256",
                        kms_master_key_id=self.kms_key.arn if kms else None,
                    ),
                    bucket_key_enabled=True if kms else None,
                )
            ],
            opts=opts,
        )
        aws.s3.BucketVersioning(
            f"{name}-{purpose}-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled"
            ),
            opts=opts,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-{purpose}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=opts,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-{purpose}-ownership",
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=opts,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-{purpose}-lifecycle",
            bucket=bucket.id,
            rules=_lifecycle_rules(purpose, spec),
            opts=opts,
        )


def _lifecycle_rules(
    purpose: str, spec: PlatformSpec
) -> list[aws.s3.BucketLifecycleConfigurationRuleArgs]:
    storage = spec.storage
    everything = aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="")
    rules = [
        aws.s3.BucketLifecycleConfigurationRuleArgs(
            id="expire-noncurrent-versions",
            status="Enabled",
            filter=everything,
            noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(  # noqa: E501
                noncurrent_days=storage.noncurrent_version_expiry_days
            ),
            abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(  # noqa: E501
                days_after_initiation=7
            ),
        )
    ]
    if purpose in ("logs", ACCESS_LOGS):
        rules.append(
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-logs",
                status="Enabled",
                filter=everything,
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                    days=storage.log_retention_days
                ),
            )
        )
    else:
        rules.append(
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="infrequent-access",
                status="Enabled",
                filter=everything,
                transitions=[
                    aws.s3.BucketLifecycleConfigurationRuleTransitionArgs(
                        days=storage.infrequent_access_after_days, storage_class="STANDARD_IA"
                    )
                ],
            )
        )
    return rules


def _key_policy(account: pulumi.Output[str]) -> dict[str, Any]:
    """The account administers the key through IAM; CloudWatch alarms (to the encrypted
    alarm topic) may encrypt with it."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersThroughIam",
                "Effect": "Allow",
                "Principal": {"AWS": pulumi.Output.concat("arn:aws:iam::", account, ":root")},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                # Endpoint alarms publish to the team's encrypted alarm topic.
                "Sid": "CloudWatchAlarmsToEncryptedTopic",
                "Effect": "Allow",
                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceAccount": account}},
            },
        ],
    }


def _log_delivery_statement(
    logs_arn: pulumi.Output[str], sources: list[pulumi.Output[str]], account: pulumi.Output[str]
) -> dict[str, Any]:
    """Let the S3 logging service write access logs for our own buckets only."""
    return {
        "Sid": "S3ServerAccessLogDelivery",
        "Effect": "Allow",
        "Principal": {"Service": S3_LOGGING_SERVICE},
        "Action": "s3:PutObject",
        "Resource": pulumi.Output.concat(logs_arn, "/s3-access/*"),
        "Condition": {
            "ArnLike": {"aws:SourceArn": sources},
            "StringEquals": {"aws:SourceAccount": account},
        },
    }
