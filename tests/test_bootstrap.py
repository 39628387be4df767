"""`setup` in the account: ARNs in the region's partition, a trust policy bound to the account, the narrowest CORS."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from aws_extension.core.aws import Aws, partition_for
from aws_extension.core.bootstrap import CORS, ensure_role, role_policy, setup
from aws_extension.core.config import BUCKET_PREFIX, ROLE_NAME, Settings
from aws_extension.core.endpoints.images import ACCOUNTS
from aws_extension.local.emulator import ACCOUNT_ID
from aws_extension.core.models.browser import presign_part, start_upload


def doc(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value)


def trust_of(aws) -> dict:
    return doc(aws.client("iam").get_role(RoleName=ROLE_NAME)["Role"]["AssumeRolePolicyDocument"])


def arns(policy: dict) -> list:
    found = []
    for statement in policy["Statement"]:
        resources = statement.get("Resource", [])
        found += [r for r in ([resources] if isinstance(resources, str) else resources) if r.startswith("arn:")]
    return found


@pytest.mark.parametrize("region, partition", [
    ("us-east-1", "aws"), ("eu-west-1", "aws"), ("mx-central-1", "aws"),
    ("cn-north-1", "aws-cn"), ("cn-northwest-1", "aws-cn"),
    ("us-gov-west-1", "aws-us-gov"), ("us-gov-east-1", "aws-us-gov"),
    ("cn-someday-9", "aws-cn"), ("us-gov-someday-9", "aws-us-gov"), ("zz-unknown-1", "aws"),
])
def test_partition_follows_the_region(region, partition):
    assert partition_for(region) == partition


def test_every_supported_region_gets_arns_in_its_own_partition():
    # images.py knows prebuilt images in aws-cn and aws-us-gov regions: the role's ARNs must match them
    for region in ACCOUNTS:
        expected = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
        found = arns(role_policy("b", partition_for(region)))
        assert found and all(a.startswith(f"arn:{expected}:s3:::b") for a in found), (region, found)


@pytest.mark.parametrize("region, partition", [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")])
def test_setup_writes_the_partition_of_its_region(aws_env, monkeypatch, region, partition):
    monkeypatch.setenv("AWS_REGION", region)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    aws = Aws(Settings.resolve())
    assert aws.partition == partition
    setup(aws, create_role=True)
    written = doc(aws.client("iam").get_role_policy(
        RoleName=ROLE_NAME, PolicyName="sd-webui-sagemaker-endpoint")["PolicyDocument"])
    assert sorted(arns(written)) == [f"arn:{partition}:s3:::{aws.bucket}", f"arn:{partition}:s3:::{aws.bucket}/*"]
    assert "arn:aws:" not in json.dumps(written)
    # the same principal in every partition
    assert trust_of(aws)["Statement"][0]["Principal"]["Service"] == "sagemaker.amazonaws.com"


def test_trust_policy_is_bound_to_the_account(aws_env):
    aws = Aws(Settings.resolve())
    setup(aws, create_role=True)
    [statement] = trust_of(aws)["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT_ID}}
    assert aws.account_id == ACCOUNT_ID  # the condition holds the account STS names, not a constant


def test_rerunning_setup_fixes_the_trust_of_a_role_made_before(aws_env):
    aws = Aws(Settings.resolve())
    iam = aws.client("iam")
    old = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    arn = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(old))["Role"]["Arn"]
    updates = []
    iam.meta.events.register("before-call.iam.UpdateAssumeRolePolicy", lambda **kw: updates.append(1))

    assert ensure_role(aws) == (arn, False)
    assert trust_of(aws)["Statement"][0]["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT_ID}}
    assert len(updates) == 1
    # once right, a further run leaves it alone
    assert ensure_role(aws) == (arn, False)
    assert len(updates) == 1


def test_cors_allows_only_what_the_uploader_sends(aws_env):
    aws = Aws(Settings.resolve())
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=aws.bucket)
    # a bucket set up by an older version allowed far more: re-running setup narrows it
    s3.put_bucket_cors(Bucket=aws.bucket, CORSConfiguration={"CORSRules": [{
        "AllowedMethods": ["GET", "PUT", "POST", "HEAD"], "AllowedOrigins": ["*"], "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag", "x-amz-checksum-crc32"]}]})
    setup(aws)
    [rule] = s3.get_bucket_cors(Bucket=aws.bucket)["CORSRules"]
    assert rule["AllowedMethods"] == ["PUT"]
    assert rule["AllowedHeaders"] == ["x-amz-checksum-crc32"]
    assert rule["ExposeHeaders"] == ["ETag"]  # the uploader reads the ETag of each part, nothing else
    assert rule == CORS["CORSRules"][0]
    # what the server hands the browser for a part fits inside the rule
    up = start_upload(aws, "LoRA", "style.safetensors", 10)
    signed = presign_part(aws, up.key, up.upload_id, 1, "AAAAAA==")
    assert signed["method"] in rule["AllowedMethods"]
    allowed = {h.lower() for h in rule["AllowedHeaders"]}
    assert {h.lower() for h in signed["headers"]} <= allowed


# -- docs/iam-policy.json holds what the user's own credentials need, no more, no less --------------------
ROOT = Path(__file__).resolve().parent.parent
SERVICES = ["s3", "sagemaker", "sagemaker-runtime", "application-autoscaling", "cloudwatch", "iam", "sts"]
# serve/ runs inside the endpoint under the execution role (role_policy), local/ is the emulator
NOT_USER_CODE = {"serve", "local"}
NOT_AWS = {"search"}  # re.Pattern.search, not sagemaker:Search
# IAM's names where they are not the API's (S3), and the transfer helpers of boto3
S3_ACTIONS = {
    "HeadBucket": ["s3:ListBucket"], "ListObjectsV2": ["s3:ListBucket"],
    "ListMultipartUploads": ["s3:ListBucketMultipartUploads"], "ListParts": ["s3:ListMultipartUploadParts"],
    "HeadObject": ["s3:GetObject"], "DeleteObjects": ["s3:DeleteObject"],
    "CreateMultipartUpload": ["s3:PutObject"], "UploadPart": ["s3:PutObject"], "CompleteMultipartUpload": ["s3:PutObject"],
    "PutBucketCors": ["s3:PutBucketCORS"], "PutBucketLifecycleConfiguration": ["s3:PutLifecycleConfiguration"],
    "PutPublicAccessBlock": ["s3:PutBucketPublicAccessBlock"],
}
HELPERS = {"upload_file": ["s3:PutObject", "s3:AbortMultipartUpload"]}
# What AWS checks besides the call itself: tags on create, passing the role, what Application Auto Scaling
# does with the caller's permissions (SageMaker's "Auto scaling prerequisites" page).
IMPLIED = {
    "sagemaker:CreateModel": ["sagemaker:AddTags", "iam:PassRole"],
    "sagemaker:CreateEndpointConfig": ["sagemaker:AddTags"],
    "sagemaker:CreateEndpoint": ["sagemaker:AddTags"],
    "iam:CreateRole": ["iam:TagRole"],
    "cloudwatch:PutMetricAlarm": ["cloudwatch:TagResource"],
    "application-autoscaling:RegisterScalableTarget": [
        "sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
        "sagemaker:UpdateEndpointWeightsAndCapacities", "iam:CreateServiceLinkedRole"],
    "application-autoscaling:PutScalingPolicy": ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms"],
    "application-autoscaling:DeleteScalingPolicy": ["cloudwatch:DeleteAlarms", "cloudwatch:DescribeAlarms"],
}


def operations() -> dict:
    """python method name -> [(service, API operation)] for the services the tool uses."""
    session = botocore.session.get_session()
    found: dict = {}
    for service in SERVICES:
        for op in session.get_service_model(service).operation_names:
            found.setdefault(xform_name(op), []).append((service, op))
    return found


def calls_in_code() -> dict:
    """Every name in aws_extension/ that is a boto3 operation, called or passed along, -> where."""
    ops, found = operations(), {}
    for path in sorted((ROOT / "aws_extension").rglob("*.py")):
        if NOT_USER_CODE & set(path.relative_to(ROOT / "aws_extension").parts[:-1]):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.attr] if isinstance(node, ast.Attribute) else []
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                    and node.func.attr in ("get_paginator", "get_waiter", "generate_presigned_url")
                    and isinstance(node.args[0], ast.Constant)):
                names.append(node.args[0].value)
            for name in names:
                if (name in ops or name in HELPERS) and name not in NOT_AWS:
                    found.setdefault(name, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def actions_for(name: str, ops: dict) -> list:
    if name in HELPERS:
        return HELPERS[name]
    [(service, op)] = ops[name]  # a name two of our services share would need a decision here
    if service == "s3":
        return S3_ACTIONS.get(op, [f"s3:{op}"])
    return [f"{'sagemaker' if service == 'sagemaker-runtime' else service}:{op}"]


def test_iam_policy_lists_exactly_what_the_code_calls():
    ops, calls = operations(), calls_in_code()
    assert len(calls) > 30 and "invoke_endpoint_async" in calls and "register_scalable_target" in calls
    needed = {}
    for name, where in calls.items():
        for action in actions_for(name, ops):
            needed.setdefault(action, where)
            for extra in IMPLIED.get(action, []):
                needed.setdefault(extra, f"{where} (implied by {action})")
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    listed = set()
    for statement in policy["Statement"]:
        listed |= {statement["Action"]} if isinstance(statement["Action"], str) else set(statement["Action"])
    missing = {a: w for a, w in needed.items() if a not in listed}
    assert not missing, f"docs/iam-policy.json lacks what the code calls: {missing}"
    assert not listed - set(needed), f"docs/iam-policy.json grants what no code calls: {listed - set(needed)}"
    assert {"iam:PassRole", "iam:CreateServiceLinkedRole", "cloudwatch:PutMetricAlarm",
            "sagemaker:InvokeEndpointAsync", "iam:UpdateAssumeRolePolicy"} <= listed


def test_iam_policy_names_our_bucket_and_role():
    text = (ROOT / "docs" / "iam-policy.json").read_text()
    assert f"arn:aws:s3:::{BUCKET_PREFIX}-*" in text and f"role/{ROLE_NAME}\"" in text
