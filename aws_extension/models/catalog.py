"""What is in the cloud: list models (one LIST per 1,000 keys), read one record, delete."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import List, Optional

from ..aws import Aws, is_not_found, iso, translate
from ..compat import BaseModel
from ..errors import NotFound
from .types import has_model_extension, model_type, type_of_key

RECORD_SUFFIX = ".json"


class ModelRecord(BaseModel):
    """Stored beside each model as `<key>.json`."""

    type: str
    name: str
    key: str
    size: int
    sha256: Optional[str] = None
    source: str = ""
    # a URL's strong ETag when it was fetched: the same URL, ETag and size again is the same file, not sent twice
    source_etag: Optional[str] = None
    description: Optional[dict] = None
    uploaded_at: str = ""


class CloudModel(BaseModel):
    """One row of the model list; sha256 and description come from the record, read on demand."""

    type: str
    name: str
    key: str
    size: int
    last_modified: str
    sha256: Optional[str] = None
    description: Optional[dict] = None
    source: Optional[str] = None


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def record_key(key: str) -> str:
    return key + RECORD_SUFFIX


def write_record(aws: Aws, record: ModelRecord) -> None:
    with translate(f"writing the record of {record.key}"):
        aws.client("s3").put_object(
            Bucket=aws.bucket, Key=record_key(record.key), Body=record.json(indent=2).encode(),
            ContentType="application/json",
        )


def read_record(aws: Aws, key: str) -> Optional[ModelRecord]:
    try:
        body = aws.client("s3").get_object(Bucket=aws.bucket, Key=record_key(key))["Body"].read()
    except Exception as exc:
        if is_not_found(exc):
            return None
        with translate(f"reading the record of {key}"):
            raise
    try:
        return ModelRecord.parse_obj(json.loads(body))
    except Exception:  # a hand-edited or foreign record: the model still lists, without its details
        return None


def list_models(aws: Aws, type_name: Optional[str] = None) -> List[CloudModel]:
    """One LIST request per 1,000 keys under models/ (or one type's folder); records are skipped."""
    prefix = model_type(type_name).prefix if type_name else "models/"
    models: List[CloudModel] = []
    with translate(f"listing {aws.s3_uri(prefix)}"):
        pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                t = type_of_key(obj["Key"])
                name = obj["Key"][len(t.prefix):] if t else ""
                if not t or "/" in name or not has_model_extension(name):
                    continue  # records, and anything not a model
                models.append(CloudModel(
                    type=t.id, name=name, key=obj["Key"], size=obj["Size"], last_modified=iso(obj["LastModified"]),
                ))
    return models


def head_model(aws: Aws, key: str) -> Optional[dict]:
    try:
        return aws.client("s3").head_object(Bucket=aws.bucket, Key=key)
    except Exception as exc:
        if is_not_found(exc):
            return None
        with translate(f"reading {aws.s3_uri(key)}"):
            raise


def record_of_size(aws: Aws, key: str, size: int) -> Optional[ModelRecord]:
    """The record of the model at `key` when the cloud holds one of this size (else None)."""
    head = head_model(aws, key)
    return read_record(aws, key) if head and head["ContentLength"] == size else None


def recorded_sha256(aws: Aws, key: str, size: int) -> Optional[str]:
    """The sha256 recorded for the model at `key` when the cloud holds one of this size (else None)."""
    record = record_of_size(aws, key, size)
    return record.sha256 if record else None


def same_source(aws: Aws, key: str, source: str, etag: str, size: int) -> Optional[ModelRecord]:
    """The record of the model at `key` when it came from this source with this ETag and has this size (else None)."""
    record = record_of_size(aws, key, size)
    return record if record and (record.source, record.source_etag, record.size) == (source, etag, size) else None


def show_model(aws: Aws, type_name: str, name: str) -> CloudModel:
    t = model_type(type_name)
    key = t.key(name)
    head = head_model(aws, key)
    if head is None:
        raise NotFound(f"No {t.label} named '{name}' in {aws.s3_uri(t.prefix)}.")
    record = read_record(aws, key)
    return CloudModel(
        type=t.id, name=name, key=key, size=head["ContentLength"],
        last_modified=iso(head["LastModified"]),
        sha256=record.sha256 if record else None,
        description=record.description if record else None,
        source=record.source if record else None,
    )


def delete_model(aws: Aws, type_name: str, name: str) -> None:
    t = model_type(type_name)
    key = t.key(name)
    if head_model(aws, key) is None:
        raise NotFound(f"No {t.label} named '{name}' in {aws.s3_uri(t.prefix)}.")
    with translate(f"deleting {aws.s3_uri(key)}"):
        aws.client("s3").delete_objects(
            Bucket=aws.bucket, Delete={"Objects": [{"Key": key}, {"Key": record_key(key)}], "Quiet": True}
        )
