"""`setup`: everything the tool needs in the account, created if missing, safe to run again."""

from __future__ import annotations

import json
import urllib.parse
from typing import Optional

from .aws import Aws, error_code, translate
from .compat import BaseModel
from .config import ROLE_NAME
from .models.browser import CHECKSUM_HEADER

LIFECYCLE_RULE = "sd-webui-sagemaker-abort-incomplete-uploads"
INFERENCE_RULE = "sd-webui-sagemaker-inference-expiry"

# The browser (javascript/sagemaker_uploader.js) only PUTs parts to presigned URLs, with the signed CRC32 header,
# and reads each part's ETag; starting, listing and completing go through the WebUI server. Nothing more is allowed.
# Any origin: the presigned URL is the authorization, and the WebUI's own address is not known here.
CORS = {
    "CORSRules": [{
        "AllowedMethods": ["PUT"],
        "AllowedOrigins": ["*"],
        "AllowedHeaders": [CHECKSUM_HEADER],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3600,
    }]
}


class SetupResult(BaseModel):
    bucket: str
    region: str
    bucket_created: bool
    role_arn: Optional[str] = None
    role_created: bool = False


def setup(aws: Aws, create_role: bool = False) -> SetupResult:
    s3 = aws.client("s3")
    bucket = aws.bucket
    created = False
    with translate(f"creating bucket {bucket}"):
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            args = {"Bucket": bucket}
            if aws.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
                args["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
            s3.create_bucket(**args)
            created = True
    with translate(f"configuring bucket {bucket}"):
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
        })
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
            "ID": LIFECYCLE_RULE, "Status": "Enabled", "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }, {  # generation requests and answers a client stopped waiting for (it deletes the rest itself)
            "ID": INFERENCE_RULE, "Status": "Enabled", "Filter": {"Prefix": "inference/"},
            "Expiration": {"Days": 2},
        }]})
    result = SetupResult(bucket=bucket, region=aws.region, bucket_created=created)
    if create_role:
        result.role_arn, result.role_created = ensure_role(aws)
    return result


# SageMaker's principal is sagemaker.amazonaws.com in every partition, aws-cn and aws-us-gov included
# (AWS's China documentation writes it so); only the ARNs change.
SERVICE_PRINCIPAL = "sagemaker.amazonaws.com"


def role_policy(bucket: str, partition: str = "aws") -> dict:
    """What an endpoint needs: its bucket, pulling its image, writing logs and metrics."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:AbortMultipartUpload"],
         "Resource": [f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/*"]},
        {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage",
                                       "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                       "logs:DescribeLogStreams", "cloudwatch:PutMetricData"],
         "Resource": "*"},
    ]}


def trust_policy(account_id: str) -> dict:
    """SageMaker may assume the role only on behalf of this account (AWS's confused-deputy protection)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": SERVICE_PRINCIPAL}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}}]}


def ensure_role(aws: Aws) -> tuple:
    iam = aws.client("iam")
    trust = trust_policy(aws.account_id)
    with translate(f"creating the SageMaker execution role {ROLE_NAME}"):
        try:
            role = iam.get_role(RoleName=ROLE_NAME)["Role"]
            arn, created = role["Arn"], False
        except Exception as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            arn = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust),
                                  Description="Lets SageMaker endpoints of sd-webui-sagemaker read models from S3",
                                  Tags=[{"Key": "sd-webui-sagemaker:managed", "Value": "true"}])["Role"]["Arn"]
            created = True
        if not created and _document(role.get("AssumeRolePolicyDocument")) != trust:
            # A role made by an older setup trusts SageMaker for any account: re-running setup fixes it.
            iam.update_assume_role_policy(RoleName=ROLE_NAME, PolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="sd-webui-sagemaker-endpoint",
                            PolicyDocument=json.dumps(role_policy(aws.bucket, aws.partition)))
    return arn, created


def _document(doc) -> dict:
    """IAM's policy document as a dict (boto3 decodes it; some emulators hand back the JSON text)."""
    if isinstance(doc, str):
        try:
            return json.loads(urllib.parse.unquote(doc))
        except ValueError:
            return {}
    return doc or {}


def find_role(aws: Aws) -> Optional[str]:
    """The execution role `setup --create-role` made, if it exists."""
    try:
        return aws.client("iam").get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    except Exception:
        return None
