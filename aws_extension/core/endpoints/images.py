"""AWS's own prebuilt PyTorch inference image (a Deep Learning Container), used when no image URI is set.

The container runs SageMaker's PyTorch inference toolkit (TorchServe); our server reaches it as the model's
code package (see code_package.py). The tag is the newest pytorch-inference GPU release for SageMaker listed in
aws/deep-learning-containers (docs/src/data/pytorch-inference/2.6-gpu-sagemaker.yml): PyTorch 2.6.0, CUDA 12.4,
Python 3.12, Ubuntu 22.04. Later PyTorch DLCs (2.11+) are training-only. Its torch is the lowest that
transformers 5.x accepts (2.6), its Python is one diffusers 0.42 accepts (3.11+), and CUDA 12.4 runs the A10G
(ml.g5) and L4 (ml.g6) GPUs.
"""

from __future__ import annotations

from ..errors import ConfigError

REPOSITORY = "pytorch-inference"
TAG = "2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker"
TORCH_VERSION = TAG.split("-")[0]  # what the image has installed; pip must keep it

# The registry account of the image per region (the SageMaker Python SDK's table for pytorch-inference 2.6.0,
# and aws/deep-learning-containers' docs/reference/region_availability.md).
_MAIN = "763104351884"
ACCOUNTS = {
    **{region: _MAIN for region in (
        "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1",
        "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2", "eu-west-3",
        "ap-northeast-1", "ap-northeast-2", "ap-south-1", "ap-southeast-1", "ap-southeast-2")},
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-6": "633930458069",
    "ap-southeast-7": "590183813437",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
}


def prebuilt_image_uri(region: str) -> str:
    """The ECR URI of the prebuilt PyTorch inference image in this region (ConfigError where AWS has none)."""
    account = ACCOUNTS.get(region)
    if not account:
        raise ConfigError(
            f"AWS publishes no prebuilt PyTorch inference image for the region '{region}' that this tool knows: "
            f"build the image in container/ (see container/README.md) and pass --image-uri or set "
            f"SD_SAGEMAKER_IMAGE_URI.")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{REPOSITORY}:{TAG}"
