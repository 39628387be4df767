"""The boto3 session, its clients, and translation of AWS failures into one clear sentence."""

from __future__ import annotations

import contextlib
import re
import threading
from datetime import datetime, timezone
from typing import Iterator, List, Optional, Tuple

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from .config import Settings, default_bucket
from .errors import ConfigError, NotFound, TransferError, UserError

NO_CREDENTIALS = (
    "No AWS credentials found: run `aws configure`, set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or run on an instance with a role."
)
NO_REGION = "No AWS region set: choose one in the settings, pass --region, or set AWS_REGION."


class Aws:
    """One user's AWS view: a session, cached clients, the account and the bucket."""

    def __init__(self, settings: Optional[Settings] = None):
        self.settings = settings or Settings.resolve()
        try:
            self.session = boto3.Session(profile_name=self.settings.profile, region_name=self.settings.region)
        except bex.ProfileNotFound:
            raise ConfigError(
                f"AWS profile '{self.settings.profile}' not found in ~/.aws/config or ~/.aws/credentials.") from None
        self._clients: dict = {}
        self._lock = threading.Lock()
        self._account: Optional[str] = None

    @property
    def region(self) -> str:
        region = self.session.region_name
        if not region:
            raise ConfigError(NO_REGION)
        return region

    def client(self, service: str):
        with self._lock:
            if service not in self._clients:
                config = Config(
                    retries={"mode": "standard", "max_attempts": self.settings.max_attempts},
                    # one connection per part in flight, plus a few for listings
                    max_pool_connections=self.settings.concurrency + 4,
                    connect_timeout=10,
                    read_timeout=120,
                    # S3 rejects checksum trailers from some S3-compatible servers; we send our own checksums.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                with translate():
                    client = self.session.client(service, region_name=self.region, config=config)
                if service == "s3":  # so that a refusal can name the bucket that refused
                    client.meta.events.register("before-parameter-build.s3", _note_bucket)
                    client.meta.events.register("after-call.s3", _name_bucket)
                self._clients[service] = client
            return self._clients[service]

    @property
    def account_id(self) -> str:
        if self._account is None:
            with translate("reading the AWS account (sts:GetCallerIdentity)"):
                self._account = self.client("sts").get_caller_identity()["Account"]
        return self._account

    @property
    def partition(self) -> str:
        return partition_for(self.region, self.session)

    @property
    def bucket(self) -> str:
        return self.settings.bucket or default_bucket(self.account_id, self.region)

    def objects(self, prefix: str, what: str = "listing") -> List[dict]:
        """Every object under prefix in the bucket (one LIST per 1,000 keys), S3's errors in words."""
        with translate(f"{what} {self.s3_uri(prefix)}"):
            pages = self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [obj for page in pages for obj in page.get("Contents", [])]

    def s3_uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"


def _note_bucket(params, context, **kwargs) -> None:
    if isinstance(params, dict) and params.get("Bucket"):
        context["sd_bucket"] = params["Bucket"]


def _name_bucket(parsed, context, **kwargs) -> None:
    """An S3 error answer names its bucket (in the ClientError's response) even where S3 itself does not."""
    error = parsed.get("Error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and context.get("sd_bucket"):
        error.setdefault("BucketName", context["sd_bucket"])


def partition_for(region: str, session=None) -> str:
    """The first field of every ARN in this region: aws, aws-cn (cn-*), aws-us-gov (us-gov-*), ..."""
    try:
        return (session or boto3.session.Session()).get_partition_for_region(region)
    except Exception:  # a region newer than botocore's data (or a stand-in name): AWS's prefixes decide
        return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def split_s3_uri(uri) -> Tuple[str, str]:
    """s3://bucket/key -> (bucket, key); ("", "") for anything else (each caller words its own refusal)."""
    bucket, _, key = uri[len("s3://"):].partition("/") if isinstance(uri, str) and uri.startswith("s3://") else ("", "", "")
    return (bucket, key) if bucket and key else ("", "")


def iso(moment) -> str:
    """An AWS timestamp as ISO 8601 in UTC, to the second ('' when there is none)."""
    if not isinstance(moment, datetime):
        return str(moment or "")
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    code = error_code(exc)
    if code in ("404", "NoSuchKey", "NoSuchUpload", "NoSuchBucket", "ResourceNotFound", "ObjectNotFound",
                "NoSuchEntity", "ResourceNotFoundException"):
        return True
    message = str(exc)
    return code == "ValidationException" and ("Could not find" in message or "does not exist" in message)


def describe(exc: BaseException, what: str = "") -> UserError:
    """Turn a boto failure into our error type, with a sentence that says what to do."""
    where = f" while {what}" if what else ""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return ConfigError(NO_CREDENTIALS)
    if isinstance(exc, bex.NoRegionError):
        return ConfigError(NO_REGION)
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
                        bex.ConnectTimeoutError)):
        return TransferError(f"Cannot reach AWS{where}: {exc}. Check the network and the region.")
    if isinstance(exc, bex.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code in ("InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                    "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException", "InvalidToken"):
            return ConfigError(f"AWS rejected the credentials{where} ({code}): refresh or fix them.")
        if code == "400" and exc.operation_name.startswith("Head"):
            # a HEAD answer has no body, so S3 cannot say why; an expired or invalid session token is the usual cause
            return ConfigError(f"AWS answered 400 Bad Request{where} without a reason: most often the credentials' "
                               f"session token has expired or is invalid. Refresh the credentials (e.g. `aws sso "
                               f"login`, or a new AWS_SESSION_TOKEN) and try again.")
        if code in ("AccessDenied", "AccessDeniedException", "403"):
            return access_denied(exc, where, message)
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"):
            return ConfigError(f"The bucket is in another region{where}: set the region it lives in ({message}).")
        if code == "NoSuchBucket":
            return ConfigError(f"The bucket does not exist{where}: run setup (`python -m aws_extension setup`).")
        if is_not_found(exc):
            return NotFound(f"Not found{where}: {message}")
        return UserError(f"AWS error{where} ({code}): {message}")
    if isinstance(exc, bex.BotoCoreError):
        return UserError(f"AWS client error{where}: {exc}")
    raise exc


S3_WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject",
             "UploadPartCopy")


def access_denied(exc: bex.ClientError, where: str, message: str) -> ConfigError:
    """A refused write is not always the credentials: the bucket's public access block or policy can refuse
    it too (Ceph refuses every write under its own reading of BlockPublicAcls)."""
    if exc.operation_name not in S3_WRITES:
        return ConfigError(f"Access denied{where}: the credentials lack permission ({message}).")
    bucket = exc.response.get("Error", {}).get("BucketName", "")
    named = f"bucket '{bucket}'" if bucket else "the bucket"
    if re.search(r"public.?access|BlockPublic", message, re.I):
        return ConfigError(f"Access denied{where}: {named} refuses the write because of its public access block "
                           f"({message}). Nothing here asks for public access, so the server applies the block to "
                           f"every write: turn BlockPublicAcls off on {named} (or have its owner do it) or choose "
                           f"another bucket. Otherwise the credentials lack permission to write to it.")
    return ConfigError(f"Access denied{where}: either the credentials lack permission to write to {named}, or "
                       f"the bucket's policy or public access block refuses the write ({message}).")


@contextlib.contextmanager
def translate(what: str = "") -> Iterator[None]:
    """Re-raise boto failures inside the block as UserError with a clear sentence."""
    try:
        yield
    except (bex.BotoCoreError, bex.ClientError) as exc:
        raise describe(exc, what) from exc
