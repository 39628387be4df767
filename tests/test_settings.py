"""Settings precedence (flag > environment > WebUI setting > default) and `setup`."""

from __future__ import annotations

import json

from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.core.models.types import model_type


def test_precedence_flag_over_env_over_webui():
    env = {"AWS_REGION": "eu-west-1", "SD_SAGEMAKER_BUCKET": "env-bucket"}
    webui = {"region": "ap-northeast-1", "bucket": "webui-bucket", "role_arn": "arn:webui", "image_uri": ""}
    s = Settings.resolve({"region": "us-west-2", "bucket": None}, webui, env)
    assert (s.region, s.bucket, s.role_arn, s.image_uri) == ("us-west-2", "env-bucket", "arn:webui", None)
    s = Settings.resolve({}, webui, {})
    assert (s.region, s.bucket) == ("ap-northeast-1", "webui-bucket")
    assert Settings.resolve({}, {}, {"AWS_DEFAULT_REGION": "eu-north-1"}).region == "eu-north-1"


def test_model_types_accept_ids_folders_and_labels():
    assert model_type("LoRA").prefix == "models/Lora/"
    assert model_type("Stable-diffusion").id == model_type("checkpoint").id == "checkpoint"
    assert model_type("Textual Inversion").prefix == "models/embeddings/"
    assert model_type("hypernetworks").prefix == "models/hypernetworks/"


def test_setup_is_idempotent_and_prepares_browser_uploads(aws_env):
    aws = Aws(Settings.resolve())
    first = setup(aws, create_role=True)
    again = setup(aws, create_role=True)
    assert first.bucket_created and not again.bucket_created
    assert first.role_created and not again.role_created and first.role_arn == again.role_arn
    s3 = aws.client("s3")
    [rule] = s3.get_bucket_cors(Bucket=aws.bucket)["CORSRules"]
    assert "PUT" in rule["AllowedMethods"] and "ETag" in rule["ExposeHeaders"]
    lifecycle, inference = s3.get_bucket_lifecycle_configuration(Bucket=aws.bucket)["Rules"]
    assert lifecycle["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    assert inference["Filter"]["Prefix"] == "inference/" and inference["Expiration"]["Days"] == 2
    trust = aws.client("iam").get_role(RoleName="sd-webui-sagemaker-execution")["Role"]["AssumeRolePolicyDocument"]
    trust = trust if isinstance(trust, dict) else json.loads(trust)
    assert trust["Statement"][0]["Principal"]["Service"] == "sagemaker.amazonaws.com"
