"""The inference server as a SageMaker model code package, for AWS's prebuilt PyTorch inference image.

model.tar.gz holds code/inference.py (aws_extension/serve/toolkit_entry.py), code/requirements.txt (which the
toolkit pip-installs when the container starts) and code/aws_extension/ (this package's source). The tar is
deterministic: sorted entries, fixed times and owners, so the same source gives the same bytes and the same key,
s3://<bucket>/code/sd-webui-sagemaker-<sha256 of the tar, 16 hex>.tar.gz, uploaded only when it is not there yet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
from pathlib import Path
from typing import List, NamedTuple, Tuple

from ..aws import Aws, is_not_found, translate
from . import images

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the aws_extension folder
ENTRY = PACKAGE_ROOT / "serve" / "toolkit_entry.py"
KEY_PREFIX = "code/sd-webui-sagemaker-"
DATA_SUFFIXES = {".py", ".json", ".txt"}  # source and any small data files the server reads
MTIME = 1577836800  # 2020-01-01: every entry gets this time

# The server's dependencies besides torch; container/requirements.txt lists the same (a test keeps them equal).
SERVER_REQUIREMENTS = (
    "diffusers==0.42.1",
    "transformers==5.24.0",
    "peft==0.21.2",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "torchsde==0.2.6",  # diffusers' DPMSolverSDEScheduler (the WebUI's "DPM++ SDE")
    "huggingface-hub==2.4.0",  # fast-moving dependencies of the pins above, fixed for repeatable installs
    "tokenizers==0.23.3",
    "boto3>=1.36",
    "pydantic>=1.10,<3",
    "pillow>=10",
    "numpy>=1.26",
)
# Only its CLIP BPE vocabulary is used. Its dependencies (ftfy, regex, tqdm, torch, torchvision) are harmless in the
# prebuilt image, which has torch and torchvision already; the image built from container/ installs it --no-deps.
CLIP = "clip-anytorch==2.6.0"


def requirements_text() -> str:
    """code/requirements.txt: the image's torch pinned first, so that pip fails loudly rather than replace it."""
    lines = [
        "# Installed by the SageMaker inference toolkit when the container starts (sd-webui-sagemaker).",
        f"# torch stays the image's own {images.TORCH_VERSION} (a CUDA build); this line only keeps pip from replacing it.",
        f"torch=={images.TORCH_VERSION}",
        *SERVER_REQUIREMENTS,
        CLIP,
    ]
    return "\n".join(lines) + "\n"


def package_files() -> List[Tuple[str, bytes]]:
    """(name in the tar, content), sorted by name."""
    files = [("code/inference.py", ENTRY.read_bytes()), ("code/requirements.txt", requirements_text().encode())]
    for path in PACKAGE_ROOT.rglob("*"):
        relative = path.relative_to(PACKAGE_ROOT.parent)
        if (path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in relative.parts
                and not any(part.startswith(".") for part in relative.parts)):
            files.append(("code/" + relative.as_posix(), path.read_bytes()))
    return sorted(files)


class CodePackage(NamedTuple):
    data: bytes  # the .tar.gz
    key: str  # its S3 key, from the sha256 of the uncompressed tar (independent of the zlib version)


def build() -> CodePackage:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in package_files():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    raw = tar_bytes.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return CodePackage(packed.getvalue(), f"{KEY_PREFIX}{hashlib.sha256(raw).hexdigest()[:16]}.tar.gz")


def ensure_uploaded(aws: Aws) -> str:
    """The package's S3 URI in the bucket, uploading it only if that key is not there yet."""
    package = build()
    s3 = aws.client("s3")
    bucket = aws.bucket
    try:
        s3.head_object(Bucket=bucket, Key=package.key)
        return f"s3://{bucket}/{package.key}"
    except Exception as exc:
        if not is_not_found(exc):
            with translate(f"checking the server's code package s3://{bucket}/{package.key}"):
                raise
    with translate(f"uploading the server's code package to s3://{bucket}/{package.key}"):
        s3.put_object(Bucket=bucket, Key=package.key, Body=package.data, ContentType="application/gzip")
    log.info("Uploaded the server's code package s3://%s/%s (%d bytes).", bucket, package.key, len(package.data))
    return f"s3://{bucket}/{package.key}"
