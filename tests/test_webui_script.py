"""The "Amazon SageMaker" script of txt2img and img2img, as the WebUI runs it: loaded from scripts/sagemaker.py,
its controls built, run(p, endpoint, checkpoint, vae) on the emulator with SageMaker's async side played by
tests/async_stand_in.py. The WebUI is the stand-in of tests/webui_standin."""

from __future__ import annotations

import base64
import io
import sys
import threading
import time

import boto3
import pytest
from async_stand_in import BUCKET, DEFAULT_SEED, in_service, install, put_models, set_instances
from PIL import Image
from test_webui_glue import ROOT, load_by_path, webui  # noqa: F401 - the `webui` fixture

from aws_extension.local.emulator import REGION

SHA = {"sd15.safetensors": "6ce0161689" + "a" * 54, "xl.safetensors": "31e35c80fc" + "b" * 54}
MODELS = {"Stable-diffusion": ["sd15.safetensors", "xl.safetensors"], "VAE": ["vae-ft.safetensors"],
          "Lora": ["style.safetensors"]}


@pytest.fixture
def s3(aws_env):
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def cloud(aws, s3):
    put_models(aws, s3, MODELS, SHA)
    return aws


@pytest.fixture
def script_module(request):
    """scripts/sagemaker.py loaded again, as the WebUI loads it, with our module bound to this stand-in."""
    request.getfixturevalue("webui")  # the stand-in WebUI, from test_webui_glue
    sys.modules.pop("aws_extension.webui.script", None)
    module = load_by_path(ROOT / "scripts" / "sagemaker.py", ROOT)
    from modules import images

    images.saved.clear()
    return module


def make_script(script_module, is_img2img=False):
    from modules import scripts

    # the WebUI's loader: every Script subclass in the module's namespace
    [cls] = [v for v in vars(script_module).values() if isinstance(v, type) and issubclass(v, scripts.Script)]
    script = cls()
    script.is_img2img = is_img2img
    return script


@pytest.fixture
def endpoint(cloud, s3, monkeypatch):
    """An async endpoint InService, answered by the stand-in."""
    name = in_service(cloud, "async")
    stand_in = install(monkeypatch, s3)
    yield name, stand_in
    stand_in.join()


@pytest.fixture
def script(script_module, endpoint):
    return make_script(script_module)


def txt2img(**fields):
    from modules import processing

    values = dict(prompt="a cat", negative_prompt="blurry", seed=42, steps=20, sampler_name="DPM++ 2M",
                  scheduler="Karras", width=64, height=96, batch_size=2, outpath_samples="outputs/txt2img-images")
    return processing.StableDiffusionProcessingTxt2Img(**{**values, **fields})


def png_image(raw: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(raw)))


# -- the script and its controls ------------------------------------------------------------------------------------
def test_the_loader_finds_the_script_and_its_controls_build(script_module, endpoint):
    import gradio as gr

    name, _ = endpoint
    script = make_script(script_module)
    assert (script.title(), script.show(False), script.show(True)) == ("Amazon SageMaker", True, True)
    with gr.Blocks() as blocks:
        controls = script.ui(False)
    # what the page shows for the localizations: labels, the VAE's fixed choice, no message
    shown = {b.label for b in blocks.blocks.values() if isinstance(getattr(b, "label", None), str)}
    assert shown | {"None"} <= set(script_module_of(script).ui_strings())
    [note] = [b for b in blocks.blocks.values() if isinstance(b, gr.Markdown)]
    assert (note.value, note.visible) == ("", False)
    # the API's script_args order: [endpoint, checkpoint, vae]
    assert [type(c) for c in controls] == [gr.Dropdown] * 3
    assert [c.label for c in controls] == ["Endpoint", "Cloud checkpoint", "Cloud VAE"]
    assert [(c.choices, c.value) for c in controls] == [
        ([name], name), (["sd15.safetensors", "xl.safetensors"], "sd15.safetensors"),
        (["None", "vae-ft.safetensors"], "None")]
    assert controls[0].elem_id == "script_txt2img_amazon_sagemaker_endpoint"
    assert all(c.do_not_save_to_config for c in controls)
    assert [component for component, _ in script.infotext_fields] == [controls[1]]


def test_the_controls_build_when_aws_fails_and_refresh_fills_them(script_module, cloud, monkeypatch):
    import gradio as gr

    script = make_script(script_module, is_img2img=True)
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    with gr.Blocks():
        endpoint, checkpoint, vae = script.ui(True)
    assert (endpoint.choices, checkpoint.choices, vae.choices, vae.value) == ([], [], ["None"], "None")
    module = sys.modules["aws_extension.webui.script"]
    assert module.initial_lists()[3].startswith("Error: No AWS region set")

    monkeypatch.setenv("AWS_REGION", REGION)
    update, note = module.refresh(module.cloud_checkpoints, None, module.NO_CHECKPOINTS)
    assert (update["choices"], update["value"]) == (["sd15.safetensors", "xl.safetensors"], "sd15.safetensors")
    assert note["visible"] is False
    update, note = module.refresh(module.serving_endpoints, None, module.NO_ENDPOINTS)
    assert update["choices"] == [] and note["value"] == module.NO_ENDPOINTS and note["visible"] is True


def test_the_build_waits_for_aws_a_bounded_time(script_module, monkeypatch):
    module = sys.modules["aws_extension.webui.script"]
    monkeypatch.setattr(module, "BUILD_WAIT", 0.3)
    monkeypatch.setattr(module, "_list_all", lambda: time.sleep(5))
    started = time.monotonic()
    assert module.initial_lists() == ([], [], ["None"], module.SLOW)
    assert time.monotonic() - started < 2


def test_pasting_an_infotext_picks_the_cloud_checkpoint(script, cloud):
    module = sys.modules["aws_extension.webui.script"]
    module.initial_lists()  # AWS answered
    by_hash = module.pasted_checkpoint({"Model hash": "31e35c80fc", "Model": "renamed"})
    assert (by_hash["value"], by_hash["choices"]) == ("xl.safetensors", ["sd15.safetensors", "xl.safetensors"])
    assert module.pasted_checkpoint({"Model hash": "0123456789", "Model": "sd15"})["value"] == "sd15.safetensors"
    assert module.pasted_checkpoint({"Model hash": "0123456789", "Model": "other"}) is None
    assert module.pasted_checkpoint({"Prompt": "a cat"}) is None
    module._reachable.clear()  # AWS failed lately: a paste does not wait for it
    assert module.pasted_checkpoint({"Model hash": "31e35c80fc"}) is None


# -- run ------------------------------------------------------------------------------------------------------------
def test_txt2img_returns_the_images_as_if_generated_locally(script, endpoint):
    from modules import images, shared

    name, stand_in = endpoint
    shared.opts.CLIP_stop_at_last_layers = 2
    p = txt2img(prompt="a cat <lora:style:0.5>")
    processed = script.run(p, name, "sd15", "vae-ft")

    [(key, request)] = stand_in.inputs
    assert request["task"] == "txt2img"
    assert request["payload"] == {
        "prompt": "a cat <lora:style:0.5>", "negative_prompt": "blurry", "steps": 20, "cfg_scale": 7.0, "width": 64,
        "height": 96, "seed": 42, "subseed": -1, "subseed_strength": 0.0, "batch_size": 2, "n_iter": 1,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "override_settings": {"CLIP_stop_at_last_layers": 2}}
    assert request["models"] == {"checkpoint": f"s3://{BUCKET}/models/Stable-diffusion/sd15.safetensors",
                                 "vae": f"s3://{BUCKET}/models/VAE/vae-ft.safetensors",
                                 "lora": [f"s3://{BUCKET}/models/Lora/style.safetensors"], "embeddings": []}

    assert [im.size for im in processed.images] == [(64, 96), (64, 96)]
    assert processed.all_seeds == [42, 43] and processed.seed == 42
    assert processed.all_subseeds == [DEFAULT_SEED + 1000, DEFAULT_SEED + 1001]
    assert [im.info["parameters"] for im in processed.images] == processed.infotexts
    assert processed.info == processed.infotexts[0]
    assert processed.infotexts[1].startswith("a cat <lora:style:0.5>\nNegative prompt: blurry\nSteps: 20")
    assert "Seed: 43" in processed.infotexts[1] and "Model hash: 6ce0161689" in processed.infotexts[1]
    assert (processed.sd_model_name, processed.sd_model_hash, processed.clip_skip) == ("sd15", "6ce0161689", 2)
    assert f"endpoint '{name}'" in processed.comments
    assert '"all_seeds": [42, 43]' in processed.js()
    # saved into the WebUI's outputs as process_images saves them
    assert [(s["path"], s["basename"], s["seed"], s["prompt"], s["extension"], s["info"], s["p"], s["image"])
            for s in images.saved] == [
        ("outputs/txt2img-images", "", seed, "a cat <lora:style:0.5>", "png", text, p, image)
        for seed, text, image in zip([42, 43], processed.infotexts, processed.images)]
    assert shared.state.textinfo is None


def test_saving_follows_the_setting_and_the_api_request(script, endpoint):
    from modules import images, shared

    name, _ = endpoint
    script.run(txt2img(do_not_save_samples=True, batch_size=1), name, "sd15", "None")  # an API request's default
    shared.opts.samples_save = False
    processed = script.run(txt2img(batch_size=1), name, "sd15.safetensors [6ce0161689]", None)
    assert len(processed.images) == 1 and images.saved == []


def test_img2img_sends_the_init_image_and_the_mask(script_module, endpoint):
    from modules import processing

    name, stand_in = endpoint
    script = make_script(script_module, is_img2img=True)
    init = Image.new("RGBA", (64, 64), (200, 10, 10, 255))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    p = processing.StableDiffusionProcessingImg2Img(
        prompt="a dog", init_images=[init], mask=mask, denoising_strength=0.5, width=64, height=64, seed=7,
        sampler_name="Euler a", inpainting_fill=1, inpaint_full_res=False, mask_blur=6, outpath_samples="out")
    processed = script.run(p, name, "xl", None)
    [(_, request)] = stand_in.inputs
    payload = request["payload"]
    assert request["task"] == "img2img" and payload["denoising_strength"] == 0.5
    [sent] = payload["init_images"]
    assert png_image(sent).mode == "RGB" and png_image(sent).getpixel((0, 0)) == (200, 10, 10)
    assert png_image(payload["mask"]).getpixel((20, 20)) == 255 and png_image(payload["mask"]).getpixel((0, 0)) == 0
    assert (payload["mask_blur"], payload["inpainting_fill"], payload["inpaint_full_res"],
            payload["inpainting_mask_invert"]) == (6, 1, False, 0)
    assert "Denoising strength: 0.5" in processed.infotexts[0] and processed.images[0].size == (64, 64)


def test_the_prompt_styles_and_the_clip_skip_override(script, endpoint, monkeypatch):
    from modules import shared

    class Styles:  # the WebUI's StyleDatabase methods
        def apply_styles_to_prompt(self, prompt, styles):
            return f"{prompt}, {'+'.join(styles)}"

        def apply_negative_styles_to_prompt(self, prompt, styles):
            return f"{prompt}, no {'+'.join(styles)}"

    monkeypatch.setattr(shared, "prompt_styles", Styles(), raising=False)
    monkeypatch.setitem(shared.opts.data, "randn_source", "NV")  # the user's RNG setting goes along
    name, stand_in = endpoint
    script.run(txt2img(styles=["film"], override_settings={"CLIP_stop_at_last_layers": 3}), name, "sd15", None)
    payload = stand_in.inputs[0][1]["payload"]
    assert (payload["prompt"], payload["negative_prompt"]) == ("a cat, film", "blurry, no film")
    assert payload["override_settings"] == {"CLIP_stop_at_last_layers": 3, "randn_source": "NV"}


# -- errors, progress, interrupt ------------------------------------------------------------------------------------
def test_missing_choices_and_models_are_clear_messages(script, endpoint, caplog):
    name, stand_in = endpoint
    errors = script_module_of(script).SageMakerError
    with pytest.raises(errors) as caught, caplog.at_level("WARNING"):
        script.run(txt2img(), None, "sd15", None)
    [logged] = [r for r in caplog.records if "Choose an endpoint" in r.getMessage()]
    assert logged.exc_info is None  # one line in the console, no traceback
    assert caught.value.status_code == 400 and "Choose an endpoint" in str(caught.value)
    # the WebUI's API handler (A1111 1.10 and Forge) prints a traceback with locals unless it is an HTTPException
    from fastapi.exceptions import HTTPException

    assert isinstance(caught.value, HTTPException) and caught.value.detail == str(caught.value)
    assert "script_args are [endpoint, checkpoint, VAE]" in caught.value.detail
    with pytest.raises(errors, match="Choose a cloud checkpoint"):
        script.run(txt2img(), name, "", None)
    with pytest.raises(errors) as caught:
        script.run(txt2img(prompt="a cat <lora:nope:1>"), name, "sd15", None)
    assert caught.value.status_code == 404
    assert "The prompt uses LoRA 'nope'" in str(caught.value) and "style.safetensors" in str(caught.value)
    with pytest.raises(errors) as caught:
        script.run(txt2img(), name, "sdxl-base", None)
    assert "No SD Checkpoint 'sdxl-base'" in str(caught.value)
    with pytest.raises(errors) as caught:
        script.run(txt2img(), "gone", "sd15", None)
    assert "Endpoint 'gone' does not exist" in str(caught.value)
    assert stand_in.inputs == []


@pytest.mark.parametrize("fields, named", [
    ({"enable_hr": True}, "hires fix (enable_hr)"),
    ({"refiner_checkpoint": "refiner.safetensors", "refiner_switch_at": 0.8}, "the refiner (refiner_checkpoint)"),
    ({"seed_resize_from_w": 768, "seed_resize_from_h": 768}, "seed resize"),
    ({"sampler_name": "LMS"}, "sampler_name 'LMS' is not supported"),
    ({"opts": {"face_restoration": True}}, "face restoration (restore_faces)"),  # the setting, when p leaves it unset
])
def test_options_the_endpoint_cannot_honour_are_named(script, endpoint, fields, named):
    from modules import shared

    name, stand_in = endpoint
    fields = dict(fields)
    shared.opts.data.update(fields.pop("opts", {}))
    with pytest.raises(script_module_of(script).SageMakerError) as caught:
        script.run(txt2img(**fields), name, "sd15", None)
    assert caught.value.status_code == 400 and named in str(caught.value)
    assert f"Endpoint '{name}' would refuse the request" in str(caught.value)
    assert stand_in.inputs == []


def test_the_wait_shows_in_the_progress_text(script, endpoint):
    from modules import shared

    name, stand_in = endpoint
    set_instances(name, 0)
    seen = []

    def scale_up():
        deadline = time.monotonic() + 10
        while "scaling up" not in (shared.state.textinfo or "") and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.append(shared.state.textinfo)
        set_instances(name, 1)

    stand_in.before_answer = scale_up
    script.run(txt2img(batch_size=1), name, "sd15", None)
    assert seen == ["Amazon SageMaker: scaling up from zero: usually 8–15 minutes"]
    assert shared.state.textinfo is None


@pytest.mark.parametrize("how", ["interrupt", "skip"])
def test_interrupt_stops_the_wait(script, endpoint, how):
    from modules import shared

    name, stand_in = endpoint
    stand_in.respond = lambda request: None  # never answers

    def stop_once_sent():  # not after a fixed time: on a loaded machine the request may not be sent yet
        deadline = time.monotonic() + 30
        while not stand_in.inputs and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        getattr(shared.state, how)()

    threading.Thread(target=stop_once_sent, daemon=True).start()
    started = time.monotonic()
    processed = script.run(txt2img(), name, "sd15", None)
    assert time.monotonic() - started < 4
    assert processed.images == [] and processed.info.startswith("Interrupted: Stopped waiting for endpoint")
    assert len(stand_in.inputs) == 1 and shared.state.textinfo is None


def script_module_of(script):
    return sys.modules[type(script).__module__]
