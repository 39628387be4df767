"""Presigning for the browser's multipart uploader ("from Laptop"): the bytes go from the browser to S3.

The server only starts, signs, lists, completes and aborts; it never sees a byte of the model. Each part URL
signs the part's CRC32 header, so S3 refuses a part whose bytes (or header) differ from what was signed.
A page reload resumes: `start_upload` finds the open upload of the same key and returns the parts S3 holds.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import weakref
from typing import List, Optional

from botocore.config import Config

from ..aws import Aws, error_code, translate
from ..compat import BaseModel
from ..errors import NotFound, Refused, TransferError
from .catalog import ModelRecord, now_iso, recorded_sha256, write_record
from .detect import BASES, chosen_type, decide, detect_head
from .headers import HEAD_LIMIT
from .transfer import MAX_PARTS, part_size_for, verify_completed
from .types import MODEL_TYPES, check_file_name
from .uploads import UploadResult

CHECKSUM_HEADER = "x-amz-checksum-crc32"
MAX_EXPIRES = 7 * 24 * 3600  # SigV4's limit
MAX_PART = 5 * 1024 ** 3  # S3's largest part
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BrowserPart(BaseModel):
    part_number: int
    size: Optional[int] = None
    etag: str
    checksum_crc32: Optional[str] = None  # absent when the server does not report it (moto)


class BrowserUpload(BaseModel):
    """What the page needs to send (or go on sending) one file: parts of `part_size`, the last one shorter.

    On a resume the page skips a part of `parts_done` only when its own CRC32 of that slice equals the part's
    `checksum_crc32` (S3 reports it; an emulator may not, and then the size is all that was compared).
    """

    type: str
    name: str
    key: str
    upload_id: str = ""
    size: int
    part_size: int
    part_count: int
    parts_done: List[BrowserPart] = []
    resumed: bool = False
    skipped: bool = False  # the cloud already holds this very file (same size and sha256): nothing to send
    # Asked without a sha256 while the cloud holds a recorded model of this name and size: nothing was started;
    # the page hashes the file and asks again with it (so any other file is hashed on the way up, in one read).
    check_sha256: bool = False
    # what the file's first bytes (sent with the start) said it is; the page sends them back with the completion
    kind: Optional[str] = None
    base: Optional[str] = None
    detected: Optional[str] = None


# -- keys --------------------------------------------------------------------------------------------
def parse_key(key: str) -> tuple:
    """`models/<folder>/<file name>` for one of the six types, or Refused: the only keys we sign for."""
    text = key if isinstance(key, str) else ""
    for t in MODEL_TYPES:
        if text.startswith(t.prefix):
            name = text[len(t.prefix):]
            check_file_name(name, f"'{text}'")
            return t, name
    raise Refused(f"'{key}' is not a model key: only models/<{'|'.join(t.s3_folder for t in MODEL_TYPES)}>/<file> "
                  f"can be uploaded from the browser.")


def check_checksum(checksum: str, item: str) -> str:
    try:
        ok = len(base64.b64decode(checksum or "", validate=True)) == 4
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise Refused(f"{item}: '{checksum}' is not a base64 CRC32 checksum.")
    return checksum


def check_part_number(number: int, item: str) -> int:
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_PARTS:
        raise Refused(f"{item}: part number {number!r} is outside 1..{MAX_PARTS}.")
    return number


# -- a SigV4 client for presigning -------------------------------------------------------------------
_presigners: "weakref.WeakKeyDictionary[Aws, object]" = weakref.WeakKeyDictionary()
_presigners_lock = threading.Lock()


def presigner(aws: Aws):
    """An S3 client that signs URLs with SigV4 (botocore may pick SigV2 for presigning, which S3 is retiring)."""
    with _presigners_lock:
        client = _presigners.get(aws)
        if client is None:
            with translate("preparing to sign upload URLs"):
                client = aws.session.client("s3", region_name=aws.region, config=Config(signature_version="s3v4"))
            _presigners[aws] = client
        return client


def check_expires(expires: int) -> int:
    if not isinstance(expires, int) or not 1 <= expires <= MAX_EXPIRES:
        raise Refused(f"A link must expire within 1..{MAX_EXPIRES} seconds, not {expires!r}.")
    return expires


# -- the flow ----------------------------------------------------------------------------------------
def start_upload(aws: Aws, type_name: str, file_name: str, size: int, sha256: Optional[str] = None,
                 head: Optional[bytes] = None, force: bool = False) -> BrowserUpload:
    """Resume the open upload of this key when its parts fit this file, else start one (CRC32 per part).

    head: the file's first bytes (as many as headers.head_length asks for): the type is checked from them before
    anything starts; type "auto" takes the type they tell. force: go on although they tell another type."""
    chosen = chosen_type(type_name)
    name = check_file_name(file_name)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise Refused(f"{name}: the file is empty or its size ({size!r}) is not a positive number of bytes.")
    if head is not None and len(head) > HEAD_LIMIT + 64 * 1024:
        raise Refused(f"{name}: the first bytes sent to check the file are more than its header can be.")
    detected = detect_head(name, head, size) if head else None
    if detected is None and chosen is None:
        raise Refused(f"{name}: its first bytes were not sent, so its type cannot be read from them; choose its type.")
    t = decide(detected, chosen, name, force) if detected else chosen
    part_size = part_size_for(size)
    if part_size > MAX_PART:
        raise Refused(f"{name}: {size} bytes is more than one S3 object can hold (10,000 parts of 5 GiB).")
    known = detected is not None and detected.known
    plan = dict(type=t.id, name=name, key=t.key(name), size=size, part_size=part_size,
                part_count=-(-size // part_size), kind=detected.kind if known else None,
                base=detected.base if known and detected.base != "unknown" else None,
                detected=detected.what if known else None)
    recorded = recorded_sha256(aws, t.key(name), size)
    if recorded and not sha256:
        return BrowserUpload(**plan, check_sha256=True)
    if recorded and sha256 and recorded == sha256.lower():
        return BrowserUpload(**plan, skipped=True)
    s3 = aws.client("s3")
    with translate(f"looking for an interrupted upload of {name}"):
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=aws.bucket, Prefix=t.key(name))
        uploads = [u for page in pages for u in page.get("Uploads", []) if u["Key"] == t.key(name)]
    for upload in sorted(uploads, key=lambda u: u["Initiated"], reverse=True):
        if upload.get("ChecksumAlgorithm", "CRC32") != "CRC32":
            continue  # not one of ours: its parts carry no CRC32
        try:
            parts = list_parts(aws, t.key(name), upload["UploadId"])
        except NotFound:
            continue  # aborted meanwhile
        if _fits(parts, size, part_size, plan["part_count"]):
            return BrowserUpload(**plan, upload_id=upload["UploadId"], parts_done=parts, resumed=True)
        # Another file of the same name was being sent: its parts are useless for this one.
        abort_upload(aws, t.key(name), upload["UploadId"])
    with translate(f"starting the upload of {name}"):
        created = s3.create_multipart_upload(Bucket=aws.bucket, Key=t.key(name), ChecksumAlgorithm="CRC32",
                                             ContentType="application/octet-stream")
    return BrowserUpload(**plan, upload_id=created["UploadId"])


def _fits(parts: List[BrowserPart], size: int, part_size: int, part_count: int) -> bool:
    for p in parts:
        expected = part_size if p.part_number < part_count else size - part_size * (part_count - 1)
        if p.part_number > part_count or (p.size is not None and p.size != expected):
            return False
    return True


def presign_part(aws: Aws, key: str, upload_id: str, part_number: int, checksum_crc32: str,
                 expires: int = 900) -> dict:
    """`{method, url, headers}`: the browser PUTs the part's bytes to `url` with exactly these headers.

    The CRC32 header is part of the signature, so S3 refuses the part if the header is missing or changed
    (403) or if the bytes do not match it (400 BadDigest).
    """
    _, name = parse_key(key)
    check_part_number(part_number, name)
    check_checksum(checksum_crc32, f"{name} part {part_number}")
    check_expires(expires)
    if not upload_id:
        raise Refused(f"{name}: no upload id: start the upload first.")
    with translate(f"signing part {part_number} of {name}"):
        url = presigner(aws).generate_presigned_url("upload_part", ExpiresIn=expires, HttpMethod="PUT", Params={
            "Bucket": aws.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number,
            "ChecksumCRC32": checksum_crc32,
        })
    return {"method": "PUT", "url": url, "headers": {CHECKSUM_HEADER: checksum_crc32}}


def list_parts(aws: Aws, key: str, upload_id: str) -> List[BrowserPart]:
    """Every part S3 holds for this upload (1,000 per page)."""
    _, name = parse_key(key)
    parts: List[BrowserPart] = []
    try:
        pages = aws.client("s3").get_paginator("list_parts").paginate(Bucket=aws.bucket, Key=key, UploadId=upload_id)
        for page in pages:
            parts.extend(BrowserPart(part_number=p["PartNumber"], size=p.get("Size"), etag=p["ETag"],
                                     checksum_crc32=p.get("ChecksumCRC32")) for p in page.get("Parts", []))
    except Exception as exc:
        if error_code(exc) == "NoSuchUpload":
            raise _closed(name) from exc
        with translate(f"listing the uploaded parts of {name}"):
            raise
    return parts


def _closed(name: str) -> NotFound:
    return NotFound(f"{name}: this upload is no longer open (finished, aborted or expired): start it again.")


def abort_upload(aws: Aws, key: str, upload_id: str) -> None:
    """Drop the upload and its parts; an upload already gone counts as aborted."""
    _, name = parse_key(key)
    try:
        aws.client("s3").abort_multipart_upload(Bucket=aws.bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        if error_code(exc) == "NoSuchUpload":
            return
        with translate(f"aborting the upload of {name}"):
            raise


def complete_upload(aws: Aws, key: str, upload_id: str, parts: List[dict], sha256: str, size: int,
                    source: str = "browser", description: Optional[dict] = None, kind: Optional[str] = None,
                    base: Optional[str] = None) -> UploadResult:
    """Assemble the parts, check the object against what the browser sent, then write the model's record (with the
    kind and base its start found, as the page sends them back)."""
    t, name = parse_key(key)
    if kind is not None and kind not in [m.id for m in MODEL_TYPES]:
        raise Refused(f"{name}: '{kind}' is not a model type.")
    if base is not None and base not in BASES:
        raise Refused(f"{name}: '{base}' is not a base model ({', '.join(BASES)}).")
    digest = (sha256 or "").strip().lower()
    if not SHA256_RE.match(digest):
        raise Refused(f"{name}: '{sha256}' is not a sha256 (64 hex digits).")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise Refused(f"{name}: size {size!r} is not a positive number of bytes.")
    checked = _check_parts(parts, name)
    _check_held(aws, key, upload_id, name, checked, size)
    s3 = aws.client("s3")
    try:
        completed = s3.complete_multipart_upload(
            Bucket=aws.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": p.etag, "ChecksumCRC32": p.checksum_crc32}
                                       for p in checked]},
        )
    except Exception as exc:
        if error_code(exc) == "NoSuchUpload":
            raise _closed(name) from exc
        if error_code(exc) in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "InvalidDigest", "BadDigest"):
            raise TransferError(f"{name}: S3 refused to assemble the parts ({error_code(exc)}): "
                                f"send the missing or changed parts again.") from exc
        with translate(f"completing the upload of {name}"):
            raise
    with translate(f"checking the uploaded {name}"):
        verify_completed(aws, key, name, completed, size, [p.checksum_crc32 for p in checked])
    write_record(aws, ModelRecord(type=t.id, name=name, key=key, size=size, sha256=digest, source=source,
                                  description=description, uploaded_at=now_iso(), kind=kind,
                                  base=base if kind else None))
    return UploadResult(item=name, type=t.id, status="uploaded", name=name, key=key, size=size, sha256=digest,
                        parts_sent=len(checked))


def _check_parts(parts: List[dict], name: str) -> List[BrowserPart]:
    if not parts:
        raise Refused(f"{name}: no parts to assemble.")
    checked = []
    for raw in parts:
        try:
            part = BrowserPart.parse_obj(raw)
        except Exception as exc:
            raise Refused(f"{name}: a part is not {{part_number, etag, checksum_crc32}}: {raw!r}.") from exc
        check_part_number(part.part_number, name)
        check_checksum(part.checksum_crc32 or "", f"{name} part {part.part_number}")
        checked.append(part)
    numbers = [p.part_number for p in checked]
    if numbers != sorted(set(numbers)):
        raise Refused(f"{name}: the parts must be listed once each, in ascending order.")
    return checked


def _check_held(aws: Aws, key: str, upload_id: str, name: str, parts: List[BrowserPart], size: int) -> None:
    """Before assembling: every part is in S3 as the browser sent it, and together they are the file's size."""
    held = {p.part_number: p for p in list_parts(aws, key, upload_id)}  # NotFound once the upload is closed
    missing = [p.part_number for p in parts if p.part_number not in held]
    changed = [p.part_number for p in parts if p.part_number in held and held[p.part_number].checksum_crc32
               and held[p.part_number].checksum_crc32 != p.checksum_crc32]
    if missing or changed:
        raise TransferError(f"{name}: part(s) {', '.join(map(str, (missing + changed)[:10]))} are missing or differ "
                            f"in S3: send them again.")
    total = sum(held[p.part_number].size or 0 for p in parts)
    if total != size:
        abort_upload(aws, key, upload_id)  # parts that do not add up to the file are of no use
        raise TransferError(f"{name}: the parts hold {total} bytes but the file has {size}; "
                            f"the upload was cancelled: start it again.")
