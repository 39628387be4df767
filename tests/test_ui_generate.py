"""The standalone tab's Generate section in Chromium.

First on the plain emulator (no inference server): the refusals, and the waiting states with Stop. Then on an
emulator with its runtime on, where endpoints run the real inference server with tiny random-weight models and the
images come back into the gallery with their infotext.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from model_headers import write_safetensors
from test_ui_tab import choose, connection_line, fill, keys, options, textarea, wait_idle, wait_value
from ui_support import standalone
from aws_extension.core import generation
from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.core.endpoints import EndpointSpec, deploy, wait_until_settled
from aws_extension.core.generation import png_parameters
from aws_extension.local.emulator import ACCOUNT_ID, LOCAL_IMAGE, REGION, LocalEmulator
from aws_extension.core.models.uploads import upload_paths

expect = pytest.importorskip("playwright.sync_api").expect

ROOT = Path(__file__).resolve().parents[1]
RESULT = "sagemaker-gen-result"


# -- page helpers ------------------------------------------------------------------------------------------------
def set_number(page, elem_id: str, value) -> None:
    """A slider's or number's value, typed into its number box as a user does."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")
    expect(box).to_have_value(str(value))


def pick_models(page, endpoint: str, checkpoint: str, vae: str = "None") -> None:
    # the lists are filled as the page opens too: wait for every answer, not only for the text an earlier one left
    page.click("#sagemaker-gen-endpoint-refresh")
    wait_idle(page)
    wait_value(page, RESULT, "InService endpoint(s)")
    choose(page, "sagemaker-gen-endpoint", endpoint)
    page.click("#sagemaker-gen-models-refresh")
    wait_idle(page)
    wait_value(page, RESULT, "checkpoint(s)")
    choose(page, "sagemaker-gen-checkpoint", checkpoint)
    choose(page, "sagemaker-gen-vae", vae)


def thumbnails(page):
    return page.locator("#sagemaker-gen-gallery button.thumbnail-item")


# -- 1. without an inference server --------------------------------------------------------------------------------
@pytest.fixture
def offline_tab(tab, aws, tmp_path):
    """The tab with one (unloadable) checkpoint in the cloud; Generate is the last section of the page."""
    fake = tmp_path / "plain.safetensors"
    fake.write_bytes(os.urandom(1024))
    assert all(r.ok for r in upload_paths(aws, "checkpoint", [str(fake)]))
    expect(connection_line(tab)).to_contain_text("Account ")
    wait_idle(tab)
    yield tab
    wait_idle(tab)


def in_service(aws, name: str, endpoint_type: str) -> str:
    deploy(aws, EndpointSpec(name=name, endpoint_type=endpoint_type, min_instances=1, autoscaling=False),
           background=False)
    assert wait_until_settled(aws, name, timeout=20, poll=0.1) == "InService"
    return name


def test_refusals_show_as_messages(offline_tab, aws, emulator):
    page = offline_tab
    page.click("#sagemaker-gen-run")
    wait_value(page, RESULT, "Choose an endpoint first")

    name = in_service(aws, "gen-refused", "real-time")
    pick_models(page, name, "plain.safetensors")
    # someone redeploys it meanwhile: the list still offers it, the click is refused naming it
    sm = aws.client("sagemaker")
    config = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    emulator.creating_seconds = 600
    sm.delete_endpoint(EndpointName=name)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    fill(page, "sagemaker-gen-prompt", "a cat")
    page.click("#sagemaker-gen-run")
    wait_value(page, RESULT, f"Error: Endpoint '{name}' is Creating: wait until it is InService.")
    expect(thumbnails(page)).to_have_count(0)


class NeverAnswers:
    """SageMaker's async runtime with an endpoint that never answers (answer locations in our bucket)."""

    def __init__(self, bucket: str):
        self.bucket = bucket

    def __call__(self, endpoint_name: str, input_location: str):  # a class attribute, so called without the backend
        stem = input_location.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return (f"s3://{self.bucket}/inference/output/{stem}.out",
                f"s3://{self.bucket}/inference/failure/{stem}-error.out")


def test_waiting_states_and_stop(offline_tab, aws, monkeypatch):
    from moto.sagemaker.models import sagemaker_backends
    from moto.sagemakerruntime.models import SageMakerRuntimeBackend

    page = offline_tab
    monkeypatch.setattr(SageMakerRuntimeBackend, "invoke_endpoint_async", NeverAnswers(aws.bucket))
    monkeypatch.setattr(generation, "INSTANCES_EVERY", 0.1)
    name = in_service(aws, "gen-waits", "async")
    variant = sagemaker_backends[ACCOUNT_ID][REGION].endpoints[name].production_variants[0]
    variant["CurrentInstanceCount"] = 0  # scaled in to zero, as an idle async endpoint is
    pick_models(page, name, "plain.safetensors")
    fill(page, "sagemaker-gen-prompt", "a lighthouse")
    page.click("#sagemaker-gen-run")
    wait_value(page, RESULT, f"Endpoint {name}: scaling up from zero: usually 8–15 minutes (")
    [request] = keys(aws, "inference/input/")  # the request waits in S3 for the endpoint
    variant["CurrentInstanceCount"] = 1
    wait_value(page, RESULT, f"Endpoint {name}: generating on {name} (")

    page.click("#sagemaker-gen-stop")
    inference_id = request[len("inference/input/"):-len(".json")]
    text = wait_value(page, RESULT, f"Stopped waiting for endpoint '{name}' (inference id {inference_id}).")
    assert not text.startswith("Error")
    # with an instance up it may have started: said plainly, and its input withdrawn in case it has not
    assert f"if it had, endpoint '{name}' is still finishing the earlier request" in text
    assert keys(aws, "inference/input/") == []
    expect(thumbnails(page)).to_have_count(0)


def pick(page, elem_id: str, text: str) -> None:
    """Pick an option of a gradio 3.41 multiselect dropdown: it shows as a token."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id} li.item").filter(has_text=re.compile(rf"^\W*{re.escape(text)}\s*$")).first.click()
    expect(page.locator(f"#{elem_id} .token").filter(has_text=text)).to_have_count(1)
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id} input").blur()  # a focused input opens no list when clicked again


def test_only_the_loras_and_embeddings_for_the_checkpoints_base_are_offered(tab, aws, tmp_path):
    """Each file's header tells its base at upload: with an SD 1.x checkpoint chosen, an SDXL LoRA is not offered
    (a line says so) and an SD 1.x one is; picking it writes its tag into the prompt, unpicking takes it out."""
    for kind, name in (("sd1-checkpoint", "sd15.safetensors"), ("sdxl-checkpoint", "xl-base.safetensors"),
                       ("sd1-lora", "detail.safetensors"), ("sdxl-lora", "xl-style.safetensors"),
                       ("sd1-embedding", "bad-hands.safetensors")):
        write_safetensors(tmp_path / name, kind)
        [result] = upload_paths(aws, "auto", [str(tmp_path / name)])
        assert result.ok, result.error
    page = tab
    expect(connection_line(page)).to_contain_text("Account ")
    wait_idle(page)
    page.click("#sagemaker-gen-models-refresh")
    wait_idle(page)
    wait_value(page, RESULT, "2 checkpoint(s), 0 VAE(s), 2 LoRA(s), 1 embedding(s) in the cloud.")
    hidden = page.locator("#sagemaker-gen-hidden").last

    choose(page, "sagemaker-gen-checkpoint", "xl-base.safetensors")
    expect(hidden).to_have_text("1 LoRA for SD 1.x, 1 embedding for SD 1.x hidden: the checkpoint is SDXL.")
    wait_idle(page)
    assert options(page, "sagemaker-gen-extras") == ["xl-style (LoRA)"]

    choose(page, "sagemaker-gen-checkpoint", "sd15.safetensors")
    expect(hidden).to_have_text("1 LoRA for SDXL hidden: the checkpoint is SD 1.x.")
    wait_idle(page)
    assert options(page, "sagemaker-gen-extras") == ["detail (LoRA)", "bad-hands (embedding)"]

    fill(page, "sagemaker-gen-prompt", "a cat")
    pick(page, "sagemaker-gen-extras", "detail (LoRA)")
    expect(textarea(page, "sagemaker-gen-prompt")).to_have_value("a cat <lora:detail:1>")
    pick(page, "sagemaker-gen-extras", "bad-hands (embedding)")
    expect(textarea(page, "sagemaker-gen-prompt")).to_have_value("a cat <lora:detail:1> bad-hands")
    page.locator("#sagemaker-gen-extras .token").filter(has_text="detail (LoRA)").locator(".token-remove").click()
    expect(textarea(page, "sagemaker-gen-prompt")).to_have_value("a cat bad-hands")
    wait_idle(page)


# -- 2. endpoints that really generate -------------------------------------------------------------------------------
def serve_python():
    """The inference server's Python: SD_SAGEMAKER_SERVE_PYTHON, else .venv-serve, else /tmp/vserve."""
    for candidate in (os.environ.get("SD_SAGEMAKER_SERVE_PYTHON"), str(ROOT / ".venv-serve" / "bin" / "python"),
                      "/tmp/vserve/bin/python"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """An emulator whose endpoints run the inference server, the tiny SD 1.x checkpoint and VAE uploaded, one
    real-time and one async endpoint InService. Its environment stays set for the module's tests."""
    python = serve_python()
    if python is None:
        pytest.skip("no Python for the inference server: run `bash container/install.sh .venv-serve` "
                    "(or set SD_SAGEMAKER_SERVE_PYTHON)")
    folder = tmp_path_factory.mktemp("tiny-models")
    # torch lives in the server's environment only: the models are made there
    made = subprocess.run([python, str(ROOT / "tests" / "serve" / "tiny_models.py"), str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    home = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SD_SAGEMAKER_SERVE_PYTHON", python)
        em = LocalEmulator(runtime=True, work_dir=str(tmp_path_factory.mktemp("endpoints")),
                           startup_timeout=240).start()
        try:
            em.reset()  # moto's state is shared with any other emulator of this process
            for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
            for name, value in em.env().items():
                mp.setenv(name, value)
            aws = Aws(Settings.resolve())
            setup(aws)
            for kind, file in (("checkpoint", "sd1.safetensors"), ("vae", "vae-sd1.safetensors")):
                [result] = upload_paths(aws, kind, [str(folder / file)])
                assert result.ok, result.error
            names = {"real-time": "gen-live-rt", "async": "gen-live-async"}
            for kind, name in names.items():  # both servers start side by side
                deploy(aws, EndpointSpec(name=name, endpoint_type=kind, image_uri=LOCAL_IMAGE, min_instances=1,
                                         autoscaling=False), background=False)
            for name in names.values():
                status = wait_until_settled(aws, name, timeout=300, poll=0.2)
                reason = aws.client("sagemaker").describe_endpoint(EndpointName=name).get("FailureReason")
                assert status == "InService", reason
            yield SimpleNamespace(aws=aws, emulator=em, realtime=names["real-time"], async_=names["async"],
                                  folder=folder)
        finally:
            em.stop()


@pytest.fixture
def live_tab(live, page):
    with standalone() as url:
        page.goto(url)
        expect(connection_line(page)).to_contain_text("Account ")
        wait_idle(page)
        yield page
        wait_idle(page, timeout=120_000)


def image_bytes(page, index: int) -> bytes:
    """The PNG the gallery serves for image `index`, as the browser downloads it."""
    src = thumbnails(page).nth(index).locator("img").evaluate("e => e.src")
    return page.request.get(src).body()


def test_the_lists_are_filled_as_the_page_opens(live, live_tab):
    """No Refresh: the InService endpoints, the cloud checkpoints and VAEs are there when the page opens."""
    page = live_tab
    assert sorted(options(page, "sagemaker-gen-endpoint")) == sorted([live.realtime, live.async_])
    assert "sd1.safetensors" in options(page, "sagemaker-gen-checkpoint")
    assert options(page, "sagemaker-gen-vae")[0] == "None"


def test_generate_on_a_realtime_endpoint(live, live_tab):
    page = live_tab
    pick_models(page, live.realtime, "sd1.safetensors")
    fill(page, "sagemaker-gen-prompt", "a lighthouse at dusk")
    fill(page, "sagemaker-gen-negative", "blurry")
    choose(page, "sagemaker-gen-sampler", "Euler")
    for elem_id, value in (("steps", 2), ("width", 64), ("height", 64), ("batch", 2), ("seed", 1234)):
        set_number(page, f"sagemaker-gen-{elem_id}", value)
    page.click("#sagemaker-gen-run")
    wait_value(page, RESULT, f"2 image(s) from endpoint {live.realtime}", "(seed 1234, 1235).", timeout=180_000)
    expect(thumbnails(page)).to_have_count(2)
    info = wait_value(page, "sagemaker-gen-info", "a lighthouse at dusk\nNegative prompt: blurry\n", "Seed: 1234")
    assert "Steps: 2, Sampler: Euler" in info and "Size: 64x64" in info and "Model: sd1" in info, info
    # the gallery's files keep the infotext, as the WebUI's do
    assert "Seed: 1235" in png_parameters(image_bytes(page, 1))
    with Image.open(io.BytesIO(image_bytes(page, 0))) as first:
        assert first.size == (64, 64)
    thumbnails(page).nth(1).click()  # the selected image's infotext
    wait_value(page, "sagemaker-gen-info", "Seed: 1235")


def test_img2img_with_a_vae_on_an_async_endpoint(live, live_tab, tmp_path):
    page = live_tab
    pick_models(page, live.async_, "sd1.safetensors", "vae-sd1.safetensors")
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 80, 20)).save(init)
    page.get_by_text("img2img", exact=True).click()  # the accordion
    page.locator("#sagemaker-gen-init input[type=file]").set_input_files(str(init))
    expect(page.locator("#sagemaker-gen-init img")).to_have_count(1)
    set_number(page, "sagemaker-gen-denoising", 0.5)
    fill(page, "sagemaker-gen-prompt", "an orange square")
    for elem_id, value in (("steps", 2), ("width", 64), ("height", 64), ("seed", 7)):
        set_number(page, f"sagemaker-gen-{elem_id}", value)
    page.click("#sagemaker-gen-run")
    wait_value(page, RESULT, f"1 image(s) from endpoint {live.async_}", "(seed 7).", timeout=180_000)
    expect(thumbnails(page)).to_have_count(1)
    info = wait_value(page, "sagemaker-gen-info", "an orange square\n", "Seed: 7", "Denoising strength: 0.5")
    assert "VAE: vae-sd1" in info, info
    assert keys(live.aws, "inference/") == []  # the request and the answer were taken out of S3
