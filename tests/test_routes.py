"""The uploader's HTTP routes on the standalone tab: login, the whole flow as the page drives it, refusals as JSON."""

from __future__ import annotations

import base64
import hashlib
import logging
import os

import httpx
import pytest

from aws_extension.core.models.catalog import show_model
from aws_extension.core.models.transfer import MiB, crc32_b64
from model_headers import KINDS, safetensors_bytes
from ui_support import standalone

UPLOADS = "sagemaker/uploads/"
XL_LORA = safetensors_bytes(KINDS["sdxl-lora"])


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30)


def open_uploads(aws) -> list:
    return aws.client("s3").list_multipart_uploads(Bucket=aws.bucket).get("Uploads", [])


@pytest.fixture
def tab_url(aws):
    with standalone() as url:
        yield url


def test_login_is_required_when_the_app_has_auth(aws):
    with standalone(auth=("user", "pass")) as url, client(url) as http:
        start = {"type": "LoRA", "name": "a.safetensors", "size": 10}
        assert http.post(UPLOADS + "start", json=start).status_code == 401
        assert http.post(UPLOADS + "sign", json={}).status_code == 401
        assert http.get("sagemaker/static/sagemaker_uploader.js").status_code == 401
        assert http.post("login", data={"username": "user", "password": "wrong"}).status_code == 400
        assert http.post(UPLOADS + "start", json=start).status_code == 401

        assert http.post("login", data={"username": "user", "password": "pass"}).status_code == 200
        answer = http.post(UPLOADS + "start", json=start)
        assert answer.status_code == 200, answer.text
        assert answer.json()["upload_id"] and answer.json()["key"] == "models/Lora/a.safetensors"
        script = http.get("sagemaker/static/sagemaker_uploader.js")
        assert script.status_code == 200 and "sagemakerUploadFromLaptop" in script.text
        assert [u["UploadId"] for u in open_uploads(aws)] == [answer.json()["upload_id"]]


def test_the_page_flow_through_the_routes(tab_url, aws, caplog):
    """start, sign, PUT to S3, parts, complete; then the same file is skipped; another is aborted."""
    caplog.set_level(logging.DEBUG)
    data = os.urandom(8 * MiB + 1000)
    digest = hashlib.sha256(data).hexdigest()
    with client(tab_url) as http:
        plan = http.post(UPLOADS + "start", json={"type": "LoRA", "name": "style.safetensors", "size": len(data)}).json()
        assert (plan["part_size"], plan["part_count"], plan["parts_done"], plan["resumed"]) == (8 * MiB, 2, [], False)
        parts = []
        for number in (1, 2):
            chunk = data[(number - 1) * plan["part_size"]: number * plan["part_size"]]
            checksum = crc32_b64(chunk)
            signed = http.post(UPLOADS + "sign", json={"key": plan["key"], "upload_id": plan["upload_id"],
                                                      "part_number": number, "checksum_crc32": checksum}).json()
            assert signed["headers"] == {"x-amz-checksum-crc32": checksum}
            put = httpx.put(signed["url"], content=chunk, headers=signed["headers"])
            assert put.status_code == 200
            parts.append({"part_number": number, "etag": put.headers["ETag"], "checksum_crc32": checksum})
        listed = http.post(UPLOADS + "parts", json={"key": plan["key"], "upload_id": plan["upload_id"]}).json()
        assert [p["part_number"] for p in listed["parts"]] == [1, 2]

        done = http.post(UPLOADS + "complete", json={"key": plan["key"], "upload_id": plan["upload_id"],
                                                     "parts": parts, "sha256": digest, "size": len(data)})
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["sha256"], done.json()["size"]) == ("uploaded", digest, len(data))
        assert show_model(aws, "lora", "style.safetensors").sha256 == digest

        # The same name and size again: the page is asked for the sha256 first, and nothing is started.
        ask = {"type": "lora", "name": "style.safetensors", "size": len(data)}
        probe = http.post(UPLOADS + "start", json=ask).json()
        assert probe["check_sha256"] is True and not probe.get("upload_id") and open_uploads(aws) == []
        again = http.post(UPLOADS + "start", json={**ask, "sha256": digest}).json()
        assert again["skipped"] is True and open_uploads(aws) == []
        other = http.post(UPLOADS + "start", json={**ask, "sha256": "0" * 64}).json()
        assert other["skipped"] is False and other["upload_id"]

        aborted = http.post(UPLOADS + "abort", json={"key": other["key"], "upload_id": other["upload_id"]})
        assert aborted.status_code == 200 and open_uploads(aws) == []
        gone = http.post(UPLOADS + "parts", json={"key": other["key"], "upload_id": other["upload_id"]})
        assert gone.status_code == 404 and "no longer open" in gone.json()["error"]
    ours = [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("sd_webui_sagemaker", "aws_extension",
                                                                               "uvicorn", "gradio", "fastapi")]
    assert not [m for m in ours if "X-Amz-Signature" in m]  # no presigned URL in the server's logs


@pytest.mark.parametrize("step, body, needle", [
    ("sign", {"key": "datasets/x/a.safetensors", "upload_id": "u", "part_number": 1, "checksum_crc32": "AAAAAA=="},
     "is not a model key"),
    ("sign", {"key": "models/Lora/../a.safetensors", "upload_id": "u", "part_number": 1, "checksum_crc32": "AAAAAA=="},
     "not a valid file name"),
    ("sign", {"key": "models/Lora/a.safetensors", "upload_id": "u", "part_number": 0, "checksum_crc32": "AAAAAA=="},
     "outside 1..10000"),
    ("sign", {"key": "models/Lora/a.safetensors", "upload_id": "u", "part_number": 1, "checksum_crc32": "nope"},
     "not a base64 CRC32"),
    ("sign", {"key": "models/Lora/a.safetensors", "upload_id": "u", "part_number": "1", "checksum_crc32": "AAAAAA=="},
     "'part_number' must be a whole number"),
    ("start", {"type": "LoRA", "name": "notes.txt", "size": 10}, "not a model file"),
    ("start", {"type": "LoRA", "name": "a.safetensors"}, "'size' is missing"),
    ("start", {"type": "LoRA", "name": "a.safetensors", "size": 0}, "empty"),
    ("start", {"type": "Nothing", "name": "a.safetensors", "size": 10}, "Unknown model type"),
    ("start", {"type": "SD Checkpoint", "name": "a.safetensors", "size": len(XL_LORA),
               "head": base64.b64encode(XL_LORA).decode()}, "a.safetensors: this file is a LoRA for SDXL, not an SD"),
    ("start", {"type": "Auto", "name": "a.safetensors", "size": 10}, "choose its type"),
    ("start", {"type": "Auto", "name": "a.safetensors", "size": 10, "head": "not base64!"}, "in base64"),
    ("complete", {"key": "models/VAE/a.pt", "upload_id": "u", "parts": [], "sha256": "0" * 64, "size": 1},
     "no parts"),
    ("complete", {"key": "models/VAE/a.pt", "upload_id": "u", "parts": [{"part_number": 1}], "sha256": "x", "size": 1},
     "is not a sha256"),
    ("abort", {"key": "models/VAE/a.txt", "upload_id": "u"}, "not a model file"),
])
def test_bad_input_is_refused_with_a_sentence(tab_url, aws, step, body, needle):
    with client(tab_url) as http:
        answer = http.post(UPLOADS + step, json=body)
    assert answer.status_code == 400, answer.text
    assert needle in answer.json()["error"] and "Traceback" not in answer.text
    assert open_uploads(aws) == []


def test_unreadable_bodies_and_unexpected_failures_answer_json(tab_url, aws, monkeypatch):
    with client(tab_url) as http:
        for content in (b"not json", b"[1, 2]"):
            answer = http.post(UPLOADS + "start", content=content, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and answer.json() == {"error": "The request body must be a JSON object."}
        unknown = http.post(UPLOADS + "complete", json={
            "key": "models/VAE/a.pt", "upload_id": "no-such-upload", "sha256": "0" * 64, "size": 1,
            "parts": [{"part_number": 1, "etag": '"e"', "checksum_crc32": "AAAAAA=="}]})
        assert unknown.status_code == 404 and "no longer open" in unknown.json()["error"]

        import aws_extension.core.models.browser as browser

        def boom(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(browser, "start_upload", boom)
        answer = http.post(UPLOADS + "start", json={"type": "vae", "name": "a.pt", "size": 10})
        assert answer.status_code == 500 and "Traceback" not in answer.text
        assert answer.json()["error"].startswith("unexpected RuntimeError")
