"""Uploads from the machine's disk: parallel parts, retries, resume, skip identical, refusals, cleanup."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import weakref

import pytest

from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.core.errors import Interrupted, Refused, TransferError
from aws_extension.core.models import transfer
from aws_extension.core.models.catalog import read_record, show_model
from aws_extension.core.models.transfer import MiB, ObjectWriter
from aws_extension.core.models.uploads import expand_paths, upload_paths
from faultproxy import fail_part, s3_error
from model_headers import state_dict, webui_embedding, write_safetensors, write_torch

PART = 8 * MiB




@pytest.fixture
def s3aws(proxy) -> Aws:
    """A session whose S3 traffic goes through the fault proxy; two attempts per request keep failures quick."""
    aws = Aws(Settings.resolve(concurrency=3, max_attempts=2))
    setup(aws)
    return aws


def make_file(path, size: int, seed: int = 1) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:]
    path.write_bytes(data)
    return data


def s3_bytes(aws: Aws, key: str) -> bytes:
    return aws.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read()


def open_uploads(aws: Aws) -> list:
    return aws.client("s3").list_multipart_uploads(Bucket=aws.bucket).get("Uploads", [])


def test_multipart_upload_lands_identical_with_record(s3aws, proxy, tmp_path):
    data = make_file(tmp_path / "model.safetensors", 3 * PART + 12345)
    seen = []
    [result] = upload_paths(s3aws, "checkpoint", [str(tmp_path / "model.safetensors")], progress=seen.append)
    assert result.status == "uploaded" and result.parts_sent == 4, result.error
    assert s3_bytes(s3aws, "models/Stable-diffusion/model.safetensors") == data
    model = show_model(s3aws, "checkpoint", "model.safetensors")
    assert model.sha256 == hashlib.sha256(data).hexdigest() == result.sha256
    assert model.size == len(data)
    assert seen[-1].state == "done" and seen[-1].done == len(data)
    assert 1 < proxy.max_in_flight <= 3  # parallel, and never more parts in memory than the concurrency


def test_failed_and_cut_parts_are_retried(s3aws, proxy, tmp_path):
    data = make_file(tmp_path / "lora.safetensors", 3 * PART)
    proxy.rules = [fail_part({2}, 500, times=1), fail_part({3}, "cut", times=1)]
    [result] = upload_paths(s3aws, "lora", [str(tmp_path / "lora.safetensors")])
    assert result.status == "uploaded", result.error
    assert proxy.parts_failed[2] == 1 and proxy.parts_failed[3] == 1
    assert s3_bytes(s3aws, "models/Lora/lora.safetensors") == data
    assert open_uploads(s3aws) == []


def test_interrupted_upload_resumes_sending_only_missing_parts(s3aws, proxy, tmp_path):
    path = tmp_path / "big.ckpt"
    data = make_file(path, 5 * PART + 99)
    proxy.rules = [fail_part({4, 5, 6}, "cut")]  # the network goes down for good after three parts
    [first] = upload_paths(s3aws, "checkpoint", [str(path)])
    assert first.status == "interrupted" and "run it again to resume" in first.error
    assert len(open_uploads(s3aws)) == 1  # kept for the resume
    assert show_model_missing(s3aws, "checkpoint", "big.ckpt")

    proxy.rules, passed_before = [], dict(proxy.parts_passed)
    proxy.reset_counts()
    [second] = upload_paths(s3aws, "checkpoint", [str(path)])
    assert second.status == "resumed"
    assert second.parts_reused == sum(1 for n in (1, 2, 3) if passed_before.get(n)) == 3
    assert sorted(proxy.parts_passed) == [4, 5, 6]  # only the missing parts travelled again
    assert s3_bytes(s3aws, "models/Stable-diffusion/big.ckpt") == data
    assert show_model(s3aws, "checkpoint", "big.ckpt").sha256 == hashlib.sha256(data).hexdigest()
    assert open_uploads(s3aws) == []


def show_model_missing(aws, type_name, name) -> bool:
    try:
        show_model(aws, type_name, name)
    except Exception:
        return True
    return False


def test_resume_resends_parts_whose_bytes_changed(s3aws, proxy, tmp_path):
    path = tmp_path / "v.safetensors"
    data = bytearray(make_file(path, 3 * PART + 5))
    proxy.rules = [fail_part({3, 4}, "cut")]
    assert upload_paths(s3aws, "vae", [str(path)])[0].status == "interrupted"
    data[10] ^= 0xFF  # the file changed in part 1 before the second attempt
    path.write_bytes(bytes(data))
    proxy.rules = []
    proxy.reset_counts()
    [result] = upload_paths(s3aws, "vae", [str(path)])
    assert result.status == "resumed" and result.parts_reused == 1  # part 2 reused, part 1 sent again
    assert sorted(proxy.parts_passed) == [1, 3, 4]
    assert s3_bytes(s3aws, "models/VAE/v.safetensors") == bytes(data)


def test_permanent_failure_leaves_no_open_upload(s3aws, proxy, tmp_path):
    make_file(tmp_path / "denied.safetensors", 3 * PART)
    proxy.rules = [fail_part({2}, 403)]
    [result] = upload_paths(s3aws, "lora", [str(tmp_path / "denied.safetensors")])
    assert result.status == "failed" and "denied.safetensors" in result.error
    assert open_uploads(s3aws) == []
    assert show_model_missing(s3aws, "lora", "denied.safetensors")


def test_unreadable_source_midway_aborts(s3aws, proxy):
    def chunks():
        yield b"a" * PART
        yield b"b" * PART
        raise OSError(5, "Input/output error")

    writer = ObjectWriter(s3aws, "models/Lora/broken.safetensors", "broken.safetensors")
    with pytest.raises(TransferError) as err:
        writer.write(chunks(), None, PART)
    assert "broken.safetensors" in str(err.value) and "Input/output error" in str(err.value)
    assert open_uploads(s3aws) == []


def test_stopping_keeps_the_upload_resumable(s3aws, proxy, tmp_path):
    path = tmp_path / "stop.safetensors"
    data = make_file(path, 4 * PART)
    cancel = threading.Event()

    def stop_after_first_part(p):
        if p.done >= PART:
            cancel.set()

    [result] = upload_paths(s3aws, "lora", [str(path)], progress=stop_after_first_part, cancel=cancel)
    assert result.status == "interrupted" and "stopped" in result.error
    assert len(open_uploads(s3aws)) == 1
    [again] = upload_paths(s3aws, "lora", [str(path)])
    assert again.status == "resumed" and again.parts_reused >= 1
    assert s3_bytes(s3aws, "models/Lora/stop.safetensors") == data


def test_identical_file_is_skipped_without_sending(s3aws, proxy, tmp_path):
    path = tmp_path / "same.safetensors"
    make_file(path, PART + 7)
    assert upload_paths(s3aws, "lora", [str(path)])[0].status == "uploaded"
    proxy.reset_counts()
    [again] = upload_paths(s3aws, "lora", [str(path)])
    assert again.status == "skipped" and sum(proxy.parts_passed.values()) == 0
    make_file(path, PART + 7, seed=2)  # same size, other bytes: uploaded again
    assert upload_paths(s3aws, "lora", [str(path)])[0].status == "uploaded"


def test_an_empty_file_is_refused_and_nothing_is_written(aws, tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    [result] = upload_paths(aws, "checkpoint", [str(tmp_path / "empty.safetensors")])
    assert result.status == "failed" and "empty" in result.error and "empty.safetensors" in result.error
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix="models/")


def test_small_file_single_request(aws, tmp_path):
    (tmp_path / "tiny.pt").write_bytes(b"x" * 1000)
    [result] = upload_paths(aws, "embedding", [str(tmp_path / "tiny.pt")])
    assert result.status == "uploaded" and result.key == "models/embeddings/tiny.pt"
    assert s3_bytes(aws, "models/embeddings/tiny.pt") == b"x" * 1000


def test_paths_outside_allowed_roots_are_refused(aws, tmp_path):
    root = tmp_path / "models" / "Lora"
    root.mkdir(parents=True)
    (root / "ok.safetensors").write_bytes(b"1" * 100)
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"2" * 100)
    (root / "link.safetensors").symlink_to(secret)
    (root / "notes.txt").write_text("not a model")
    typed = [str(root / "ok.safetensors"), str(root / ".." / ".." / "secret.safetensors"),
             str(root / "link.safetensors"), str(root / "notes.txt"), str(root / "missing.ckpt")]
    results = upload_paths(aws, "lora", typed, allowed_roots=[str(tmp_path / "models")])
    by_item = {r.item: r for r in results}
    assert by_item[typed[0]].status == "uploaded"
    assert "outside the allowed model folders" in by_item[typed[1]].error
    assert "outside the allowed model folders" in by_item[typed[2]].error
    assert "not a model file" in by_item[typed[3]].error
    assert "no such file" in by_item[typed[4]].error
    assert [m["Key"] for m in aws.client("s3").list_objects_v2(Bucket=aws.bucket)["Contents"]] == [
        f"hashes/{hashlib.sha256(b'1' * 100).hexdigest()}/Lora/ok.safetensors", "models/Lora/ok.safetensors",
        "records/Lora/ok.safetensors.json"]  # nothing of the refused ones


def test_a_bare_name_is_found_in_the_model_folders_not_the_working_folder(tmp_path, monkeypatch):
    checkpoints, loras = tmp_path / "models" / "Stable-diffusion", tmp_path / "models" / "Lora"
    for folder in (checkpoints, loras):
        folder.mkdir(parents=True)
    (loras / "style.safetensors").write_bytes(b"s")
    elsewhere = tmp_path / "started-here"
    elsewhere.mkdir()
    (elsewhere / "style.safetensors").write_bytes(b"not this one")
    monkeypatch.chdir(elsewhere)  # the folder the WebUI was started from
    [(item, found)] = expand_paths(["style.safetensors"], [str(checkpoints), str(loras)])
    assert (item, found) == ("style.safetensors", (loras / "style.safetensors").resolve())
    [(item, refused)] = expand_paths(["nowhere.safetensors"], [str(checkpoints), str(loras)])
    assert str(refused) == f"nowhere.safetensors: not found in the model folders ({checkpoints}, {loras})."
    # ../ cannot climb out of them
    [(_, climbed)] = expand_paths(["../../started-here/style.safetensors"], [str(loras)])
    assert "outside the allowed model folders" in str(climbed)


def test_a_directory_means_the_model_files_directly_inside(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "b.ckpt").write_bytes(b"b")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.safetensors").write_bytes(b"c")
    found = [os.path.basename(str(t)) for _, t in expand_paths([str(tmp_path)])]
    assert found == ["a.safetensors", "b.ckpt"]


def test_interrupted_error_type(s3aws, proxy):
    proxy.rules = [fail_part({1, 2}, "cut")]
    writer = ObjectWriter(s3aws, "models/Lora/x.safetensors", "x.safetensors")
    with pytest.raises(Interrupted):
        writer.write(iter([b"a" * PART, b"b" * PART]), 2 * PART, PART)


def test_an_expired_session_token_is_named_as_the_credentials_problem(s3aws, proxy, tmp_path):
    """S3 answers a HEAD made with an expired session token 400 with no body: say what that usually means."""
    (tmp_path / "m.safetensors").write_bytes(b"m" * 1000)
    proxy.rules.append(lambda method, path, query: 400 if method == "HEAD" else None)
    [result] = upload_paths(s3aws, "lora", [str(tmp_path / "m.safetensors")])
    assert result.status == "failed"
    assert "session token has expired or is invalid" in result.error and "Bad Request" in result.error


# -- S3 answers that are not the credentials' fault -----------------------------------------------------
def models_in_bucket(aws: Aws) -> list:
    return [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=aws.bucket).get("Contents", [])]


def test_a_part_corrupted_twice_aborts_the_upload_in_words(s3aws, proxy, tmp_path):
    make_file(tmp_path / "model.safetensors", 3 * PART)
    proxy.rules = [fail_part({3}, s3_error(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                                           "header does not match what was computed."))]
    [result] = upload_paths(s3aws, "checkpoint", [str(tmp_path / "model.safetensors")])
    assert result.status == "failed" and proxy.parts_failed[3] == 2  # sent once more, then given up
    assert result.error == (f"{tmp_path / 'model.safetensors'}: part 3 arrived corrupted at S3 twice "
                            "(XAmzContentSHA256Mismatch): the network or a proxy on the way is altering data; "
                            "nothing was kept, try again.")
    assert open_uploads(s3aws) == [] and models_in_bucket(s3aws) == []


@pytest.mark.parametrize("times, status", [(1, "uploaded"), (None, "failed")])
def test_a_small_file_corrupted_on_the_way_is_sent_once_more(s3aws, proxy, tmp_path, times, status):
    (tmp_path / "tiny.pt").write_bytes(b"t" * 5000)
    seen = []

    def corrupt(method, path, query):
        if method == "PUT" and path.endswith("/tiny.pt") and (times is None or len(seen) < times):
            seen.append(path)
            return s3_error(400, "BadDigest", "The SHA256 you specified did not match the calculated checksum.")
        return None

    proxy.rules = [corrupt]
    [result] = upload_paths(s3aws, "embedding", [str(tmp_path / "tiny.pt")])
    assert result.status == status and len(seen) == (times or 2)
    if times:
        assert s3_bytes(s3aws, "models/embeddings/tiny.pt") == b"t" * 5000
    else:
        assert result.reason.startswith("the file arrived corrupted at S3 twice (BadDigest): the network or a proxy")
        assert models_in_bucket(s3aws) == []


def test_a_public_access_block_that_refuses_writes_is_named_first(s3aws, proxy, tmp_path):
    """Ceph refuses every write under BlockPublicAcls with AccessDenied: the credentials are not the first suspect."""
    (tmp_path / "m.safetensors").write_bytes(b"m" * 1000)
    ceph = s3_error(403, "AccessDenied", "Access Denied: the bucket's PublicAccessBlock has BlockPublicAcls set")
    proxy.rules = [lambda method, path, query: ceph if method == "PUT" else None]
    [result] = upload_paths(s3aws, "lora", [str(tmp_path / "m.safetensors")])
    assert result.status == "failed"
    assert result.reason.startswith(f"Access denied while uploading: bucket '{s3aws.bucket}' refuses the write "
                                    "because of its public access block (Access Denied: the bucket's")
    assert "turn BlockPublicAcls off" in result.error and "credentials lack permission" in result.error
    assert models_in_bucket(s3aws) == []


def test_a_refused_write_names_the_bucket_policy_beside_the_credentials(s3aws, proxy, tmp_path):
    make_file(tmp_path / "big.safetensors", 2 * PART)
    proxy.rules = [lambda method, path, query: 403 if method == "POST" and "uploads" in query else None]
    [result] = upload_paths(s3aws, "lora", [str(tmp_path / "big.safetensors")])
    assert result.status == "failed"
    assert (f"either the credentials lack permission to write to bucket '{s3aws.bucket}', or the bucket's "
            "policy or public access block refuses the write") in result.error
    assert models_in_bucket(s3aws) == [] and open_uploads(s3aws) == []


@pytest.mark.parametrize("budget_parts", [1, 2])
def test_parts_held_in_memory_stay_within_the_budget(s3aws, proxy, monkeypatch, budget_parts):
    """Large parts: fewer of them at once (one part: it goes up before the next is read)."""
    monkeypatch.setattr(transfer, "BUFFER_BUDGET", budget_parts * PART)
    proxy.rules = [lambda method, path, query: ("delay", 0.1) if "partNumber" in query else None]
    parts, most = [], [0]

    class Part(bytearray):  # a bytearray that can be watched: alive while anything still refers to it
        pass

    def chunks():
        for i in range(4):
            # the parts still in memory, and the one about to be read
            most[0] = max(most[0], sum(1 for p in parts if p() is not None) + 1)
            part = Part(bytes([i]) * PART)
            parts.append(weakref.ref(part))
            yield part
            del part

    writer = ObjectWriter(s3aws, "models/Lora/held.safetensors", "held.safetensors")
    sent = writer.write(chunks(), 4 * PART, PART)
    assert sent.size == 4 * PART and most[0] == budget_parts and proxy.max_in_flight == 1


def test_a_size_beyond_what_an_upload_can_hold_is_refused_before_any_request(s3aws, proxy):
    writer = ObjectWriter(s3aws, "models/Lora/huge.safetensors", "huge.safetensors")
    with pytest.raises(Refused, match=r"huge.safetensors: the file is 100,000,000,000,000 bytes, more than one "):
        writer.write(iter([b"x" * PART]), 10**14, transfer.part_size_for(10**14))
    assert sum(proxy.parts_passed.values()) == 0 and open_uploads(s3aws) == []


# -- what the file is: its header, read before anything is sent -------------------------------------------------
def cloud_keys(aws) -> list:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_auto_files_each_model_in_its_folder_and_records_what_it_is(aws, tmp_path):
    write_safetensors(tmp_path / "xl.safetensors", "sdxl-lora", size=PART + 99)
    write_torch(tmp_path / "sd15.ckpt", {"state_dict": state_dict("sd1-checkpoint")})
    write_torch(tmp_path / "emb.pt", webui_embedding(768))
    write_safetensors(tmp_path / "canny.safetensors", "sd1-controlnet")
    write_safetensors(tmp_path / "vae.safetensors", "vae")
    results = upload_paths(aws, "auto", [str(tmp_path)])
    assert [(r.name, r.status, r.key, r.detected) for r in results] == [
        ("canny.safetensors", "uploaded", "models/ControlNet/canny.safetensors", "a ControlNet for SD 1.x"),
        ("emb.pt", "uploaded", "models/embeddings/emb.pt", "a textual inversion for SD 1.x"),
        ("sd15.ckpt", "uploaded", "models/Stable-diffusion/sd15.ckpt", "an SD 1.x checkpoint"),
        ("vae.safetensors", "uploaded", "models/VAE/vae.safetensors", "a VAE"),
        ("xl.safetensors", "uploaded", "models/Lora/xl.safetensors", "a LoRA for SDXL"),
    ]
    records = {r.name: read_record(aws, r.key) for r in results}
    assert [(rec.kind, rec.base) for rec in records.values()] == [
        ("controlnet", "sd1"), ("embedding", "sd1"), ("checkpoint", "sd1"), ("vae", None), ("lora", "sdxl")]
    # again under Auto: the header finds the folder, and the cloud holds this very file there
    assert upload_paths(aws, "auto", [str(tmp_path / "xl.safetensors")])[0].status == "skipped"


def test_a_mismatch_is_refused_by_name_and_nothing_is_written_unless_forced(aws, tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, "sdxl-lora")
    [refused] = upload_paths(aws, "checkpoint", [str(path)])
    assert refused.status == "failed" and refused.error.startswith(
        f"{path}: this file is a LoRA for SDXL, not an SD Checkpoint; choose LoRA (or Auto)"), refused.error
    assert cloud_keys(aws) == []
    [forced] = upload_paths(aws, "checkpoint", [str(path)], force=True)
    assert (forced.status, forced.key) == ("uploaded", "models/Stable-diffusion/x.safetensors")
    assert (read_record(aws, forced.key).type, read_record(aws, forced.key).kind) == ("checkpoint", "lora")


def test_auto_refuses_a_lying_header_and_a_file_it_cannot_tell(aws, tmp_path):
    (tmp_path / "lies.safetensors").write_bytes(b"x" * 1000)  # its "length" is 0x7878787878787878
    (tmp_path / "notjson.safetensors").write_bytes(struct.pack("<Q", 12) + b"hello world!" + bytes(50))
    write_safetensors(tmp_path / "plain.safetensors", {"weight": (4, 4)})
    lies, notjson, plain = upload_paths(aws, "auto", [str(tmp_path / n) for n in
                                                      ("lies.safetensors", "notjson.safetensors", "plain.safetensors")])
    assert lies.status == "failed" and lies.type == "auto" and "far more than any model's" in lies.reason
    assert notjson.reason == "its header is not JSON: not a .safetensors file; nothing was uploaded."
    assert plain.reason == "cannot tell what kind of model this is; choose its type instead of Auto."
    assert cloud_keys(aws) == []
