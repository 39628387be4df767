"""`setup`: everything the tool needs in the account, created if missing, safe to run again."""

from __future__ import annotations

import json
from typing import Optional

from .aws import Aws, error_code, translate
from .compat import BaseModel
from .config import ROLE_NAME

LIFECYCLE_RULE = "sd-webui-sagemaker-abort-incomplete-uploads"
INFERENCE_RULE = "sd-webui-sagemaker-inference-expiry"

# The browser uploads parts straight to S3: it must PUT and read each part's ETag.
CORS = {
    "CORSRules": [{
        "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
        "AllowedOrigins": ["*"],
        "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag", "x-amz-checksum-crc32"],
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


def role_policy(bucket: str) -> dict:
    """What an endpoint needs: its bucket, pulling its image, writing logs and metrics."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:AbortMultipartUpload"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
        {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage",
                                       "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                       "logs:DescribeLogStreams", "cloudwatch:PutMetricData"],
         "Resource": "*"},
    ]}


def ensure_role(aws: Aws) -> tuple:
    iam = aws.client("iam")
    with translate(f"creating the SageMaker execution role {ROLE_NAME}"):
        try:
            arn = iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
            created = False
        except Exception as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            trust = {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
            arn = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust),
                                  Description="Lets SageMaker endpoints of sd-webui-sagemaker read models from S3",
                                  Tags=[{"Key": "sd-webui-sagemaker:managed", "Value": "true"}])["Role"]["Arn"]
            created = True
        iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="sd-webui-sagemaker-endpoint",
                            PolicyDocument=json.dumps(role_policy(aws.bucket)))
    return arn, created


def find_role(aws: Aws) -> Optional[str]:
    """The execution role `setup --create-role` made, if it exists."""
    try:
        return aws.client("iam").get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    except Exception:
        return None
