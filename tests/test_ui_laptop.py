"""'from Laptop' in Chromium: the page sends the picked files straight to S3 (the emulator, or the fault proxy in
front of it) in presigned parts; the WebUI server only presigns. Every result is checked in the cloud.
"""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from aws_extension.core.models.catalog import read_record, show_model
from aws_extension.core.models.transfer import MiB, crc32_b64
from faultproxy import delay_parts, fail_part
from model_headers import write_safetensors
from ui_support import standalone

PART = 8 * MiB
ROWS = "#sagemaker-laptop-progress .sagemaker-upload-row"
FAST_RETRIES = "window.sagemakerUploadRetryDelays = [0, 100, 200, 300];"


# -- fixtures ----------------------------------------------------------------------------------------------------
def open_laptop(page, url: str):
    page.goto(url)
    page.wait_for_function("typeof window.sagemakerUploadFromLaptop === 'function' && !!window.sagemakerHash")
    # a click on the tab before the page has finished wiring itself (a loaded machine) is lost: click until it shows
    for attempt in range(5):
        page.get_by_role("button", name="from Laptop", exact=True).click()
        try:
            page.locator("#sagemaker-laptop-upload").wait_for(state="visible", timeout=4000)
            break
        except PlaywrightTimeoutError:
            assert attempt < 4, "the 'from Laptop' tab never opened"
    page.evaluate(FAST_RETRIES)
    pick_type(page, "SD Checkpoint")  # these tests send random bytes, of no kind a header tells: a type is chosen
    return page


def pick_type(page, label: str) -> None:
    """Choose in the 'Model type' dropdown (Auto by default)."""
    box = page.locator("#sagemaker-laptop-type input")
    box.click()
    page.locator("#sagemaker-laptop-type li.item").filter(has_text=re.compile(rf"^\W*{re.escape(label)}\s*$")).first.click()
    expect(box).to_have_value(label)


@pytest.fixture
def laptop(aws, page):
    """The tab on the emulator's S3 directly; yields the page on 'from Laptop'."""
    with standalone() as url:
        yield open_laptop(page, url)




@pytest.fixture
def laptop_proxy(proxy, aws, page):
    with standalone() as url:
        open_laptop(page, url)
        page.tab_url = url
        yield page


# -- helpers -----------------------------------------------------------------------------------------------------
def model_file(path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def upload(page, paths, timeout: float = 90_000) -> list:
    """Pick the files, click Upload, wait until every file's row has its outcome; the rows' texts."""
    page.set_input_files("#sagemaker-laptop-files", [str(p) for p in paths])
    page.locator("#sagemaker-laptop-upload").click()
    page.wait_for_function(
        "([sel, n]) => { const rows = document.querySelectorAll(sel);"
        " return rows.length === n && Array.from(rows).every(r => r.dataset.state); }",
        arg=[ROWS, len(paths)], timeout=timeout)
    return page.locator(ROWS).all_inner_texts()


def s3_bytes(aws, key: str) -> bytes:
    return aws.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read()


def open_uploads(aws) -> list:
    return aws.client("s3").list_multipart_uploads(Bucket=aws.bucket).get("Uploads", [])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- tests -------------------------------------------------------------------------------------------------------
def test_hashes_in_the_page_match_python(laptop):
    """The page's own SHA-256 (fed piece by piece) and CRC32 agree with hashlib and S3's checksum encoding."""
    for size in (0, 1, 55, 56, 64, 65, 1000, 3 * 65536 + 7):
        data = os.urandom(size)
        got = laptop.evaluate(
            "bytes => { const d = new Uint8Array(bytes); const s = new sagemakerHash.Sha256();"
            " for (let i = 0; i < d.length; i += 1000) s.update(d.subarray(i, i + 1000));"
            " return [s.hex(), sagemakerHash.crc32Base64(d)]; }", list(data))
        assert got == [sha(data), crc32_b64(data)], size


def test_two_files_land_identical_with_their_sha256(laptop, aws, tmp_path):
    big = model_file(tmp_path / "big.safetensors", 2 * PART + 3_000_000)  # three parts: 8 MiB, 8 MiB, 3 MB
    small = model_file(tmp_path / "small.pt", 100_000)
    errors = []
    laptop.on("pageerror", lambda exc: errors.append(str(exc)))
    laptop.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    rows = upload(laptop, [tmp_path / "big.safetensors", tmp_path / "small.pt"])
    assert errors == []  # the click itself raises nothing in the page
    assert rows[0] == f"big.safetensors: done (sha256 {sha(big)})", rows
    assert rows[1] == f"small.pt: done (sha256 {sha(small)})", rows
    for name, data in (("big.safetensors", big), ("small.pt", small)):
        assert s3_bytes(aws, f"models/Stable-diffusion/{name}") == data
        model = show_model(aws, "checkpoint", name)
        assert (model.sha256, model.size, model.source) == (sha(data), len(data), "browser")
    assert open_uploads(aws) == []


def test_failed_cut_and_expired_parts_are_retried(laptop_proxy, proxy, aws, tmp_path):
    page = laptop_proxy
    data = model_file(tmp_path / "style.safetensors", 3 * PART + 4321)  # four parts
    proxy.rules = [fail_part({2}, 500, times=2), fail_part({3}, "cut", times=1), fail_part({1}, 403, times=1)]
    signed = []
    page.on("request", lambda r: signed.append(r.post_data_json["part_number"]) if r.url.endswith("/uploads/sign")
            else None)
    [row] = upload(page, [tmp_path / "style.safetensors"])
    assert row == f"style.safetensors: done (sha256 {sha(data)})"
    assert proxy.parts_failed[2] == 2 and proxy.parts_failed[3] >= 1 and proxy.parts_failed[1] == 1
    assert all(proxy.parts_passed[n] == 1 for n in (1, 2, 3, 4)), proxy.parts_passed
    assert sorted(signed) == [1, 1, 2, 3, 4]  # a 403 (an expired link) is signed again; other failures reuse it
    assert proxy.max_in_flight <= 6
    assert s3_bytes(aws, "models/Stable-diffusion/style.safetensors") == data
    assert show_model(aws, "checkpoint", "style.safetensors").sha256 == sha(data)
    assert open_uploads(aws) == []


def test_six_parts_in_flight_shared_across_files(laptop_proxy, proxy, aws, tmp_path):
    """Eight one-part files over a slow link: six PUTs at a time, whichever file they belong to."""
    page = laptop_proxy
    paths = [tmp_path / f"emb{i}.pt" for i in range(8)]
    blobs = [model_file(p, 50_000 + i) for i, p in enumerate(paths)]
    proxy.rules = [delay_parts(1.0)]
    rows = upload(page, paths)
    assert all(" done (sha256 " in r for r in rows), rows
    assert proxy.max_in_flight == 6
    for p, data in zip(paths, blobs):
        assert show_model(aws, "checkpoint", p.name).sha256 == sha(data)

    proxy.reset_counts()  # the limit is a page setting (for measurements)
    page.evaluate("window.sagemakerUploadConcurrency = 2")
    upload(page, paths[:4])  # identical files: skipped, nothing sent
    assert proxy.max_in_flight == 0
    for p in paths[:4]:
        model_file(p, 60_000)
    rows = upload(page, paths[:4])
    assert all(" done (sha256 " in r for r in rows), rows
    assert proxy.max_in_flight == 2


def test_reload_midway_resumes_sending_only_missing_parts(laptop_proxy, proxy, aws, tmp_path):
    page = laptop_proxy
    path = tmp_path / "resume.ckpt"
    data = model_file(path, 4 * PART + 999)  # five parts
    proxy.rules = [fail_part({3, 4, 5}, 500)]  # S3 keeps failing after two parts
    [row] = upload(page, [path])
    assert row.startswith("resume.ckpt: failed: part ") and "500 InternalError" in row, row
    assert "stays open in the cloud" in row and "resume" in row
    assert dict(proxy.parts_passed) == {1: 1, 2: 1}
    assert len(open_uploads(aws)) == 1  # left open: resumable

    page.reload()  # a new page knows nothing of the old one: the cloud remembers
    proxy.rules = []
    proxy.reset_counts()
    open_laptop(page, page.tab_url)
    [row] = upload(page, [path])
    assert row == f"resume.ckpt: resumed, 2 parts already in the cloud — done (sha256 {sha(data)})", row
    assert dict(proxy.parts_passed) == {3: 1, 4: 1, 5: 1}  # only the missing parts were sent
    assert s3_bytes(aws, "models/Stable-diffusion/resume.ckpt") == data
    assert show_model(aws, "checkpoint", "resume.ckpt").sha256 == sha(data)
    assert open_uploads(aws) == []


def test_same_file_again_is_skipped_and_a_changed_one_is_not(laptop_proxy, proxy, aws, tmp_path):
    page = laptop_proxy
    data = model_file(tmp_path / "vae.pt", PART + 5)
    [row] = upload(page, [tmp_path / "vae.pt"])
    assert row.startswith("vae.pt: done"), row
    assert sum(proxy.parts_passed.values()) == 2

    proxy.reset_counts()
    [row] = upload(page, [tmp_path / "vae.pt"])
    assert row == "vae.pt: skipped (already in the cloud)"
    assert sum(proxy.parts_passed.values()) == 0 and open_uploads(aws) == []

    # Same name and size, other bytes: uploaded again, and the record now has the new file's sha256.
    other = tmp_path / "other"
    other.mkdir()
    changed = model_file(other / "vae.pt", len(data))
    [row] = upload(page, [other / "vae.pt"])
    assert row == f"vae.pt: done (sha256 {sha(changed)})", row
    assert sum(proxy.parts_passed.values()) == 2
    assert s3_bytes(aws, "models/Stable-diffusion/vae.pt") == changed
    assert show_model(aws, "checkpoint", "vae.pt").sha256 == sha(changed)


# The WebUI's own gradioApp() (A1111 1.10, script.js): the uploader finds its elements through it there.
WEBUI_GRADIO_APP = """window.gradioApp = function () {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length == 0 ? document : elems[0];
    if (elem !== document) { elem.getElementById = function (id) { return document.getElementById(id); }; }
    return elem.shadowRoot ? elem.shadowRoot : elem;
};"""


def test_refused_file_and_nothing_picked_say_why(laptop, aws, tmp_path):
    laptop.evaluate(WEBUI_GRADIO_APP)
    laptop.locator("#sagemaker-laptop-upload").click()
    laptop.locator("#sagemaker-laptop-progress").get_by_text("Pick one or more model files first.").wait_for()
    model_file(tmp_path / "notes.txt", 10)
    model_file(tmp_path / "lora.safetensors", 1000)
    rows = upload(laptop, [tmp_path / "notes.txt", tmp_path / "lora.safetensors"])
    assert re.match(r"notes\.txt: failed: .*not a model file", rows[0]), rows
    assert rows[1].startswith("lora.safetensors: done"), rows
    assert open_uploads(aws) == []


def test_auto_reads_the_type_from_the_first_bytes_and_a_mismatch_needs_the_checkbox(laptop, aws, tmp_path):
    """The page sends the file's header with the start: Auto files it where it belongs; a type that does not match
    is refused before any part, unless 'Upload even if the type does not match' is ticked."""
    data = write_safetensors(tmp_path / "xl.safetensors", "sdxl-lora", size=PART + 1000)
    pick_type(laptop, "Auto")
    [row] = upload(laptop, [tmp_path / "xl.safetensors"])
    assert row == f"xl.safetensors: a LoRA for SDXL — done (sha256 {sha(data)})", row
    assert s3_bytes(aws, "models/Lora/xl.safetensors") == data
    record = read_record(aws, "models/Lora/xl.safetensors")
    assert (record.kind, record.base) == ("lora", "sdxl")

    pick_type(laptop, "SD Checkpoint")
    [row] = upload(laptop, [tmp_path / "xl.safetensors"])
    assert row.startswith("xl.safetensors: failed: xl.safetensors: this file is a LoRA for SDXL, not an SD Checkpoint"), row
    assert open_uploads(aws) == []
    laptop.locator("#sagemaker-laptop-force input").check()
    [row] = upload(laptop, [tmp_path / "xl.safetensors"])
    assert row == f"xl.safetensors: a LoRA for SDXL — done (sha256 {sha(data)})", row
    assert read_record(aws, "models/Stable-diffusion/xl.safetensors").kind == "lora"
