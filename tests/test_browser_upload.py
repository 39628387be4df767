"""The browser's multipart upload, driven with plain HTTP as a browser would: presigned PUTs straight to S3."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.parse

import pytest

from aws_extension.core.errors import NotFound, Refused, TransferError
from aws_extension.core.models.browser import (
    abort_upload, complete_upload, list_parts, presign_part, start_upload,
)
from aws_extension.core.models.catalog import read_record, show_model
from aws_extension.core.models.headers import head_length
from aws_extension.core.models.transfer import MiB, crc32_b64
from model_headers import KINDS, safetensors_bytes

KEY = "models/Lora/style.safetensors"


def browser_put(signed: dict, data: bytes):
    """PUT like fetch() does with a Blob: the signed URL, the given headers, no Content-Type."""
    url = urllib.parse.urlsplit(signed["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(signed["method"], f"{url.path}?{url.query}", body=data, headers=signed["headers"])
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("ETag")
    finally:
        conn.close()


def send_part(aws, up, data: bytes, number: int) -> dict:
    chunk = data[(number - 1) * up.part_size: number * up.part_size]
    checksum = crc32_b64(chunk)
    status, etag = browser_put(presign_part(aws, up.key, up.upload_id, number, checksum), chunk)
    assert status == 200 and etag
    return {"part_number": number, "etag": etag, "checksum_crc32": checksum}


def open_uploads(aws, key=KEY):
    return aws.client("s3").list_multipart_uploads(Bucket=aws.bucket, Prefix=key).get("Uploads", [])


def exists(aws, key=KEY) -> bool:
    return aws.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix=key).get("KeyCount", 0) > 0


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(2 * 8 * MiB + 12345)  # three parts of 8 MiB, 8 MiB, 12 KiB


def test_three_parts_land_identical(aws, data):
    up = start_upload(aws, "LoRA", "style.safetensors", len(data))
    assert (up.key, up.part_size, up.part_count, up.parts_done, up.resumed) == (KEY, 8 * MiB, 3, [], False)
    signed = presign_part(aws, up.key, up.upload_id, 1, crc32_b64(data[:up.part_size]))
    # The checksum header is signed: on S3 a missing or changed header breaks the signature.
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(signed["url"]).query)
    assert "x-amz-checksum-crc32" in query["X-Amz-SignedHeaders"][0].split(";")
    assert signed["headers"] == {"x-amz-checksum-crc32": crc32_b64(data[:up.part_size])}

    parts = [send_part(aws, up, data, n) for n in (1, 2, 3)]
    sha = hashlib.sha256(data).hexdigest()
    result = complete_upload(aws, up.key, up.upload_id, parts, sha, len(data))
    assert (result.status, result.key, result.size, result.sha256) == ("uploaded", KEY, len(data), sha)
    assert result.parts_sent == 3

    stored = aws.client("s3").get_object(Bucket=aws.bucket, Key=KEY)["Body"].read()
    assert stored == data
    record = read_record(aws, KEY)
    assert record.sha256 == sha and record.size == len(data) and record.source == "browser"
    assert show_model(aws, "lora", "style.safetensors").sha256 == sha
    assert open_uploads(aws) == []

    # A file of the same name and size: the page is asked for its sha256 first, and nothing is started.
    ask = start_upload(aws, "lora", "style.safetensors", len(data))
    assert ask.check_sha256 and not ask.skipped and not ask.upload_id and open_uploads(aws) == []
    # The same file again: nothing to send.
    again = start_upload(aws, "lora", "style.safetensors", len(data), sha256=sha)
    assert again.skipped and not again.upload_id and open_uploads(aws) == []
    # Same name and size, other bytes: a new upload.
    other = start_upload(aws, "lora", "style.safetensors", len(data), sha256="0" * 64)
    assert other.upload_id and not other.skipped and len(open_uploads(aws)) == 1


def test_wrong_checksum_rejected_by_s3(aws, data):
    up = start_upload(aws, "lora", "style.safetensors", len(data))
    chunk = data[:up.part_size]
    signed = presign_part(aws, up.key, up.upload_id, 1, crc32_b64(chunk))
    status, _ = browser_put(signed, chunk[:-1] + bytes([chunk[-1] ^ 1]))  # bytes changed on the way
    if status == 200:
        pytest.skip("this emulator (moto 5.2.5) does not check x-amz-checksum-crc32 on presigned upload_part")
    assert status in (400, 403)


def test_composite_checksum_mismatch_removes_object(aws, data, monkeypatch):
    up = start_upload(aws, "lora", "style.safetensors", len(data))
    parts = [send_part(aws, up, data, n) for n in (1, 2, 3)]
    s3 = aws.client("s3")
    real = s3.complete_multipart_upload
    # moto returns no checksum on completion; S3 does: pretend it assembled other bytes.
    monkeypatch.setattr(s3, "complete_multipart_upload", lambda **kw: {**real(**kw), "ChecksumCRC32": "AAAAAA==-3"})
    with pytest.raises(TransferError, match="style.safetensors.*removed"):
        complete_upload(aws, up.key, up.upload_id, parts, hashlib.sha256(data).hexdigest(), len(data))
    assert not exists(aws) and read_record(aws, KEY) is None


def test_reload_resumes_same_upload(aws, data):
    first = start_upload(aws, "lora", "style.safetensors", len(data))
    part1 = send_part(aws, first, data, 1)
    again = start_upload(aws, "lora", "style.safetensors", len(data))
    assert again.upload_id == first.upload_id and again.resumed
    assert [(p.part_number, p.size, p.etag) for p in again.parts_done] == [(1, 8 * MiB, part1["etag"])]
    assert [p.part_number for p in list_parts(aws, KEY, first.upload_id)] == [1]
    parts = [part1] + [send_part(aws, again, data, n) for n in (2, 3)]
    complete_upload(aws, KEY, again.upload_id, parts, hashlib.sha256(data).hexdigest(), len(data))
    assert aws.client("s3").get_object(Bucket=aws.bucket, Key=KEY)["Body"].read() == data


def test_other_file_same_name_starts_afresh(aws, data):
    first = start_upload(aws, "lora", "style.safetensors", len(data))
    send_part(aws, first, data, 1)
    small = start_upload(aws, "lora", "style.safetensors", 1000)  # its one part cannot be the old 8 MiB part
    assert small.upload_id != first.upload_id and small.parts_done == [] and not small.resumed
    assert [u["UploadId"] for u in open_uploads(aws)] == [small.upload_id]


@pytest.mark.parametrize("key", [
    "../models/Lora/x.safetensors", "datasets/x.png", "models/Lora/a/b.safetensors", "models/Lora/x.txt",
    "models/Lora/../Lora/x.safetensors", "models/Unknown/x.safetensors", "models/Lora/", "Models/Lora/x.safetensors",
    "models/Lora/..", "/models/Lora/x.safetensors",
])
def test_keys_outside_model_folders_refused(aws, key):
    with pytest.raises(Refused):
        presign_part(aws, key, "id", 1, crc32_b64(b"x"))
    with pytest.raises(Refused):
        complete_upload(aws, key, "id", [{"part_number": 1, "etag": "e", "checksum_crc32": crc32_b64(b"x")}],
                        "0" * 64, 1)
    with pytest.raises(Refused):
        abort_upload(aws, key, "id")
    with pytest.raises(Refused):
        list_parts(aws, key, "id")


@pytest.mark.parametrize("type_name,name,size", [
    ("lora", "a/b.safetensors", 10), ("lora", "..", 10), ("lora", "x.png", 10), ("lora", "..\\x.safetensors", 10),
    ("nope", "x.safetensors", 10), ("lora", "x.safetensors", 0), ("lora", "x.safetensors", -5),
    ("lora", "x.safetensors", 10_000 * 5 * 1024 ** 3 + 1),
])
def test_start_refused(aws, type_name, name, size):
    with pytest.raises(Refused):
        start_upload(aws, type_name, name, size)
    assert open_uploads(aws, "models/") == []


def test_bad_part_arguments_refused(aws):
    up = start_upload(aws, "vae", "v.safetensors", 100)
    for number in (0, 10001, "1"):
        with pytest.raises(Refused, match="part number"):
            presign_part(aws, up.key, up.upload_id, number, crc32_b64(b"x"))
    for checksum in ("", "not base64!", "AAAAAAAA"):
        with pytest.raises(Refused, match="CRC32"):
            presign_part(aws, up.key, up.upload_id, 1, checksum)
    with pytest.raises(Refused, match="sha256"):
        complete_upload(aws, up.key, up.upload_id, [{"part_number": 1, "etag": "e", "checksum_crc32": "AAAAAA=="}],
                        "xyz", 100)
    with pytest.raises(Refused, match="ascending"):
        complete_upload(aws, up.key, up.upload_id, [
            {"part_number": 2, "etag": "e", "checksum_crc32": "AAAAAA=="},
            {"part_number": 1, "etag": "e", "checksum_crc32": "AAAAAA=="}], "0" * 64, 100)


def test_complete_with_wrong_size_leaves_nothing(aws, data):
    up = start_upload(aws, "lora", "style.safetensors", len(data))
    parts = [send_part(aws, up, data, n) for n in (1, 2, 3)]
    with pytest.raises(TransferError, match="style.safetensors"):
        complete_upload(aws, up.key, up.upload_id, parts, hashlib.sha256(data).hexdigest(), len(data) + 1)
    assert not exists(aws) and read_record(aws, KEY) is None and open_uploads(aws) == []


def test_assembled_object_of_wrong_size_removed(aws, data, monkeypatch):
    import aws_extension.core.models.browser as browser

    up = start_upload(aws, "lora", "style.safetensors", len(data))
    parts = [send_part(aws, up, data, n) for n in (1, 2, 3)]
    monkeypatch.setattr(browser, "_check_held", lambda *a: None)  # past the first check: the object's size decides
    with pytest.raises(TransferError, match="style.safetensors.*removed"):
        complete_upload(aws, up.key, up.upload_id, parts, hashlib.sha256(data).hexdigest(), len(data) - 1)
    assert not exists(aws) and read_record(aws, KEY) is None


def test_abort_leaves_no_open_upload(aws, data):
    up = start_upload(aws, "lora", "style.safetensors", len(data))
    send_part(aws, up, data, 1)
    assert len(open_uploads(aws)) == 1
    abort_upload(aws, up.key, up.upload_id)
    assert open_uploads(aws) == [] and not exists(aws)
    abort_upload(aws, up.key, up.upload_id)  # twice is fine (a retried click)
    with pytest.raises(NotFound, match="style.safetensors"):
        list_parts(aws, up.key, up.upload_id)
    with pytest.raises(NotFound, match="style.safetensors"):
        complete_upload(aws, up.key, up.upload_id, [{"part_number": 1, "etag": "e", "checksum_crc32": "AAAAAA=="}],
                        "0" * 64, len(data))


# -- the page sends the file's first bytes with the start: the type is checked before any part ---------------------
def test_auto_takes_the_folder_from_the_first_bytes_and_the_record_keeps_what_it_is(aws):
    data = safetensors_bytes(KINDS["sdxl-lora"], 8 * MiB + 500)
    head = data[:head_length("xl.safetensors", data[:64 * 1024], len(data))]  # as the page slices it
    assert len(head) < 5000  # the header, not the file
    up = start_upload(aws, "Auto", "xl.safetensors", len(data), head=head)
    assert (up.type, up.key, up.kind, up.base, up.detected) == \
        ("lora", "models/Lora/xl.safetensors", "lora", "sdxl", "a LoRA for SDXL")
    parts = [send_part(aws, up, data, n) for n in (1, 2)]
    complete_upload(aws, up.key, up.upload_id, parts, hashlib.sha256(data).hexdigest(), len(data),
                    kind=up.kind, base=up.base)
    record = read_record(aws, up.key)
    assert (record.type, record.kind, record.base) == ("lora", "lora", "sdxl")


def test_a_mismatch_or_auto_without_first_bytes_starts_nothing(aws):
    data = safetensors_bytes(KINDS["sdxl-lora"])
    with pytest.raises(Refused, match=r"^xl.safetensors: this file is a LoRA for SDXL, not an SD Checkpoint"):
        start_upload(aws, "SD Checkpoint", "xl.safetensors", len(data), head=data)
    with pytest.raises(Refused, match="choose its type"):
        start_upload(aws, "Auto", "xl.safetensors", len(data))
    with pytest.raises(Refused, match="its header claims"):
        start_upload(aws, "Auto", "xl.safetensors", 100, head=data)  # the size the page says is the file's
    assert open_uploads(aws, "models/") == []
    forced = start_upload(aws, "SD Checkpoint", "xl.safetensors", len(data), head=data, force=True)
    assert forced.key == "models/Stable-diffusion/xl.safetensors" and forced.kind == "lora"
    with pytest.raises(Refused, match="not a base model"):
        complete_upload(aws, forced.key, forced.upload_id, [{"part_number": 1, "etag": "e", "checksum_crc32":
                                                             crc32_b64(b"x")}], "0" * 64, 1, kind="lora", base="sd9")
