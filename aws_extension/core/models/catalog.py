"""What is in the cloud: list models (one LIST per 1,000 keys), read one record, find by hash, delete.

Layout: the models under `models/<folder>/<name>`, nothing else there, so a listing is one LIST per 1,000 models.
Each model's record at `records/<folder>/<name>.json`, and an empty marker `hashes/<sha256>/<folder>/<name>`, so
an infotext's short hash is found by one LIST of `hashes/<short>` rather than by reading every record. Records
that older versions kept beside the model (`<key>.json`) move to this layout when a listing meets them.

What a record says of the model's base (sd1, sdxl...) is copied into an empty marker `bases/<folder>/<base>/<name>`
the first time a listing needs it, so the lists that show only the models fitting a checkpoint read the bases of a
whole folder with one LIST per 1,000 models instead of a GET per model."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Dict, List, Optional, Tuple

from ..aws import Aws, is_not_found, iso, translate
from ..compat import BaseModel
from ..errors import NotFound
from .detect import BASE_NAMES
from .types import has_model_extension, model_type, type_of_key

MODELS = "models/"
RECORDS = "records/"
HASHES = "hashes/"
BASES = "bases/"
UNKNOWN_BASE = "unknown"  # a marker's base when the record names none
RECORD_SUFFIX = ".json"
log = logging.getLogger(__name__)


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
    # what the file's header said it is (detect.py): a type id and a base (sd1, sd2, sdxl, sd3, flux); None when it
    # could not be told, and in records older versions wrote
    kind: Optional[str] = None
    base: Optional[str] = None


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
    kind: Optional[str] = None  # what its header said at upload (the record's), where it said
    base: Optional[str] = None


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def record_key(key: str) -> str:
    """Where the record of the model at `key` lives (a key outside models/ keeps its record beside it)."""
    return (RECORDS + key[len(MODELS):] if key.startswith(MODELS) else key) + RECORD_SUFFIX


def legacy_record_key(key: str) -> str:
    return key + RECORD_SUFFIX


def hash_key(sha256: str, key: str) -> str:
    return f"{HASHES}{sha256.lower()}/{key[len(MODELS):]}"


def base_marker(key: str, base: Optional[str]) -> str:
    """The marker that says the model at `key` (under models/) is for `base` (None or unknown: the record says none)."""
    folder, _, name = key[len(MODELS):].partition("/")
    return f"{BASES}{folder}/{base if base in BASE_NAMES else UNKNOWN_BASE}/{name}"


def write_record(aws: Aws, record: ModelRecord) -> None:
    s3 = aws.client("s3")
    with translate(f"writing the record of {record.key}"):
        s3.put_object(Bucket=aws.bucket, Key=record_key(record.key), Body=record.json(indent=2).encode(),
                      ContentType="application/json")
        if record.sha256 and record.key.startswith(MODELS):
            s3.put_object(Bucket=aws.bucket, Key=hash_key(record.sha256, record.key), Body=b"")


def _get_record(aws: Aws, record_at: str, key: str, bucket: Optional[str] = None) -> Optional[bytes]:
    try:
        return aws.client("s3").get_object(Bucket=bucket or aws.bucket, Key=record_at)["Body"].read()
    except Exception as exc:
        if is_not_found(exc):
            return None
        with translate(f"reading the record of {f's3://{bucket}/{key}' if bucket else key}"):
            raise


def parse_record(body: Optional[bytes]) -> Optional[ModelRecord]:
    try:
        return ModelRecord.parse_obj(json.loads(body)) if body is not None else None
    except Exception:  # a hand-edited or foreign record: the model still lists, without its details
        return None


def read_record(aws: Aws, key: str, legacy: bool = True, bucket: Optional[str] = None) -> Optional[ModelRecord]:
    """The model's record; one written by an older version beside the model is read where it is until it moves
    (legacy=False: not looked for, one GET; such records say nothing of kind and base). bucket: another bucket
    than the tool's (an endpoint may load models from any)."""
    body = _get_record(aws, record_key(key), key, bucket)
    if body is None and legacy and key.startswith(MODELS):
        body = _get_record(aws, legacy_record_key(key), key, bucket)
    return parse_record(body)


def _migrate(aws: Aws, legacy: List[str]) -> None:
    """Move records kept beside their models (older versions) to records/ with their hash markers. Best effort:
    a record that cannot move stays readable where it is."""
    def move(old: str) -> Optional[str]:
        key = old[:-len(RECORD_SUFFIX)]
        try:
            body = _get_record(aws, old, key)
            record = parse_record(body)
            if body is None:
                return None
            aws.client("s3").put_object(Bucket=aws.bucket, Key=record_key(key), Body=body,
                                        ContentType="application/json")
            if record and record.sha256:
                aws.client("s3").put_object(Bucket=aws.bucket, Key=hash_key(record.sha256, key), Body=b"")
            return old
        except Exception as exc:  # noqa: BLE001 - the listing itself must not fail for it
            log.warning("Amazon SageMaker: could not move the record of %s to %s: %s", key, RECORDS, exc)
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        moved = [k for k in pool.map(move, legacy) if k]
    for i in range(0, len(moved), 1000):
        with translate(f"removing moved records from {aws.s3_uri(MODELS)}"):
            aws.client("s3").delete_objects(Bucket=aws.bucket, Delete={
                "Objects": [{"Key": k} for k in moved[i:i + 1000]], "Quiet": True})
    if moved:
        log.info("Amazon SageMaker: moved %d model record(s) to %s (once)", len(moved), aws.s3_uri(RECORDS))


def list_models(aws: Aws, type_name: Optional[str] = None) -> List[CloudModel]:
    """One LIST request per 1,000 models under models/ (or one type's folder). Records an older version kept
    there are moved out on the way (once)."""
    prefix = model_type(type_name).prefix if type_name else MODELS
    models, legacy = _listed(aws, prefix)
    keys = {m.key for m in models}
    legacy = [k for k in legacy if k[:-len(RECORD_SUFFIX)] in keys]
    if legacy:
        _migrate(aws, legacy)
    return models


def _listed(aws: Aws, prefix: str) -> Tuple[List[CloudModel], List[str]]:
    """The models under prefix, and the records an older version kept beside them."""
    models: List[CloudModel] = []
    legacy: List[str] = []
    for obj in aws.objects(prefix):
        t = type_of_key(obj["Key"])
        name = obj["Key"][len(t.prefix):] if t else ""
        if t and name.endswith(RECORD_SUFFIX) and has_model_extension(name[:-len(RECORD_SUFFIX)]):
            legacy.append(obj["Key"])
        if not t or "/" in name or not has_model_extension(name):
            continue  # anything not a model
        models.append(CloudModel(
            type=t.id, name=name, key=obj["Key"], size=obj["Size"], last_modified=iso(obj["LastModified"]),
        ))
    return models, legacy


def _stamps(aws: Aws, prefix: str) -> Dict[str, datetime]:
    """Every key under prefix with its LastModified (one LIST per 1,000 keys)."""
    return {obj["Key"]: obj["LastModified"] for obj in aws.objects(prefix)}


def list_models_with_bases(aws: Aws, type_name: str) -> List[CloudModel]:
    """list_models of one type, each with the base its record names (None where it names none or there is no
    record). Three LISTs per 1,000 models: the models, their records and the base markers. A record newer than
    its model's marker (a new upload, or a record written before markers existed) is read once, one GET, and its
    marker written; that is best effort: a model whose record cannot be read lists with base None."""
    t = model_type(type_name)
    folder = t.prefix[len(MODELS):]
    with ThreadPoolExecutor(max_workers=3) as pool:
        listed = pool.submit(list_models, aws, t.id)
        records = pool.submit(_stamps, aws, RECORDS + folder)
        markers = pool.submit(_stamps, aws, BASES + folder)
        models, records, markers = listed.result(), records.result(), markers.result()
    marked: Dict[str, List[Tuple[datetime, str, str]]] = {}  # model key -> (when, base, marker key)
    for marker, when in markers.items():
        base, _, name = marker[len(BASES + folder):].partition("/")
        if (base in BASE_NAMES or base == UNKNOWN_BASE) and name and "/" not in name:
            marked.setdefault(t.prefix + name, []).append((when, base, marker))
    stale: List[str] = []  # markers of an earlier record of the same model
    unread: List[CloudModel] = []
    for m in models:
        written = records.get(record_key(m.key))
        if written is None:
            continue  # no record (another tool put it there): nothing says its base
        found = sorted(marked.get(m.key, []), reverse=True)
        # strictly newer: a marker made within the record's second might have read the one before it
        if found and found[0][0] > written:
            m.base = found[0][1] if found[0][1] in BASE_NAMES else None
            stale += [marker for _, _, marker in found[1:]]
        else:
            unread.append(m)
            stale += [marker for _, _, marker in found]

    def read(m: CloudModel) -> Optional[str]:
        record = read_record(aws, m.key, legacy=False)
        base = record.base if record and record.base in BASE_NAMES else None
        marker = base_marker(m.key, base)
        aws.client("s3").put_object(Bucket=aws.bucket, Key=marker, Body=b"")
        return marker

    def safely(m: CloudModel) -> Optional[str]:
        try:
            return read(m)
        except Exception as exc:  # noqa: BLE001 - the listing must not fail for it: the model shows for any base
            log.warning("Amazon SageMaker: could not read the base of %s: %s", m.key, exc)
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        written_markers = list(pool.map(safely, unread))
    for m, marker in zip(unread, written_markers):
        if marker:
            base = marker[len(BASES + folder):].partition("/")[0]
            m.base = base if base in BASE_NAMES else None
    rewritten = set(written_markers)
    stale = [k for k in stale if k not in rewritten]
    for i in range(0, len(stale), 1000):
        try:
            aws.client("s3").delete_objects(Bucket=aws.bucket, Delete={
                "Objects": [{"Key": k} for k in stale[i:i + 1000]], "Quiet": True})
        except Exception as exc:  # noqa: BLE001 - the newest marker wins anyway
            log.warning("Amazon SageMaker: could not remove stale base markers: %s", exc)
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


def model_at(aws: Aws, type_name: str, name: str) -> Optional[CloudModel]:
    """The model of this type and exact file name (one HEAD), or None."""
    t = model_type(type_name)
    head = head_model(aws, t.key(name)) if "/" not in name else None
    return CloudModel(type=t.id, name=name, key=t.key(name), size=head["ContentLength"],
                      last_modified=iso(head["LastModified"])) if head else None


def models_with_stem(aws: Aws, type_name: str, stem: str) -> List[CloudModel]:
    """The models of this type whose name is `stem` plus an extension (one LIST of `<stem>.`)."""
    models, _ = _listed(aws, model_type(type_name).prefix + stem + ".")
    return [m for m in models if m.name.rsplit(".", 1)[0] == stem]


def find_by_hash(aws: Aws, type_name: str, short_hash: str) -> List[CloudModel]:
    """The models of this type whose recorded sha256 starts with short_hash: one LIST of the hash markers, then one
    record read per hit to confirm it (a marker left by a replaced model is removed)."""
    t = model_type(type_name)
    prefix = HASHES + short_hash.lower()
    markers = [obj["Key"] for obj in aws.objects(prefix, "looking up")]
    found = []
    for marker in markers:
        sha256, _, rest = marker[len(HASHES):].partition("/")
        key = MODELS + rest
        if type_of_key(key) != t or "/" in key[len(t.prefix):]:
            continue
        record = read_record(aws, key)
        if record and (record.sha256 or "").lower() == sha256:
            found.append(CloudModel(type=t.id, name=key[len(t.prefix):], key=key, size=record.size,
                                    last_modified=record.uploaded_at, sha256=record.sha256))
        else:
            try:
                aws.client("s3").delete_object(Bucket=aws.bucket, Key=marker)
            except Exception as exc:  # noqa: BLE001 - it is skipped either way
                log.warning("Amazon SageMaker: could not remove the stale marker %s: %s", marker, exc)
    return sorted(found, key=lambda m: m.name)


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
        kind=record.kind if record else None,
        base=record.base if record else None,
    )


def delete_model(aws: Aws, type_name: str, name: str) -> None:
    t = model_type(type_name)
    key = t.key(name)
    if head_model(aws, key) is None:
        raise NotFound(f"No {t.label} named '{name}' in {aws.s3_uri(t.prefix)}.")
    record = read_record(aws, key)
    gone = [key, record_key(key), legacy_record_key(key)]
    gone += [hash_key(record.sha256, key)] if record and record.sha256 else []
    gone += [base_marker(key, base) for base in (*BASE_NAMES, None)]
    with translate(f"deleting {aws.s3_uri(key)}"):
        aws.client("s3").delete_objects(
            Bucket=aws.bucket, Delete={"Objects": [{"Key": k} for k in gone], "Quiet": True}
        )
