"""The Amazon SageMaker tab in Chromium, clicked as a user clicks it; every result is checked on the page and in
the cloud (the emulator, read through the `aws` fixture's own session).

gradio 3.41: tabs are plain <button>s, text box values live in <textarea> values, a Markdown repeats its elem_id
on its wrapper, dropdown options are `li.item[data-value]` shown while the input has focus.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import sys
import threading
import time
from functools import partial

import pytest
from PIL import Image

from inventory import NOTHING, cloud_inventory
from aws_extension.core.datasets import create_dataset, delete_dataset
from aws_extension.core.endpoints import delete_endpoint
from aws_extension.core.models.catalog import record_key

expect = pytest.importorskip("playwright.sync_api").expect

# the package re-exports the function `deploy`, which hides the module of that name
deploy_module = sys.modules["aws_extension.core.endpoints.deploy"]

ACCOUNT = "123456789012"
DIM = "sagemaker:variant:DesiredInstanceCount"


# -- page helpers ------------------------------------------------------------------------------------------------
def open_tab(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()


def textarea(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea")


def fill(page, elem_id: str, text: str) -> None:
    textarea(page, elem_id).fill(text)


def wait_value(page, elem_id: str, *needles: str, timeout: float = 20_000) -> str:
    """The text box's value once it holds every needle (a failure shows what it held instead)."""
    try:
        page.wait_for_function(
            "([sel, needles]) => { const t = document.querySelector(sel);"
            " return !!t && needles.every(n => t.value.includes(n)); }",
            arg=[f"#{elem_id} textarea", list(needles)], timeout=timeout)
    except Exception:  # noqa: BLE001 - turned into a readable assertion
        held = textarea(page, elem_id).input_value()
        raise AssertionError(f"#{elem_id} never held {needles!r}; it holds {held!r}") from None
    return textarea(page, elem_id).input_value()


def choose(page, elem_id: str, text: str, exact: bool = True) -> None:
    """Pick an option of a gradio 3.41 dropdown: focus its input, click the option."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    options = page.locator(f"#{elem_id} li.item")
    option = options.filter(has_text=re.compile(rf"^\W*{re.escape(text)}\s*$")) if exact else options.filter(has_text=text)
    option.first.click()
    expect(box).to_have_value(text if exact else re.compile(re.escape(text)))


def options(page, elem_id: str) -> list:
    """A dropdown's choices as the user sees them when opening it."""
    page.locator(f"#{elem_id} input").click()
    items = page.locator(f"#{elem_id} li.item")
    values = items.evaluate_all("els => els.map(e => e.dataset.value)")
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id} input").blur()
    return values


def wait_idle(page, timeout: float = 20_000) -> None:
    """Until no output shows gradio's pending/generating tracker: every queued click has been answered.

    Checks that read a text box must not be satisfied by an older answer, and no click may still be queued when
    the test ends (gradio 3.41 never closes the websocket of an event still queued when it shuts down).
    """
    page.wait_for_function(
        "() => ![...document.querySelectorAll('div.wrap.default, div.wrap.center')]"
        ".some(e => !e.classList.contains('hide') && !e.innerText.includes('Error'))", timeout=timeout)


def connection_line(page):
    return page.locator("#sagemaker-connection").last  # the Markdown's elem_id is on its wrapper too


# -- cloud helpers -----------------------------------------------------------------------------------------------
def keys(aws, prefix: str) -> list:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def record(aws, key: str) -> dict:
    return json.loads(aws.client("s3").get_object(Bucket=aws.bucket, Key=record_key(key))["Body"].read())


def model_file(path, size: int, seed: int) -> str:
    """A few MB of bytes that differ per file (so every sha256 differs)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB
    data = (block * (size // len(block) + 1))[:size]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def scalable_targets(aws, name: str) -> list:
    return aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{name}/variant/AllTraffic"])["ScalableTargets"]


def refresh_until(page, elem_id: str, button: str, pattern: str, seconds: float = 20.0) -> str:
    """Click Refresh until one of the dropdown's choices shows `pattern` (the emulator flips Creating to InService
    by itself); that choice. Refreshing chooses nothing by itself."""
    deadline = time.monotonic() + seconds
    while True:
        page.click(f"#{button}")
        wait_idle(page)
        listed = options(page, elem_id)
        found = [choice for choice in listed if re.search(pattern, choice)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"#{elem_id} never listed {pattern!r}; it lists {listed!r}"
        page.wait_for_timeout(250)  # the next poll, as a user would click again


@pytest.fixture(autouse=True)
def settled(tab):
    """Each test starts once the page's own load event has answered, and ends once its last click has."""
    expect(connection_line(tab)).to_contain_text("Account ")
    wait_idle(tab)
    yield
    wait_idle(tab)


@pytest.fixture
def fast_endpoints(monkeypatch):
    """Deploy's watcher polls often here, and none outlives its test."""
    monkeypatch.setattr(deploy_module, "POLL_SECONDS", 0.1)
    yield
    for thread in deploy_module.watchers():
        thread.join(timeout=15)


@pytest.fixture
def http_files(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- 1. connection -----------------------------------------------------------------------------------------------
def test_connection_line_and_set_up_recreates_a_missing_bucket(tab, aws):
    line = connection_line(tab)
    expect(line).to_contain_text(f"Account {ACCOUNT}")
    expect(line).to_contain_text("region us-east-1")
    expect(line).to_contain_text(f"bucket {aws.bucket} (ready)")

    s3 = aws.client("s3")
    for key in keys(aws, ""):
        s3.delete_object(Bucket=aws.bucket, Key=key)
    s3.delete_bucket(Bucket=aws.bucket)

    tab.click("#sagemaker-connection-refresh")
    expect(line).to_contain_text(f"bucket {aws.bucket} (missing")
    assert "Set up" in line.inner_text()

    tab.click("#sagemaker-setup")
    expect(line).to_contain_text(f"Bucket {aws.bucket} created")
    expect(line).to_contain_text(f"bucket {aws.bucket} (ready)")
    s3.head_bucket(Bucket=aws.bucket)  # really there again
    assert s3.get_bucket_cors(Bucket=aws.bucket)["CORSRules"]


# -- 2. from WebUI -----------------------------------------------------------------------------------------------
def test_upload_from_webui_paths(tab, aws, tmp_path):
    models = tmp_path / "models"
    sums = {
        "lora-a.safetensors": model_file(models / "lora-a.safetensors", 3_000_000, 1),
        "lora-b.safetensors": model_file(models / "lora-b.safetensors", 1_500_000, 2),
        "base.safetensors": model_file(models / "base.safetensors", 2_000_000, 3),
    }
    lora = [str(models / "lora-a.safetensors"), str(models / "lora-b.safetensors")]
    checkpoint = str(models / "base.safetensors")

    fill(tab, "sagemaker-path-lora", "\n".join(lora))
    fill(tab, "sagemaker-path-checkpoint", checkpoint)
    tab.click("#sagemaker-webui-upload")
    text = wait_value(tab, "sagemaker-webui-result", *(f"sha256 {s}" for s in sums.values()))
    lines = text.splitlines()
    assert len(lines) == 3, text
    assert f"{lora[0]}: uploaded, 3.0 MB, sha256 {sums['lora-a.safetensors']}" in lines
    assert f"{lora[1]}: uploaded, 1.5 MB, sha256 {sums['lora-b.safetensors']}" in lines
    assert f"{checkpoint}: uploaded, 2.0 MB, sha256 {sums['base.safetensors']}" in lines

    for key, name in [("models/Lora/lora-a.safetensors", "lora-a.safetensors"),
                      ("models/Lora/lora-b.safetensors", "lora-b.safetensors"),
                      ("models/Stable-diffusion/base.safetensors", "base.safetensors")]:
        body = aws.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sums[name]
        assert record(aws, key)["sha256"] == sums[name]

    # paths outside the model folder are refused by name, and nothing of them reaches S3
    secret = tmp_path / "secret.safetensors"
    model_file(secret, 100_000, 4)
    fill(tab, "sagemaker-path-checkpoint", "")
    fill(tab, "sagemaker-path-lora", f"/etc/passwd\n{secret}")
    tab.click("#sagemaker-webui-upload")
    text = wait_value(tab, "sagemaker-webui-result", "/etc/passwd: failed", f"{secret}: failed")
    assert "outside the allowed model folders" in text
    assert len(text.splitlines()) == 2, text
    uploaded = ["Lora/lora-a.safetensors", "Lora/lora-b.safetensors", "Stable-diffusion/base.safetensors"]
    assert keys(aws, "models/") == ["models/" + k for k in uploaded]
    assert keys(aws, "records/") == ["records/" + k + ".json" for k in uploaded]


def test_upload_from_webui_auto_and_a_mismatch_forced(tab, aws, tmp_path):
    from model_headers import write_safetensors

    path = tmp_path / "models" / "xl.safetensors"
    digest = hashlib.sha256(write_safetensors(path, "sdxl-lora", size=1_000_000)).hexdigest()
    fill(tab, "sagemaker-path-auto", str(path))  # the first box: each file's header says its type
    tab.click("#sagemaker-webui-upload")
    text = wait_value(tab, "sagemaker-webui-result", f"sha256 {digest}")
    assert text == f"{path}: uploaded (a LoRA for SDXL), 1.0 MB, sha256 {digest}"
    assert record(aws, "models/Lora/xl.safetensors")["base"] == "sdxl"

    fill(tab, "sagemaker-path-auto", "")
    fill(tab, "sagemaker-path-checkpoint", str(path))
    tab.click("#sagemaker-webui-upload")
    text = wait_value(tab, "sagemaker-webui-result", "failed")
    assert text.startswith(f"{path}: failed: this file is a LoRA for SDXL, not an SD Checkpoint"), text
    assert keys(aws, "models/") == ["models/Lora/xl.safetensors"]
    tab.locator("#sagemaker-webui-force input").check()
    tab.click("#sagemaker-webui-upload")
    wait_value(tab, "sagemaker-webui-result", f"{path}: uploaded (a LoRA for SDXL)")
    assert keys(aws, "models/") == ["models/Lora/xl.safetensors", "models/Stable-diffusion/xl.safetensors"]


# -- 3. from URL -------------------------------------------------------------------------------------------------
def test_upload_from_urls(tab, aws, http_files):
    root, base = http_files
    digest = model_file(root / "style.safetensors", 2_500_000, 5)
    good, missing = f"{base}/style.safetensors", f"{base}/missing.safetensors"

    open_tab(tab, "from URL")
    choose(tab, "sagemaker-url-type", "LoRA")
    fill(tab, "sagemaker-url-list", f"{good}, {missing}")
    fill(tab, "sagemaker-url-description", '{"author": "tester", "trigger": "in the style of x"}')
    tab.click("#sagemaker-url-upload")
    text = wait_value(tab, "sagemaker-url-result", f"sha256 {digest}", "404")
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert lines[0] == f"{good}: uploaded, 2.5 MB, sha256 {digest}"
    assert lines[1].startswith(f"{missing}: failed") and "HTTP 404" in lines[1]

    key = "models/Lora/style.safetensors"
    assert record(aws, key)["description"] == {"author": "tester", "trigger": "in the style of x"}
    assert record(aws, key)["sha256"] == digest
    assert keys(aws, "models/") == [key]

    # a description that is not a JSON object: a clear sentence, and no download at all
    model_file(root / "other.safetensors", 100_000, 6)
    fill(tab, "sagemaker-url-list", f"{base}/other.safetensors")
    fill(tab, "sagemaker-url-description", '["not", "an", "object"]')
    tab.click("#sagemaker-url-upload")
    text = wait_value(tab, "sagemaker-url-result", "must be a JSON object")
    assert text.startswith("Error: Models Description must be a JSON object"), text
    assert keys(aws, "models/") == [key]


# -- 4. models in the cloud --------------------------------------------------------------------------------------
def test_models_in_the_cloud_filter_show_delete(tab, aws, tmp_path, http_files):
    from aws_extension.core.models.uploads import upload_paths
    from aws_extension.core.models.urls import upload_urls

    models = tmp_path / "models"
    sum_a = model_file(models / "lora-a.safetensors", 1_200_000, 7)
    sum_ckpt = model_file(models / "base.safetensors", 1_000_000, 8)
    root, base = http_files
    sum_b = model_file(root / "lora-b.safetensors", 1_100_000, 9)
    assert all(r.ok for r in upload_paths(aws, "lora", [str(models / "lora-a.safetensors")], [str(models)]))
    assert all(r.ok for r in upload_paths(aws, "checkpoint", [str(models / "base.safetensors")], [str(models)]))
    assert all(r.ok for r in upload_urls(aws, "lora", f"{base}/lora-b.safetensors", '{"author": "me"}',
                                         allow_private=True))

    tab.reload()  # the list is filled as the page opens: no Refresh needed
    tab.wait_for_selector("#sagemaker-connection")
    open_tab(tab, "Models in the Cloud")
    chosen = tab.locator("#sagemaker-cloud-models input")
    wait_value(tab, "sagemaker-cloud-details", "3 model(s) in the cloud.")
    everything = options(tab, "sagemaker-cloud-models")
    assert sorted(c.split(" (")[0] for c in everything) == ["base.safetensors", "lora-a.safetensors",
                                                             "lora-b.safetensors"]
    expect(chosen).to_have_value("")  # listed, nothing chosen: no Delete acts on what the user did not pick
    tab.keyboard.press("Escape")

    choose(tab, "sagemaker-cloud-type", "LoRA")
    wait_value(tab, "sagemaker-cloud-details", "2 model(s) in the cloud.")  # the type's own change event lists it
    expect(chosen).to_have_value("")
    wait_idle(tab)
    tab.click("#sagemaker-cloud-refresh")
    wait_idle(tab)
    loras = options(tab, "sagemaker-cloud-models")
    assert sorted(c.split(" (")[0] for c in loras) == ["lora-a.safetensors", "lora-b.safetensors"]
    assert all(re.search(r"\(LoRA, 1\.\d MB, \d{4}-\d\d-\d\dT", c) for c in loras), loras

    choose(tab, "sagemaker-cloud-models", "lora-b.safetensors", exact=False)
    details = wait_value(tab, "sagemaker-cloud-details", f"sha256: {sum_b}")
    assert f"s3://{aws.bucket}/models/Lora/lora-b.safetensors" in details
    assert 'description: {"author": "me"}' in details
    choose(tab, "sagemaker-cloud-models", "lora-a.safetensors", exact=False)
    details = wait_value(tab, "sagemaker-cloud-details", f"sha256: {sum_a}")
    assert "description: (none)" in details

    asked = []
    tab.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))  # "no"
    tab.click("#sagemaker-cloud-delete")
    wait_value(tab, "sagemaker-cloud-details", "Not deleted.")
    assert asked and asked[0].startswith("Delete lora-a.safetensors (LoRA, ") and "with its record?" in asked[0]
    assert "models/Lora/lora-a.safetensors" in keys(aws, "models/Lora/")
    tab.once("dialog", lambda dialog: dialog.accept())  # "yes"
    tab.click("#sagemaker-cloud-delete")
    wait_value(tab, "sagemaker-cloud-details", "Deleted lora-a.safetensors.")
    expect(chosen).to_have_value("")  # nothing chosen: a second click deletes nothing
    assert keys(aws, "models/Lora/") == ["models/Lora/lora-b.safetensors"]
    assert keys(aws, "records/Lora/") == ["records/Lora/lora-b.safetensors.json"]
    assert [c.split(" (")[0] for c in options(tab, "sagemaker-cloud-models")] == ["lora-b.safetensors"]
    tab.click("#sagemaker-cloud-delete")
    wait_value(tab, "sagemaker-cloud-details", "Choose a model first.")
    assert sum_ckpt and keys(aws, "models/Stable-diffusion/") == ["models/Stable-diffusion/base.safetensors"]


# -- 5. deploy with defaults -------------------------------------------------------------------------------------
def test_deploy_defaults_list_autoscaling_delete(tab, aws, emulator, fast_endpoints):
    emulator.creating_seconds = 2.0
    tab.click("#sagemaker-deploy")
    text = wait_value(tab, "sagemaker-deploy-result", "Endpoint deployment started")
    name = re.search(r"Endpoint deployment started: (esd-async-[a-z0-9]{5}) \(Creating\)", text).group(1)
    # AWS starts it with one instance; the deploy's watcher attaches the scaling (to zero) once it is InService
    assert text.endswith("Autoscaling will be attached once it is InService; until then it runs "
                         "1 × ml.g5.2xlarge (~$1.52/h)."), text

    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d"
    refresh_until(tab, "sagemaker-endpoints", "sagemaker-endpoints-refresh",
                  rf"^{name} \((Creating|InService), {stamp}\)")
    shown = refresh_until(tab, "sagemaker-endpoints", "sagemaker-endpoints-refresh", rf"^{name} \(InService, {stamp}\)")
    assert "ml.g5.2xlarge" in shown
    # a listing that sees it InService attaches the autoscaling (the flip can come just after that listing began)
    shown = refresh_until(tab, "sagemaker-endpoints", "sagemaker-endpoints-refresh", rf"^{name} \(InService, ")

    config = aws.client("sagemaker").describe_endpoint_config(EndpointConfigName=name)
    variant = config["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g5.2xlarge", 1)
    assert "AsyncInferenceConfig" in config
    targets = scalable_targets(aws, name)
    assert [(t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(DIM, 0, 1)]

    expect(tab.locator("#sagemaker-endpoints input")).to_have_value("")  # listed, but nothing chosen to delete
    choose(tab, "sagemaker-endpoints", shown)
    asked = []
    tab.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    tab.click("#sagemaker-endpoint-delete")
    wait_value(tab, "sagemaker-endpoint-result", f"Endpoint delete completed: {name}")
    assert asked == [f"Delete endpoint {shown} and everything billable with it (its config, model and autoscaling)?"]
    expect(tab.locator("#sagemaker-endpoints input")).to_have_value("")
    assert cloud_inventory(aws.client) == NOTHING


def test_deploy_form_says_what_it_makes_and_locks_what_it_would_ignore(tab):
    # the defaults line names the type, the price while running and the scaling (from the core's own defaults)
    tab.get_by_text("Defaults: Async, ml.g5.2xlarge (~$1.52/h while an instance runs), autoscaling 0–1 instances: "
                    "it scales to zero when idle.").wait_for()
    # result boxes say what they show
    for elem_id, label in (("sagemaker-deploy-result", "Deploy result"), ("sagemaker-endpoint-result", "Endpoint result"),
                           ("sagemaker-webui-result", "Upload result"), ("sagemaker-url-result", "URL upload result"),
                           ("sagemaker-dataset-result", "Dataset result")):
        assert tab.locator(f"#{elem_id} label").first.inner_text().strip() == label
    tab.locator("#sagemaker-advanced label").click()
    boxes = [tab.locator("#sagemaker-min-instances input"), tab.locator("#sagemaker-max-instances input")]
    expect(boxes[1]).to_be_visible()
    assert tab.locator("#sagemaker-autoscaling label").bounding_box()["y"] < boxes[0].bounding_box()["y"] < \
        boxes[1].bounding_box()["y"]  # the switch, then min, then max
    tab.locator("#sagemaker-autoscaling label").click()  # off: one instance, min and max would be ignored
    for box in boxes:
        expect(box).to_be_disabled()
    tab.locator("#sagemaker-autoscaling label").click()
    for box in boxes:
        expect(box).to_be_enabled()


# -- 6. deploy with the advanced configuration -------------------------------------------------------------------
def test_deploy_advanced_configuration(tab, aws, fast_endpoints):
    aws.client("s3").put_object(Bucket=aws.bucket, Key="models/Stable-diffusion/sd15.safetensors", Body=b"x" * 10)
    tab.locator("#sagemaker-advanced label").click()
    expect(tab.locator("#sagemaker-endpoint-name textarea")).to_be_visible()
    expect(tab.locator("#sagemaker-preload-checkpoint input")).to_have_value("None")  # by default nothing preloads
    wait_idle(tab)
    assert options(tab, "sagemaker-preload-checkpoint") == ["None", "sd15.safetensors"]  # the cloud's checkpoints

    fill(tab, "sagemaker-endpoint-name", "bad_name")
    tab.click("#sagemaker-deploy")
    text = wait_value(tab, "sagemaker-deploy-result", "bad_name")
    assert text.startswith("Error: Cannot deploy endpoint 'bad_name'") and "letters, digits and hyphens" in text, text
    assert cloud_inventory(aws.client) == NOTHING

    fill(tab, "sagemaker-endpoint-name", "my-realtime-sd")
    tab.locator("#sagemaker-endpoint-type label", has_text="Real-time").click()
    expect(tab.locator("#sagemaker-min-instances input")).to_have_value("1")  # real-time cannot scale to zero
    choose(tab, "sagemaker-instance-type", "ml.g5.xlarge")
    choose(tab, "sagemaker-max-instances", "3")
    choose(tab, "sagemaker-min-instances", "1")
    choose(tab, "sagemaker-preload-checkpoint", "sd15.safetensors")
    tab.click("#sagemaker-deploy")
    wait_value(tab, "sagemaker-deploy-result", "Endpoint deployment started: my-realtime-sd")

    sm = aws.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName="my-realtime-sd")
    variant = config["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g5.xlarge", 1)
    assert "AsyncInferenceConfig" not in config
    arn = sm.describe_endpoint(EndpointName="my-realtime-sd")["EndpointArn"]
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert tags["sd-webui-sagemaker:managed"] == "true"
    assert tags["sd-webui-sagemaker:type"] == "real-time"
    assert tags["sd-webui-sagemaker:scaling"] == "enabled=true min=1 max=3"
    env = sm.describe_model(ModelName="my-realtime-sd")["PrimaryContainer"]["Environment"]
    assert env["SD_SAGEMAKER_PRELOAD_CHECKPOINT"] == f"s3://{aws.bucket}/models/Stable-diffusion/sd15.safetensors"
    assert (env["SD_SAGEMAKER_ENDPOINT_TYPE"], env["SD_SAGEMAKER_INSTANCE_TYPE"]) == ("real-time", "ml.g5.xlarge")

    refresh_until(tab, "sagemaker-endpoints", "sagemaker-endpoints-refresh", r"^my-realtime-sd \(InService, ")
    refresh_until(tab, "sagemaker-endpoints", "sagemaker-endpoints-refresh", r"^my-realtime-sd \(InService, ")
    targets = scalable_targets(aws, "my-realtime-sd")
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 3)]
    delete_endpoint(aws, "my-realtime-sd")


# -- 7. datasets -------------------------------------------------------------------------------------------------
def test_dataset_create_browse_delete(tab, aws, tmp_path):
    files = tmp_path / "upload"
    files.mkdir()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(files / "cat.png", "PNG")
    Image.new("RGB", (32, 48), (10, 120, 250)).save(files / "dog.png", "PNG")
    (files / "cat.txt").write_text("a red cat, sitting")
    (files / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    valid = [str(files / n) for n in ("cat.png", "dog.png", "cat.txt")]
    file_box = tab.locator("#sagemaker-dataset-files")

    tab.set_input_files("#sagemaker-dataset-files input[type=file]", valid + [str(files / "notes.pdf")])
    expect(file_box).to_contain_text("notes.pdf")
    fill(tab, "sagemaker-dataset-name", "pets-v1")
    fill(tab, "sagemaker-dataset-description", "my pets, for a LoRA")
    tab.click("#sagemaker-dataset-create")
    text = wait_value(tab, "sagemaker-dataset-result", "notes.pdf")
    assert text.startswith("Error: Dataset pets-v1 not created") and "notes.pdf (not an image or a caption)" in text
    assert keys(aws, "datasets/") == []

    file_box.get_by_label("Clear").click()
    tab.set_input_files("#sagemaker-dataset-files input[type=file]", valid)
    expect(file_box).to_contain_text("dog.png")
    expect(file_box).not_to_contain_text("notes.pdf")
    tab.click("#sagemaker-dataset-create")
    wait_value(tab, "sagemaker-dataset-result", "Complete Dataset pets-v1 creation")
    assert keys(aws, "datasets/") == ["datasets/pets-v1/cat.png", "datasets/pets-v1/cat.txt",
                                      "datasets/pets-v1/dataset.json", "datasets/pets-v1/dog.png"]

    create_dataset(aws, "old-set", [str(files / "cat.png")], "made earlier")
    open_tab(tab, "Browse")
    tab.click("#sagemaker-datasets-refresh")
    wait_value(tab, "sagemaker-dataset-about", "2 dataset(s).")
    assert options(tab, "sagemaker-datasets") == ["old-set", "pets-v1"]
    expect(tab.locator("#sagemaker-datasets input")).to_have_value("")  # nothing chosen for a Delete
    choose(tab, "sagemaker-datasets", "pets-v1")
    wait_value(tab, "sagemaker-dataset-location", f"s3://{aws.bucket}/datasets/pets-v1/")
    about = wait_value(tab, "sagemaker-dataset-about", "my pets, for a LoRA")
    assert "2 images, 1 caption, 242 bytes" in about  # not "1 captions, 0.0 MB"
    gallery = tab.locator("#sagemaker-dataset-preview").last
    expect(gallery.locator("img")).to_have_count(2)
    # each image with the caption a trainer reads beside it, at its own size (48x32 is not blown up to the cell)
    expect(gallery).to_contain_text("cat.png: a red cat, sitting")
    expect(gallery).to_contain_text("dog.png (no caption)")
    assert set(gallery.locator("img").evaluate_all("els => els.map(e => getComputedStyle(e).objectFit)")) == \
        {"scale-down"}
    assert "X-Amz-Signature" not in tab.content()
    assert "X-Amz-Signature" not in json.dumps(gallery.locator("img").evaluate_all("els => els.map(e => e.src)"))

    tab.once("dialog", lambda dialog: dialog.accept())  # "Delete dataset pets-v1 and all its files?"
    tab.click("#sagemaker-dataset-delete")
    wait_value(tab, "sagemaker-dataset-about", "Deleted dataset pets-v1.")
    expect(tab.locator("#sagemaker-datasets input")).to_have_value("")
    expect(textarea(tab, "sagemaker-dataset-location")).to_have_value("")
    expect(gallery.locator("img")).to_have_count(0)
    assert keys(aws, "datasets/") == ["datasets/old-set/cat.png", "datasets/old-set/dataset.json"]
    assert options(tab, "sagemaker-datasets") == ["old-set"]

    # deleted behind the tab's back: Delete says so, and the message stays
    choose(tab, "sagemaker-datasets", "old-set")
    wait_value(tab, "sagemaker-dataset-location", "datasets/old-set/")
    delete_dataset(aws, "old-set")
    tab.once("dialog", lambda dialog: dialog.accept())
    tab.click("#sagemaker-dataset-delete")
    wait_value(tab, "sagemaker-dataset-about", "Error: No dataset named 'old-set'")


# -- 8. failures are text ----------------------------------------------------------------------------------------
def test_missing_credentials_are_reported_as_text(tab, aws, monkeypatch):
    saved = {n: os.environ[n] for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait for an instance role that is not there
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    tab.click("#sagemaker-endpoints-refresh")
    text = wait_value(tab, "sagemaker-endpoint-result", "credentials")
    assert text.startswith("Error: No AWS credentials found"), text

    tab.click("#sagemaker-connection-refresh")
    expect(connection_line(tab)).to_contain_text("Not connected")
    expect(connection_line(tab)).to_contain_text("credentials")

    # keys back (as after `aws configure`): the next click works, no restart needed
    for name, value in saved.items():
        monkeypatch.setenv(name, value)
    tab.click("#sagemaker-endpoints-refresh")
    wait_value(tab, "sagemaker-endpoint-result", "No endpoints yet.")
    tab.click("#sagemaker-connection-refresh")
    expect(connection_line(tab)).to_contain_text(f"bucket {aws.bucket} (ready)")
