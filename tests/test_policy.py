"""The policy pack: each policy catches its violation and passes every real stack.

Policies are called directly (their `validate` functions with the engine's argument
objects), on hand-made resources and on the resources that the real program registers
for each stack under the mock runtime. One test also runs the pack's entry file the way
the Pulumi engine does (a gRPC analyzer on 127.0.0.1) and asks it to analyze a resource.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "policy"))

import mlinfra_policies as mp  # noqa: E402
from pulumi_policy import EnforcementLevel  # noqa: E402

from tests.stack_support import STACK_NAMES as STACKS  # noqa: E402
from tests.stack_support import first_up_stack  # noqa: E402
from tests.stack_support import rendered_stack as rendered  # noqa: E402

POLICY = {p.name: p for p in mp.POLICIES}
TAGS = {"team": "vision", "environment": "dev", "cost-center": "cc-1", "managed-by": "mlinfra"}
PROD_TAGS = {**TAGS, "environment": "prod"}


def check(policy: str, resource_type: str, props: dict, config: dict | None = None) -> list[str]:
    args = mp.resource_args(resource_type, props, name="hand-made", config=config)
    return mp.run_resource_policy(POLICY[policy], args)


def check_stack(policy: str, resources: list, config: dict | None = None) -> list[str]:
    return [m for m, _ in mp.run_stack_policy(POLICY[policy], resources, config)]


def test_every_policy_is_mandatory_and_named_once():
    assert len(POLICY) == len(mp.POLICIES) >= 14
    for policy in mp.POLICIES:
        assert policy.enforcement_level == EnforcementLevel.MANDATORY, policy.name
        assert policy.description


# --- hand-made resources: compliant ones pass, each violation is reported -------------------

SSE = mp.BUCKET_SSE[0]
KMS_RULE = {
    "applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": "k"}
}
FG_OK = {
    "onlineStoreConfig": {"enableOnlineStore": True, "securityConfig": {"kmsKeyId": "k"}},
    "offlineStoreConfig": {"s3StorageConfig": {"s3Uri": "s3://b/o", "kmsKeyId": "k"}},
    "tags": TAGS,
}
EPC_OK = {
    "productionVariants": [{"instanceType": "ml.m5.large", "initialInstanceCount": 1}],
    "kmsKeyArn": "arn:aws:kms:us-east-1:1:key/k",
    "dataCaptureConfig": {
        "initialSamplingPercentage": 20,
        "kmsKeyId": "k",
        "destinationS3Uri": "s3://l",
    },
    "tags": PROD_TAGS,
}
LT_OK = {
    "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required"},
    "blockDeviceMappings": [
        {"deviceName": "/dev/xvda", "ebs": {"encrypted": "true", "volumeSize": 100}}
    ],
    "tags": TAGS,
}
NG_OK = {
    "instanceTypes": ["g5.xlarge"],
    "amiType": "AL2023_x86_64_NVIDIA",
    "scalingConfig": {"minSize": 0, "desiredSize": 0, "maxSize": 4},
    "launchTemplate": {"id": "lt-1", "version": "1"},
    "tags": TAGS,
}
PAB_OK = {f: True for f in mp.PUBLIC_ACCESS_FLAGS} | {"bucket": "b"}
TLS_DENY = {
    "Sid": "DenyInsecureTransport",
    "Effect": "Deny",
    "Principal": "*",
    "Action": "s3:*",
    "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
}


def iam(*statements: dict) -> dict:
    return {"policy": json.dumps({"Version": "2012-10-17", "Statement": list(statements)})}


def allow(action, resource) -> dict:
    return {"Sid": "S", "Effect": "Allow", "Action": action, "Resource": resource}


def without(props: dict, *path) -> dict:
    out = copy.deepcopy(props)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def replace(props: dict, value, *path) -> dict:
    out = copy.deepcopy(props)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


# (policy, resource type, compliant props, [(violating props, expected message part)])
CASES = [
    (
        "featurestore-encryption",
        mp.FEATURE_GROUP,
        FG_OK,
        [
            (without(FG_OK, "onlineStoreConfig", "securityConfig"), "online store"),
            (without(FG_OK, "offlineStoreConfig", "s3StorageConfig", "kmsKeyId"), "offline store"),
        ],
    ),
    (
        "endpoint-config-encryption",
        mp.ENDPOINT_CONFIG,
        EPC_OK,
        [
            (without(EPC_OK, "kmsKeyArn"), "without kmsKeyArn"),
            (without(EPC_OK, "dataCaptureConfig", "kmsKeyId"), "captured data"),
        ],
    ),
    (
        "node-volume-encryption",
        mp.LAUNCH_TEMPLATE,
        LT_OK,
        [
            (
                replace(LT_OK, "false", "blockDeviceMappings", 0, "ebs", "encrypted"),
                "not encrypted",
            ),
            (without(LT_OK, "blockDeviceMappings"), "no EBS root volume"),
        ],
    ),
    (
        "node-volume-encryption",
        mp.NODE_GROUP,
        NG_OK,
        [(without(NG_OK, "launchTemplate"), "launch template")],
    ),
    (
        "s3-public-access-blocked",
        mp.BUCKET_PAB[0],
        PAB_OK,
        [(replace(PAB_OK, False, "restrictPublicBuckets"), "restrictPublicBuckets")],
    ),
    (
        "s3-tls-only",
        mp.BUCKET_POLICY[0],
        {"bucket": "b", **iam(TLS_DENY)},
        [
            ({"bucket": "b", **iam(allow("s3:GetObject", "arn:aws:s3:::b/*"))}, "TLS"),
            (
                {
                    "bucket": "b",
                    **iam(
                        replace(TLS_DENY, {"Bool": {"aws:SecureTransport": "true"}}, "Condition")
                    ),
                },
                "TLS",
            ),
            ({"bucket": "b", **iam(replace(TLS_DENY, "Allow", "Effect"))}, "TLS"),
        ],
    ),
    (
        "imdsv2-required",
        mp.LAUNCH_TEMPLATE,
        LT_OK,
        [
            (replace(LT_OK, "optional", "metadataOptions", "httpTokens"), "IMDSv1"),
            (without(LT_OK, "metadataOptions"), "IMDSv1"),
        ],
    ),
    (
        "gpu-instance-types-allowed",
        mp.NODE_GROUP,
        NG_OK,
        [
            (
                replace(NG_OK, ["g5.xlarge", "p3.2xlarge"], "instanceTypes"),
                "p3.2xlarge is not allowed",
            ),
            (replace(NG_OK, ["p5e.48xlarge"], "instanceTypes"), "p5e.48xlarge"),
        ],
    ),
    (
        "required-tags",
        "aws:s3/bucket:Bucket",
        {"bucket": "b", "tags": TAGS},
        [
            ({"bucket": "b", "tags": {"team": "vision"}}, "environment, cost-center"),
            # A taggable type without any tags is caught too, not only one with some.
            ({"bucket": "b"}, "team, environment, cost-center"),
        ],
    ),
    (
        "iam-no-wildcard-data-access",
        "aws:iam/rolePolicy:RolePolicy",
        iam(
            allow(["s3:GetObject", "s3:PutObject"], "arn:aws:s3:::b/*"),
            allow("ecr:GetAuthorizationToken", "*"),
            allow("cloudwatch:PutMetricData", "*"),
            {**TLS_DENY, "Action": "*"},  # a Deny may be as broad as it likes
        ),
        [
            (iam(allow("s3:*", "arn:aws:s3:::b/*")), "wildcard action s3:*"),
            (iam(allow("*", "*")), "Action '*'"),
            (iam(allow("kms:Decrypt", "*")), "kms:Decrypt on Resource '*'"),
            (iam(allow("s3:GetObject", "arn:aws:s3:::*/*")), "arn:aws:s3:::*/*"),
            (iam(allow("kms:Decrypt", "arn:aws:kms:us-east-1:1:key/*")), "key/*"),
            (iam(allow("sagemaker:Get*", "arn:aws:sagemaker:::x")), "sagemaker:Get*"),
            (iam({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}), "NotAction"),
        ],
    ),
    (
        "iam-no-wildcard-data-access",
        "aws:iam/role:Role",
        {"inlinePolicies": [{"name": "ok", **iam(allow("s3:GetObject", "arn:aws:s3:::b/*"))}]},
        [
            (
                {"inlinePolicies": [{"name": "x", **iam(allow("dynamodb:*", "*"))}]},
                "inlinePolicies[0]",
            )
        ],
    ),
    (
        "iam-no-wildcard-data-access",
        mp.IAM_ATTACHMENTS[0],
        {"role": "r", "policyArn": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy"},
        [
            (
                {"role": "r", "policyArn": "arn:aws:iam::aws:policy/AmazonS3FullAccess"},
                "AmazonS3FullAccess",
            )
        ],
    ),
    (
        "prod-endpoint-data-capture",
        mp.ENDPOINT_CONFIG,
        EPC_OK,
        [
            (without(EPC_OK, "dataCaptureConfig"), "without data capture"),
            (replace(EPC_OK, False, "dataCaptureConfig", "enableCapture"), "without data capture"),
            (replace(EPC_OK, 0, "dataCaptureConfig", "initialSamplingPercentage"), "0%"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("policy", "rtype", "good", "bad"),
    CASES,
    ids=[f"{c[0]}:{c[1].rsplit(':', 1)[-1]}" for c in CASES],
)
def test_resource_policy_passes_compliant_and_catches_violations(policy, rtype, good, bad):
    assert check(policy, rtype, good) == []
    for props, expected in bad:
        found = check(policy, rtype, props)
        assert found, f"{policy} missed a violation: {props}"
        assert any(expected in m for m in found), found


@pytest.mark.parametrize(
    ("resource", "wide"),
    [
        ("*", True),
        ("arn:aws:s3:::*", True),
        ("arn:aws:s3:::*/*", True),
        ("arn:aws:kms:us-east-1:123:key/*", True),
        ("arn:aws:sagemaker:us-east-1:123:feature-group/*", True),
        ("arn:aws:s3:::vision-dev-raw/*", False),
        ("arn:aws:sagemaker:us-east-1:123:model-package/vision-dev-m/*", False),
        ("arn:aws:sagemaker:us-east-1:123:feature-group/vision-dev-*", False),
        ("arn:aws:glue:us-east-1:123:table/db/*", False),
    ],
)
def test_which_resources_are_unscoped(resource: str, wide: bool):
    assert mp.unscoped(resource) is wide


def test_endpoint_kms_not_required_for_instance_storage_types():
    # SageMaker rejects KmsKeyId for ml.g5 (local NVMe, hardware-encrypted).
    props = replace(
        without(EPC_OK, "kmsKeyArn"), "ml.g5.xlarge", "productionVariants", 0, "instanceType"
    )
    assert check("endpoint-config-encryption", mp.ENDPOINT_CONFIG, props) == []


def test_data_capture_is_only_required_in_prod():
    dev = replace(without(EPC_OK, "dataCaptureConfig"), TAGS, "tags")
    assert check("prod-endpoint-data-capture", mp.ENDPOINT_CONFIG, dev) == []


def test_gpu_types_follow_the_policy_config():
    assert check(
        "gpu-instance-types-allowed", mp.NODE_GROUP, NG_OK, {"allowedGpuInstanceTypes": ["p5.*"]}
    )
    cpu_pool = replace(
        replace(NG_OK, ["m6i.large"], "instanceTypes"), "AL2023_x86_64_STANDARD", "amiType"
    )
    assert check("gpu-instance-types-allowed", mp.NODE_GROUP, cpu_pool) == []


def test_untaggable_types_need_no_tags():
    assert mp.is_taggable("aws:s3/bucketPolicy:BucketPolicy") is False
    assert check("required-tags", mp.BUCKET_POLICY[0], {"bucket": "b", **iam(TLS_DENY)}) == []
    assert check("required-tags", "kubernetes:core/v1:Namespace", {"metadata": {}}) == []


def _group(name: str, max_size: int, team: str = "vision", itype: str = "g5.xlarge"):
    props = replace(replace(NG_OK, max_size, "scalingConfig", "maxSize"), [itype], "instanceTypes")
    props["tags"] = {**TAGS, "team": team}
    if itype.startswith("m"):
        props["amiType"] = "AL2023_x86_64_STANDARD"
    return mp.policy_resource(mp.NODE_GROUP, props, name=name)


def test_gpu_nodes_per_team_sums_max_sizes_of_gpu_pools():
    pools = [_group("a", 10), _group("b", 6), _group("system", 50, itype="m6i.large")]
    assert check_stack("gpu-nodes-per-team", pools) == []  # 16 GPU nodes, default max 16
    found = check_stack("gpu-nodes-per-team", [*pools, _group("c", 1)])
    assert found and "17 GPU nodes" in found[0] and "maximum is 16" in found[0]
    # Per-team override, and other teams counted separately.
    assert check_stack("gpu-nodes-per-team", pools, {"maxGpuNodesPerTeam": 8}) != []
    assert check_stack("gpu-nodes-per-team", pools, {"maxGpuNodesByTeam": {"vision": 20}}) == []
    other = [_group("a", 10), _group("x", 10, team="nlp")]
    assert check_stack("gpu-nodes-per-team", other) == []


def _bucket_with(*companions: str, protect: bool = False, tags=TAGS) -> list:
    out = [
        mp.policy_resource(mp.BUCKET[0], {"bucket": "b1", "tags": tags}, name="b1", protect=protect)
    ]
    props = {
        "sse": (SSE, {"bucket": "b1", "rules": [KMS_RULE]}),
        "pab": (mp.BUCKET_PAB[0], {**PAB_OK, "bucket": "b1"}),
        "policy": (mp.BUCKET_POLICY[0], {"bucket": "b1", **iam(TLS_DENY)}),
    }
    for c in companions:
        out.append(mp.policy_resource(props[c][0], props[c][1], name=f"b1-{c}"))
    return out


def test_every_bucket_needs_its_safeguards():
    assert check_stack("s3-bucket-safeguards", _bucket_with("sse", "pab", "policy")) == []
    found = check_stack("s3-bucket-safeguards", _bucket_with("sse", "pab"))
    assert found == ["bucket b1 has no a TLS-only bucket policy"]
    assert len(check_stack("s3-bucket-safeguards", _bucket_with())) == 3


def test_prod_buckets_and_their_keys_must_be_protected():
    key = mp.policy_resource(mp.KMS_KEY, {"arn": "k", "tags": PROD_TAGS}, name="data-key")
    other_key = mp.policy_resource(mp.KMS_KEY, {"arn": "k2", "tags": PROD_TAGS}, name="eks-key")
    unprotected = [*_bucket_with("sse", tags=PROD_TAGS), key, other_key]
    found = check_stack("prod-data-protected", unprotected)
    assert sorted(found) == [
        "prod bucket b1 is not protected (protect=True)",
        "prod data key data-key is not protected (protect=True)",
    ]
    protected = [
        *_bucket_with("sse", tags=PROD_TAGS, protect=True),
        mp.policy_resource(mp.KMS_KEY, {"arn": "k", "tags": PROD_TAGS}, name="k", protect=True),
    ]
    assert check_stack("prod-data-protected", protected) == []
    assert check_stack("prod-data-protected", _bucket_with("sse")) == []  # dev: not required


# --- the real stacks -------------------------------------------------------------------------


@pytest.mark.parametrize("first_up", [False, True], ids=["steady", "first-up"])
@pytest.mark.parametrize("stack", STACKS)
def test_every_policy_passes_the_real_stack(stack: str, first_up: bool):
    """In the steady state and on a first `up` (endpoints waiting or left to deploy)."""
    results = mp.evaluate((first_up_stack if first_up else rendered)(stack).resources)
    assert set(results) == set(POLICY)
    failures = [f"{v.policy}: {v.resource}: {v.message}" for vs in results.values() for v in vs]
    assert failures == [], "\n".join(failures)


# Types each resource policy reads: the real stacks must contain them, or passing is vacuous.
APPLIES_TO = {
    "s3-encryption-kms": [SSE],
    "featurestore-encryption": [mp.FEATURE_GROUP],
    "node-volume-encryption": [mp.LAUNCH_TEMPLATE, mp.NODE_GROUP],
    "s3-public-access-blocked": [mp.BUCKET_PAB[0]],
    "s3-tls-only": [mp.BUCKET_POLICY[0]],
    "imdsv2-required": [mp.LAUNCH_TEMPLATE],
    "gpu-instance-types-allowed": [mp.NODE_GROUP],
    "iam-no-wildcard-data-access": ["aws:iam/rolePolicy:RolePolicy"],
    "endpoint-config-encryption": [mp.ENDPOINT_CONFIG],
}


@pytest.mark.parametrize("policy", sorted(APPLIES_TO))
def test_the_real_stacks_exercise_each_resource_policy(policy: str):
    types = {r.type for stack in STACKS for r in rendered(stack).resources}
    assert set(APPLIES_TO[policy]) <= types


def _mutated(stack: str, rtype: str, mutate, name: str | None = None) -> dict:
    resources = []
    done = False
    for r in rendered(stack).resources:
        if r.type == rtype and not done and name in (None, r.name):
            inputs = copy.deepcopy(r.inputs)
            mutate(inputs)
            r = dataclasses.replace(r, inputs=inputs)
            done = True
        resources.append(r)
    assert done, f"{stack} has no {rtype}"
    return mp.evaluate(resources)


MUTATIONS = [
    (
        "vision-dev",
        mp.LAUNCH_TEMPLATE,
        lambda p: p["metadataOptions"].update(httpTokens="optional"),
        "imdsv2-required",
    ),
    (
        "vision-dev",
        SSE,
        lambda p: p["rules"][0]["applyServerSideEncryptionByDefault"].update(sseAlgorithm="AES256"),
        "s3-encryption-kms",
        "datalake-raw-encryption",
    ),
    (
        "nlp-dev",
        mp.BUCKET_PAB[0],
        lambda p: p.update(blockPublicPolicy=False),
        "s3-public-access-blocked",
    ),
    (
        "nlp-dev",
        mp.NODE_GROUP,
        lambda p: p.update(instanceTypes=["p3.16xlarge"], amiType="AL2023_x86_64_NVIDIA"),
        "gpu-instance-types-allowed",
    ),
    (
        "nlp-prod",
        mp.ENDPOINT_CONFIG,
        lambda p: p.pop("dataCaptureConfig"),
        "prod-endpoint-data-capture",
    ),
    (
        "nlp-prod",
        mp.FEATURE_GROUP,
        lambda p: p["offlineStoreConfig"]["s3StorageConfig"].pop("kmsKeyId"),
        "featurestore-encryption",
    ),
    (
        "vision-prod",
        "aws:s3/bucket:Bucket",
        lambda p: p["tags"].pop("cost-center"),
        "required-tags",
    ),
]


@pytest.mark.parametrize(
    ("stack", "rtype", "mutate", "policy", "name"),
    [(*m, None)[:5] for m in MUTATIONS],
    ids=[m[3] for m in MUTATIONS],
)
def test_a_broken_resource_in_a_real_stack_is_caught(stack, rtype, mutate, policy, name):
    results = _mutated(stack, rtype, mutate, name)
    assert results[policy], f"{policy} did not catch the mutation"
    others = {name for name, found in results.items() if found} - {policy}
    assert not others, others


def test_an_unprotected_prod_bucket_in_a_real_stack_is_caught():
    resources = [
        dataclasses.replace(r, protect=False) if r.type in mp.BUCKET else r
        for r in rendered("vision-prod").resources
    ]
    found = mp.evaluate(resources)["prod-data-protected"]
    buckets = [r for r in resources if r.type in mp.BUCKET]
    assert len(found) == len(buckets) == 5 and all("bucket" in v.message for v in found)


def _sse(bucket: str, algorithm: str):
    rule = {"applyServerSideEncryptionByDefault": {"sseAlgorithm": algorithm}}
    return mp.policy_resource(SSE, {"bucket": bucket, "rules": [rule]}, name=f"{bucket}-sse")


def test_kms_on_data_buckets_and_sse_s3_on_the_access_log_bucket():
    logging = mp.policy_resource(
        mp.BUCKET_LOGGING[0], {"bucket": "data", "targetBucket": "access-logs"}, name="logging"
    )
    good = [logging, _sse("data", "aws:kms"), _sse("access-logs", "AES256")]
    assert check_stack("s3-encryption-kms", good) == []
    found = check_stack("s3-encryption-kms", [logging, _sse("data", "AES256")])
    assert found and "data buckets must use aws:kms" in found[0]
    found = check_stack("s3-encryption-kms", [logging, _sse("access-logs", "aws:kms")])
    assert found and "only into SSE-S3 (AES256)" in found[0]
    empty = mp.policy_resource(SSE, {"bucket": "data", "rules": []})
    assert "no rules" in check_stack("s3-encryption-kms", [empty])[0]


def test_sse_kms_on_the_real_access_log_bucket_is_caught():
    results = _mutated(
        "nlp-prod",
        SSE,
        lambda p: p["rules"][0]["applyServerSideEncryptionByDefault"].update(
            sseAlgorithm="aws:kms"
        ),
        "datalake-access-logs-encryption",
    )
    assert [v.resource for v in results["s3-encryption-kms"]] == ["datalake-access-logs-encryption"]


# --- the pack as the engine runs it -----------------------------------------------------------


def test_the_pack_serves_its_policies_to_the_engine():
    """Run policy/__main__.py as `pulumi preview --policy-pack` would and call it over gRPC."""
    import grpc
    from google.protobuf import empty_pb2, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

    proc = subprocess.Popen(
        [sys.executable, "__main__.py"],
        cwd=ROOT / "policy",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        port = int(proc.stdout.readline().decode().strip())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == "mlinfra"
            assert {p.name for p in info.policies} == set(POLICY)
            props = struct_pb2.Struct()
            props.update(replace(LT_OK, "optional", "metadataOptions", "httpTokens"))
            response = stub.Analyze(
                analyzer_pb2.AnalyzeRequest(
                    type=mp.LAUNCH_TEMPLATE,
                    properties=props,
                    urn="urn:pulumi:dev::mlinfra::aws:ec2/launchTemplate:LaunchTemplate::lt",
                    name="lt",
                ),
                timeout=30,
            )
            assert [d.policyName for d in response.diagnostics] == ["imdsv2-required"], [
                d.message for d in response.diagnostics
            ]
    finally:
        proc.kill()
        proc.wait(timeout=10)
