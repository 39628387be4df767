"""Settings, resolved once with one precedence: CLI flag > environment > WebUI settings > default."""

from __future__ import annotations

import os
from typing import Mapping, Optional

from .compat import BaseModel, Field

# Environment variables for our own settings (region and profile use the standard AWS ones).
ENV = {
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "profile": ("AWS_PROFILE",),
    "bucket": ("SD_SAGEMAKER_BUCKET",),
    "role_arn": ("SD_SAGEMAKER_ROLE_ARN",),
    "image_uri": ("SD_SAGEMAKER_IMAGE_URI",),
}

BUCKET_PREFIX = "sd-webui-sagemaker"
ROLE_NAME = "sd-webui-sagemaker-execution"
TAG_PREFIX = "sd-webui-sagemaker"


class Settings(BaseModel):
    region: Optional[str] = None
    profile: Optional[str] = None
    bucket: Optional[str] = None
    role_arn: Optional[str] = None
    image_uri: Optional[str] = None
    # Folders a typed path may reach; empty means unrestricted (a CLI user owns the shell anyway).
    allowed_roots: list = Field(default_factory=list)
    allow_private_urls: bool = False
    # Parallel part transfers per upload.
    concurrency: int = 8
    # Attempts per AWS request (botocore's standard retry mode: throttling, 5xx, dropped connections).
    max_attempts: int = 5

    @classmethod
    def resolve(
        cls,
        flags: Optional[Mapping[str, object]] = None,
        webui: Optional[Mapping[str, object]] = None,
        environ: Optional[Mapping[str, str]] = None,
        **extra,
    ) -> "Settings":
        """Each field from the first source that sets it (empty strings count as unset)."""
        flags = flags or {}
        webui = webui or {}
        environ = os.environ if environ is None else environ
        values: dict = {}
        for field, names in ENV.items():
            from_env = next((environ[n] for n in names if environ.get(n)), None)
            for candidate in (flags.get(field), from_env, webui.get(field)):
                if candidate not in (None, ""):
                    values[field] = str(candidate).strip()
                    break
        values.update({k: v for k, v in extra.items() if v is not None})
        return cls(**values)


def default_bucket(account_id: str, region: str) -> str:
    return f"{BUCKET_PREFIX}-{account_id}-{region}"
