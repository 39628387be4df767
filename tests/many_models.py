"""Many cloud checkpoints at once, written straight into the emulator's S3 (in this process): 10,000 through HTTP
would take minutes. The layout is the one our uploads write, or the one older versions wrote."""

from __future__ import annotations

import hashlib

from aws_extension.core.models.catalog import ModelRecord, hash_key, legacy_record_key, record_key


def sha256_of(i: int) -> str:
    return hashlib.sha256(f"checkpoint {i}".encode()).hexdigest()


def name_of(i: int) -> str:
    return f"model-{i:05d}.safetensors"


def seed_checkpoints(bucket: str, count: int, legacy: bool = False, start: int = 0) -> None:
    """`count` small checkpoints with their records (and hash markers, unless written the older way)."""
    from moto.s3.models import s3_backends

    from aws_extension.local.emulator import ACCOUNT_ID

    s3 = s3_backends[ACCOUNT_ID]["aws"]
    for i in range(start, start + count):
        key = "models/Stable-diffusion/" + name_of(i)
        record = ModelRecord(type="checkpoint", name=name_of(i), key=key, size=10, sha256=sha256_of(i),
                             source="test", uploaded_at="2026-12-01T00:00:00Z")
        s3.put_object(bucket, key, b"x" * 10)
        s3.put_object(bucket, legacy_record_key(key) if legacy else record_key(key), record.json().encode())
        if not legacy:
            s3.put_object(bucket, hash_key(record.sha256, key), b"")
