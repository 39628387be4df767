"""What a deploy tells SageMaker about the host and the server: the GPU AMI our own image needs, the environment the
server reads (endpoint type, instance type, checkpoint to preload), and that the emulator's servers get it too."""

from __future__ import annotations

import sys

import botocore.session
import pytest

from inventory import NOTHING, cloud_inventory
from aws_extension.core import endpoints
from aws_extension.core.endpoints import EndpointSpec
from aws_extension.core.errors import NotFound
from aws_extension.core.models.lookup import resolve_models

# the package re-exports the function `deploy`, which hides the module of that name
deploy_module = sys.modules["aws_extension.core.endpoints.deploy"]
OWN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd:1"


def variant_of(aws, name: str) -> dict:
    return aws.client("sagemaker").describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]


def environment_of(aws, name: str) -> dict:
    return aws.client("sagemaker").describe_model(ModelName=name)["PrimaryContainer"]["Environment"]


@pytest.fixture
def sent_configs(aws) -> list:
    """The ProductionVariants of every CreateEndpointConfig request, as botocore sends them to AWS."""
    sent: list = []
    aws.client("sagemaker").meta.events.register(
        "before-parameter-build.sagemaker.CreateEndpointConfig",
        lambda params, **kw: sent.append(params["ProductionVariants"][0]))
    return sent


def test_the_ami_is_one_botocore_knows():
    allowed = botocore.session.get_session().get_service_model("sagemaker").shape_for(
        "ProductionVariantInferenceAmiVersion").enum
    assert deploy_module.INFERENCE_AMI_VERSION in allowed, allowed


@pytest.mark.parametrize("instance_type", ["ml.g5.2xlarge", "ml.g4dn.xlarge", "ml.g6e.xlarge", "ml.p3.2xlarge",
                                           "ml.p4d.24xlarge", "ml.p5.48xlarge"])
def test_our_image_on_a_gpu_gets_a_cuda_12_driver(aws, sent_configs, instance_type):
    endpoints.deploy(aws, EndpointSpec(name="gpu", instance_type=instance_type, image_uri=OWN_IMAGE), background=False)
    [variant] = sent_configs
    assert variant["InferenceAmiVersion"] == deploy_module.INFERENCE_AMI_VERSION == "al2-ami-sagemaker-inference-gpu-3-1"
    assert variant_of(aws, "gpu")["InferenceAmiVersion"] == deploy_module.INFERENCE_AMI_VERSION  # as the emulator keeps it


@pytest.mark.parametrize("instance_type", ["ml.m5.xlarge", "ml.c5.2xlarge", "ml.inf2.xlarge"])
def test_no_ami_on_cpu_or_neuron_types(aws, sent_configs, instance_type):
    endpoints.deploy(aws, EndpointSpec(name="cpu", instance_type=instance_type, image_uri=OWN_IMAGE), background=False)
    assert "InferenceAmiVersion" not in sent_configs[0]
    assert "InferenceAmiVersion" not in variant_of(aws, "cpu")


def test_no_ami_for_the_prebuilt_image(aws, sent_configs, monkeypatch):
    monkeypatch.setattr(aws.settings, "image_uri", None)  # AWS's image: it carries CUDA compat libraries
    endpoints.deploy(aws, EndpointSpec(name="prebuilt"), background=False)
    assert "InferenceAmiVersion" not in sent_configs[0]
    assert "763104351884.dkr.ecr" in aws.client("sagemaker").describe_model(ModelName="prebuilt")["PrimaryContainer"]["Image"]


def put_checkpoint(aws, name: str) -> None:
    from aws_extension.core.models.catalog import ModelRecord, write_record

    key = f"models/Stable-diffusion/{name}"
    aws.client("s3").put_object(Bucket=aws.bucket, Key=key, Body=b"x" * 10)
    write_record(aws, ModelRecord(type="Stable-diffusion", name=name, key=key, size=10, sha256="6ce0161689" + "a" * 54))


@pytest.mark.parametrize("prebuilt", [False, True])
def test_the_server_learns_its_host_and_the_checkpoint_to_preload(aws, monkeypatch, prebuilt):
    if prebuilt:
        monkeypatch.setattr(aws.settings, "image_uri", None)
    put_checkpoint(aws, "sd15.safetensors")
    endpoints.deploy(aws, EndpointSpec(name="pre", endpoint_type="real-time", instance_type="ml.g5.xlarge",
                                       preload_checkpoint="sd15"), background=False)
    env = environment_of(aws, "pre")
    # the same s3:// URI a request names as its models.checkpoint
    assert env["SD_SAGEMAKER_PRELOAD_CHECKPOINT"] == resolve_models(aws, "sd15", None, ["x"])["checkpoint"] == \
        f"s3://{aws.bucket}/models/Stable-diffusion/sd15.safetensors"
    assert (env["SD_SAGEMAKER_ENDPOINT_TYPE"], env["SD_SAGEMAKER_INSTANCE_TYPE"]) == ("real-time", "ml.g5.xlarge")
    assert ("SAGEMAKER_PROGRAM" in env) is prebuilt

    endpoints.deploy(aws, EndpointSpec(name="by-hash", preload_checkpoint="6ce0161689"), background=False)
    assert environment_of(aws, "by-hash")["SD_SAGEMAKER_PRELOAD_CHECKPOINT"] == env["SD_SAGEMAKER_PRELOAD_CHECKPOINT"]


def test_a_missing_checkpoint_to_preload_is_refused_before_anything_is_created(aws):
    put_checkpoint(aws, "sd15.safetensors")
    with pytest.raises(NotFound, match="No SD Checkpoint 'nope'.*sd15.safetensors"):
        endpoints.deploy(aws, EndpointSpec(name="pre", preload_checkpoint="nope"), background=False)
    assert cloud_inventory(lambda service: aws.client(service)) == NOTHING


def test_the_emulator_starts_its_server_with_the_models_environment(aws, tmp_path, monkeypatch):
    """`local` and `ui --local` run each endpoint's server with the environment its model names, as SageMaker does."""
    from moto.sagemaker.models import sagemaker_backends

    from aws_extension.local import runtime as runtime_module
    from aws_extension.local.emulator import ACCOUNT_ID, REGION

    put_checkpoint(aws, "sd15.safetensors")
    endpoints.deploy(aws, EndpointSpec(name="local-pre", preload_checkpoint="sd15.safetensors"), background=False)
    runtime = runtime_module.Runtime(tmp_path, {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    launched = []
    monkeypatch.setattr(runtime, "_launch", lambda served, env: launched.append(env))
    runtime.start_endpoint(sagemaker_backends[ACCOUNT_ID][REGION], "local-pre")
    [env] = launched
    assert env["SD_SAGEMAKER_PRELOAD_CHECKPOINT"] == f"s3://{aws.bucket}/models/Stable-diffusion/sd15.safetensors"
    assert env["SD_SAGEMAKER_ENDPOINT_TYPE"] == "async"
    # a local endpoint runs on this machine's CPU, whatever type it names: no GPU check for its ml.g5.2xlarge
    assert "SD_SAGEMAKER_INSTANCE_TYPE" not in env
    runtime.stop_all()
