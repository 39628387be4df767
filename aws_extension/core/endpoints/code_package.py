"""The inference server as a SageMaker model code package, for AWS's prebuilt PyTorch inference image.

model.tar.gz holds code/inference.py (aws_extension/serve/toolkit_entry.py), code/aws_extension/ (this package's
source), code/wheels/ (every wheel the server needs beside the image's torch, exactly those of
server-wheels.lock.json) and code/requirements.txt, which installs them with no index: the toolkit runs it at
every container start, and a scale-out at night must not depend on PyPI. The tar is deterministic (sorted entries,
fixed times and owners); its key, s3://<bucket>/code/sd-webui-sagemaker-<16 hex>.tar.gz, is the sha256 of the tar
without the wheels, which the requirements' hashes already fix. So a deploy first asks S3 for that key and only
fetches wheels and uploads (~120 MB, multipart) when this version of the server is not there yet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from boto3.s3.transfer import TransferConfig

from ..aws import Aws, is_not_found, translate
from . import wheels

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the aws_extension folder
ENTRY = PACKAGE_ROOT / "serve" / "toolkit_entry.py"
KEY_PREFIX = "code/sd-webui-sagemaker-"
DATA_SUFFIXES = {".py", ".json", ".txt"}  # source and the small data files the server reads
MTIME = 1577836800  # 2020-01-01: every entry gets this time
UPLOAD = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=8)

# The server's dependencies besides torch; container/requirements.txt and pyproject's `serve` extra list the same
# (a test keeps them equal), and container/lock.py resolves them into the wheels the package ships.
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


def source_files(locked: Optional[List[wheels.Wheel]] = None) -> List[Tuple[str, bytes]]:
    """(name in the tar, content) of everything but the wheels, sorted by name."""
    requirements = wheels.requirements_text(wheels.locked() if locked is None else locked)
    files = [("code/inference.py", ENTRY.read_bytes()), ("code/requirements.txt", requirements.encode())]
    for path in PACKAGE_ROOT.rglob("*"):
        relative = path.relative_to(PACKAGE_ROOT.parent)
        if (path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in relative.parts
                and not any(part.startswith(".") for part in relative.parts)):
            files.append(("code/" + relative.as_posix(), path.read_bytes()))
    return sorted(files)


def _entry(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def package_key(files: List[Tuple[str, bytes]]) -> str:
    """The S3 key: the sha256 of the source tar (independent of the zlib version and of the wheel files' paths)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files:
            tar.addfile(_entry(name, len(content)), io.BytesIO(content))
    return f"{KEY_PREFIX}{hashlib.sha256(raw.getvalue()).hexdigest()[:16]}.tar.gz"


def build(target, files: List[Tuple[str, bytes]], wheel_paths: List[Path]) -> None:
    """Write the .tar.gz to the binary file object `target`: the source files, then code/wheels/*."""
    entries = [(name, content, None) for name, content in files]
    entries += [(f"code/{wheels.FOLDER}/{path.name}", None, path) for path in wheel_paths]
    # wheels are zip files already: the fastest gzip level costs nothing in size
    with gzip.GzipFile(filename="", mode="wb", fileobj=target, compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, path in sorted(entries, key=lambda e: e[0]):
            if path is None:
                tar.addfile(_entry(name, len(content)), io.BytesIO(content))
            else:
                with open(path, "rb") as f:
                    tar.addfile(_entry(name, path.stat().st_size), f)


def ensure_uploaded(aws: Aws, report: Optional[Callable[[str], None]] = None) -> str:
    """The package's S3 URI in the bucket; built and uploaded only if that version is not there yet."""
    say = report or log.info
    locked = wheels.locked()
    files = source_files(locked)
    key = package_key(files)
    s3 = aws.client("s3")
    bucket = aws.bucket
    uri = f"s3://{bucket}/{key}"
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return uri
    except Exception as exc:
        if not is_not_found(exc):
            with translate(f"checking the server's code package {uri}"):
                raise
    say(f"Preparing the server's code package for this version ({len(locked)} wheels, fetched once per machine).")
    paths = wheels.fetch(locked)
    with tempfile.TemporaryDirectory(prefix="sd-code-package-") as tmp:
        archive = os.path.join(tmp, "model.tar.gz")
        with open(archive, "wb") as f:
            build(f, files, paths)
        size = os.path.getsize(archive)
        say(f"Uploading the server's code package to {uri} ({size / 1e6:.0f} MB).")
        with translate(f"uploading the server's code package to {uri}"):
            s3.upload_file(archive, bucket, key, ExtraArgs={"ContentType": "application/gzip"}, Config=UPLOAD)
    log.info("Uploaded the server's code package %s (%d bytes).", uri, size)
    return uri
