"""Datasets: only real images and their captions, unique names, all-or-nothing creation, delete, previews."""

from __future__ import annotations

import hashlib
import json

import botocore.exceptions as bex
import pytest
from PIL import Image

from aws_extension.core.datasets import (
    create_dataset, delete_dataset, read_file, list_datasets, show_dataset,
)
from aws_extension.core.errors import NotFound, Refused, TransferError


def image(path, fmt, color=(200, 30, 30), size=(32, 24)):
    Image.new("RGB", size, color).save(path, fmt)
    return str(path)


def keys(aws, prefix="datasets/"):
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def body(aws, key) -> bytes:
    return aws.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read()


@pytest.fixture
def files(tmp_path):
    a = image(tmp_path / "cat.png", "PNG")
    b = image(tmp_path / "dog.jpg", "JPEG", (10, 120, 250))
    c = image(tmp_path / "fox.webp", "WEBP", (0, 200, 0))
    (tmp_path / "cat.txt").write_text("a red cat, sitting")
    (tmp_path / "dog.caption").write_text("a blue dog")
    return [a, b, c, str(tmp_path / "cat.txt"), str(tmp_path / "dog.caption")]


def test_create_list_show(aws, files):
    seen = []
    made = create_dataset(aws, "pets-v1", files, "my pets", progress=lambda d, t, n: seen.append((d, t, n)))
    assert made.s3_uri == f"s3://{aws.bucket}/datasets/pets-v1/"
    assert (made.image_count, made.caption_count, len(made.files)) == (3, 2, 5)
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5] and {t for _, t, _ in seen} == {5}

    assert keys(aws) == sorted(f"datasets/pets-v1/{n}" for n in
                               ("cat.png", "dog.jpg", "fox.webp", "cat.txt", "dog.caption", "dataset.json"))
    for path in files:
        name = path.rsplit("/", 1)[-1]
        data = open(path, "rb").read()
        assert body(aws, f"datasets/pets-v1/{name}") == data
        entry = next(f for f in made.files if f.name == name)
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.size == len(data)
    head = aws.client("s3").head_object(Bucket=aws.bucket, Key="datasets/pets-v1/dog.jpg")
    assert head["ContentType"] == "image/jpeg"

    manifest = json.loads(body(aws, "datasets/pets-v1/dataset.json"))
    assert manifest["name"] == "pets-v1" and manifest["description"] == "my pets" and len(manifest["files"]) == 5

    shown = show_dataset(aws, "pets-v1")
    assert shown.s3_uri == made.s3_uri and shown.description == "my pets"
    assert shown.total_size == sum(len(open(p, "rb").read()) for p in files)
    assert [d.name for d in list_datasets(aws)] == ["pets-v1"]


def test_list_newest_first_and_skips_incomplete(aws, files, monkeypatch):
    import aws_extension.core.datasets as ds

    monkeypatch.setattr(ds, "now_iso", lambda: "2026-01-01T00:00:00+00:00")
    create_dataset(aws, "old", files[:1])
    monkeypatch.setattr(ds, "now_iso", lambda: "2026-06-01T00:00:00+00:00")
    create_dataset(aws, "new", files[1:2])
    # A dataset still being uploaded (no manifest yet) is not listed.
    aws.client("s3").put_object(Bucket=aws.bucket, Key="datasets/partial/a.png", Body=b"x")
    assert [d.name for d in list_datasets(aws)] == ["new", "old"]


def test_bad_files_named_in_one_message_and_nothing_written(aws, files, tmp_path):
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    (tmp_path / "fake.png").write_bytes(b"this is text, not a png")
    good = (tmp_path / "cat.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "lonely.txt").write_text("caption of nothing")
    (tmp_path / "other").mkdir()
    dup = image(tmp_path / "other" / "cat.png", "PNG")
    bad = [str(tmp_path / n) for n in ("notes.pdf", "fake.png", "broken.png", "lonely.txt")]
    with pytest.raises(Refused) as err:
        create_dataset(aws, "mixed", files + bad + [dup])
    message = str(err.value)
    for name in ("notes.pdf", "fake.png", "broken.png", "lonely.txt", "cat.png"):
        assert name in message
    assert "cat.txt" not in message and "dog.jpg" not in message
    assert "\n" not in message
    assert keys(aws) == []


def test_truncated_jpeg_refused(aws, tmp_path):
    path = tmp_path / "big.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, "JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(Refused, match="big.jpg"):
        create_dataset(aws, "trunc", [str(path)])
    assert keys(aws) == []


def test_no_files_refused(aws, tmp_path):
    with pytest.raises(Refused, match="no files"):
        create_dataset(aws, "empty", [])
    with pytest.raises(Refused, match="missing.png"):
        create_dataset(aws, "empty", [str(tmp_path / "missing.png")])


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "has space", "x" * 65, "é"])
def test_bad_name_refused(aws, files, name):
    with pytest.raises(Refused, match="not valid"):
        create_dataset(aws, name, files)
    assert keys(aws) == []


def test_duplicate_name_refused(aws, files):
    create_dataset(aws, "pets", files)
    before = keys(aws)
    with pytest.raises(Refused, match="already exists"):
        create_dataset(aws, "pets", files[:1])
    assert keys(aws) == before
    # Leftovers without a manifest also hold the name.
    aws.client("s3").put_object(Bucket=aws.bucket, Key="datasets/half/a.png", Body=b"x")
    with pytest.raises(Refused, match="already exists"):
        create_dataset(aws, "half", files)


def test_delete(aws, files):
    create_dataset(aws, "gone", files)
    create_dataset(aws, "gone2", files[:1])  # a name sharing the prefix must survive
    assert delete_dataset(aws, "gone") == 6
    assert keys(aws, "datasets/gone/") == []
    assert keys(aws, "datasets/gone2/") != []
    with pytest.raises(NotFound, match="gone"):
        show_dataset(aws, "gone")
    with pytest.raises(NotFound, match="gone"):
        delete_dataset(aws, "gone")


def test_failing_upload_leaves_nothing(aws, files, monkeypatch):
    s3 = aws.client("s3")
    real = s3.put_object
    calls = {"n": 0}

    def flaky(**kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise bex.ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                                   "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
        return real(**kwargs)

    monkeypatch.setattr(s3, "put_object", flaky)
    with pytest.raises(TransferError) as err:
        create_dataset(aws, "flaky", files)
    message = str(err.value)
    assert "flaky" in message and "removed" in message
    assert any(p.rsplit("/", 1)[-1] in message for p in files)  # names the file that failed
    monkeypatch.setattr(s3, "put_object", real)
    assert keys(aws) == []
    assert list_datasets(aws) == []
    create_dataset(aws, "flaky", files)  # the name is free again


def test_cancel_leaves_nothing(aws, files):
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(TransferError, match="stopped"):
        create_dataset(aws, "halted", files, cancel=stop)
    assert keys(aws) == []


def test_files_read_back_for_previews(aws, files):
    create_dataset(aws, "pets", files)
    assert read_file(aws, "pets", "cat.png") == open(files[0], "rb").read()
    for bad in ("../x.png", "a/b.png", "", "dataset.json"):
        with pytest.raises(Refused):
            read_file(aws, "pets", bad)
    with pytest.raises(NotFound):
        read_file(aws, "pets", "missing.png")
