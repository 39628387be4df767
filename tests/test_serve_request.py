"""The /invocations request: WebUI API defaults, refusals that name their field, samplers, seeds, infotext."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from aws_extension.contract.infotext import infotext, model_hash, network_hash, parse_infotext
from aws_extension.contract.request import BadRequest, parse_request, resolve_seeds, sampler_schedule

CKPT = "s3://bucket/models/Stable-diffusion/v1-5.safetensors"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()


def body(task="txt2img", models=None, **payload):
    return {"task": task, "payload": payload, "models": models or {"checkpoint": CKPT}}


def refused(field, b):
    with pytest.raises(BadRequest) as caught:
        parse_request(b)
    assert caught.value.field == field
    assert field in str(caught.value)
    return str(caught.value)


def test_defaults_are_the_webui_apis():
    r = parse_request(body(prompt="a cat"))
    assert (r.steps, r.cfg_scale, r.width, r.height, r.seed, r.subseed) == (50, 7.0, 512, 512, -1, -1)
    assert (r.batch_size, r.n_iter, r.subseed_strength, r.negative_prompt) == (1, 1, 0.0, "")
    assert (r.sampler_name, r.scheduler, r.sampler_id, r.schedule) == ("Euler", "Automatic", "euler", "default")
    assert r.denoising_strength is None and r.init_images == [] and r.models.lora == []
    i = parse_request(body("img2img", init_images=[PNG], mask=JPEG))
    assert i.denoising_strength == 0.75 and i.init_images == [PNG] and i.mask == JPEG and i.mask_blur == 4


def test_values_are_taken():
    r = parse_request(body(prompt="x", steps=30, cfg_scale=5.5, width=768, height=1024, seed=7, batch_size=2,
                           n_iter=3, sampler_name="DPM++ 2M", scheduler="Karras", send_images=False,
                           do_not_save_samples=True, override_settings={}, enable_hr=False, alwayson_scripts={},
                           models={"checkpoint": CKPT, "vae": "s3://b/v.pt", "lora": ["s3://b/l.safetensors"]}))
    assert (r.steps, r.cfg_scale, r.width, r.height, r.seed, r.batch_size, r.n_iter) == (30, 5.5, 768, 1024, 7, 2, 3)
    assert (r.sampler_id, r.schedule, r.send_images) == ("dpmpp_2m", "karras", False)
    assert r.models.vae == "s3://b/v.pt" and r.models.lora == ["s3://b/l.safetensors"]
    data_url = parse_request(body("img2img", init_images=["data:image/png;base64," + PNG]))
    assert data_url.init_images == [PNG]


@pytest.mark.parametrize("field, b", [
    ("task", {"task": "extras", "payload": {}, "models": {"checkpoint": CKPT}}),
    ("extra", {**body(), "extra": 1}),
    ("models", {"task": "txt2img", "payload": {}}),
    ("models.checkpoint", body(models={"vae": None})),
    ("models.checkpoint", body(models={"checkpoint": "/local/model.ckpt"})),
    ("models.vae", body(models={"checkpoint": CKPT, "vae": "https://x/v.pt"})),
    ("models.lora[1]", body(models={"checkpoint": CKPT, "lora": ["s3://b/a", "s3://b/"]})),
    ("models.embeddings", body(models={"checkpoint": CKPT, "embeddings": "s3://b/e.pt"})),
    ("models.hypernetwork", body(models={"checkpoint": CKPT, "hypernetwork": []})),
    ("payload", {"task": "txt2img", "payload": [1], "models": {"checkpoint": CKPT}}),
    ("prompt", body(prompt=["a", "b"])),
    ("steps", body(steps=0)), ("steps", body(steps=151)), ("steps", body(steps="20")), ("steps", body(steps=2.5)),
    ("cfg_scale", body(cfg_scale=31)), ("cfg_scale", body(cfg_scale=True)),
    ("width", body(width=500)), ("width", body(width=56)), ("height", body(height=2056)),
    ("batch_size", body(batch_size=9)), ("n_iter", body(n_iter=0)), ("n_iter", body(n_iter=101)),
    ("seed", body(seed=-2)), ("subseed_strength", body(subseed_strength=2)),
    ("init_images", body("img2img")), ("init_images", body("img2img", init_images=[])),
    ("init_images[0]", body("img2img", init_images=["not base64!"])),
    ("init_images[1]", body("img2img", init_images=[PNG, base64.b64encode(b"GIF89a").decode()])),
    ("mask", body("img2img", init_images=[PNG], mask="@@")),
    ("denoising_strength", body("img2img", init_images=[PNG], denoising_strength=1.5)),
    ("init_images", body(init_images=[PNG])), ("mask", body(mask=PNG)),
    ("sampler_name", body(sampler_name="LMS")), ("scheduler", body(scheduler="Beta")),
    ("enable_hr", body(enable_hr=True)), ("hr_scale", body(hr_scale=1.5)),
    ("refiner_checkpoint", body(refiner_checkpoint="sdxl_refiner")),
    ("alwayson_scripts", body(alwayson_scripts={"controlnet": {"args": []}})),
    ("script_name", body(script_name="x/y/z plot")), ("tiling", body(tiling=True)),
    ("restore_faces", body(restore_faces=True)), ("styles", body(styles=["mine"])),
    ("override_settings.sd_vae", body(override_settings={"CLIP_stop_at_last_layers": 2, "sd_vae": "x.pt"})),
    ("CLIP_stop_at_last_layers", body(override_settings={"CLIP_stop_at_last_layers": 0})),
    ("scheduler", body(sampler_name="Euler a", scheduler="Uniform")),
    ("save_images", body(save_images=True)),
    ("inpainting_fill", body("img2img", init_images=[PNG], inpainting_fill=0)),
    ("inpaint_full_res", body("img2img", init_images=[PNG], inpaint_full_res=True)),
    ("resize_mode", body("img2img", init_images=[PNG], resize_mode=2)),
    ("frobnicate", body(frobnicate=1)),
])
def test_every_refusal_names_its_field(field, b):
    refused(field, b)


def test_refusal_messages_say_what_is_missing():
    assert "hires fix (enable_hr) is not supported by this endpoint" in refused("enable_hr", body(enable_hr=True))
    message = refused("sampler_name", body(sampler_name="Heun"))
    assert "Heun" in message and all(name in message for name in ("Euler a", "DPM++ 2M", "UniPC"))


@pytest.mark.parametrize("name, scheduler, expected", [
    ("Euler a", None, ("euler_a", "default")),
    ("Euler", "Automatic", ("euler", "default")),
    ("DPM++ 2M", None, ("dpmpp_2m", "karras")),  # the WebUI's own default schedule for DPM++
    ("DPM++ 2M", "Exponential", ("dpmpp_2m", "exponential")),
    ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),  # legacy combined name
    ("DPM++ SDE Karras", "Automatic", ("dpmpp_sde", "karras")),
    ("DPM++ SDE", "karras", ("dpmpp_sde", "karras")),
    ("Euler Exponential", None, ("euler", "exponential")),
    ("DDIM", None, ("ddim", "default")),
    ("UniPC", "Automatic", ("unipc", "default")),
    ("DDIM", "Karras", ("ddim", "default")),  # the WebUI's timestep samplers take any schedule and ignore it
    ("UniPC", "Exponential", ("unipc", "default")),
    ("Euler a", "Karras", ("euler_a", "karras")),  # sampled the WebUI's way (serve/ksampling.py)
    (None, None, ("euler", "default")),
])
def test_sampler_mapping(name, scheduler, expected):
    assert sampler_schedule(name, scheduler) == expected


def test_timestep_samplers_keep_the_schedule_type_asked_for_in_the_infotext():
    r = parse_request(body(sampler_name="DDIM", scheduler="Karras"))
    assert (r.sampler_id, r.schedule, r.scheduler) == ("ddim", "default", "Karras")  # as the WebUI writes it


def test_legacy_name_sets_the_schedule_type():
    r = parse_request(body(sampler_name="DPM++ 2M Karras"))
    assert (r.sampler_name, r.scheduler) == ("DPM++ 2M", "Karras")
    assert parse_request(body(sampler_index="Euler a")).sampler_id == "euler_a"


def test_seeds_consecutive_over_batch_and_iterations():
    assert resolve_seeds(100, 5, 2, 2) == ([100, 101, 102, 103], [5, 6, 7, 8])
    # a variation strength keeps the seed and moves the subseed, as in the WebUI
    assert resolve_seeds(100, 5, 2, 1, subseed_strength=0.5) == ([100, 100], [5, 6])
    seeds, subseeds = resolve_seeds(-1, -1, 2, 2, random.Random(1))
    assert seeds == list(range(seeds[0], seeds[0] + 4)) and 0 <= seeds[0] < 4294967294
    assert resolve_seeds(-1, -1, 2, 2, random.Random(1)) == (seeds, subseeds)


def test_model_hash_is_the_webui_short_sha256():
    digest = hashlib.sha256(b"hello").hexdigest()
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert model_hash(digest) == "2cf24dba5f"
    assert model_hash(digest.upper()) == "2cf24dba5f" and network_hash(digest) == "2cf24dba5fb0"
    with pytest.raises(ValueError):
        model_hash("abc")


# Built by hand from modules/processing.py create_infotext (WebUI 1.10.1): prompt, "Negative prompt:" line, then
# Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, VAE hash, VAE, Denoising strength,
# extra params (Lora hashes), Version, joined by ", "; values with ":" or "," JSON-quoted (infotext_utils.quote).
WEBUI_SAMPLE = (
    "a cat, <lora:ink:0.8>\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 123, Size: 512x768, "
    "Model hash: 0123456789, Model: v1-5, VAE hash: abcdef0123, VAE: vae-ft-mse.safetensors, "
    "Denoising strength: 0.75, Lora hashes: \"ink: 0123456789ab\", Version: v1.10.1"
)


def test_infotext_matches_the_webui_format_and_round_trips():
    text = infotext("a cat, <lora:ink:0.8>", "blurry", steps=20, sampler="DPM++ 2M", schedule_type="Karras",
                    cfg_scale=7.0, seed=123, width=512, height=768, model_name="v1-5", model_hash="0123456789",
                    vae_name="vae-ft-mse.safetensors", vae_hash="abcdef0123", denoising_strength=0.75,
                    lora_hashes={"ink": "0123456789ab"}, version="v1.10.1")
    assert text == WEBUI_SAMPLE
    back = parse_infotext(text)
    assert back["Prompt"] == "a cat, <lora:ink:0.8>" and back["Negative prompt"] == "blurry"
    assert (back["Steps"], back["Sampler"], back["Schedule type"], back["CFG scale"]) == ("20", "DPM++ 2M", "Karras",
                                                                                         "7.0")
    assert (back["Seed"], back["Size-1"], back["Size-2"], back["Model hash"]) == ("123", "512", "768", "0123456789")
    assert back["Lora hashes"] == "ink: 0123456789ab" and back["Version"] == "v1.10.1"


def test_infotext_leaves_out_what_is_empty():
    text = infotext("a dog", "", steps=20, sampler="Euler a", schedule_type="Automatic", cfg_scale=7.0, seed=1,
                    width=512, height=512, model_name="m", model_hash="0123456789", subseed=9, subseed_strength=0.2)
    assert text == ("a dog\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 1, "
                    "Size: 512x512, Model hash: 0123456789, Model: m, Variation seed: 9, Variation seed strength: 0.2")
    back = parse_infotext(text)
    assert back["Prompt"] == "a dog" and back["Negative prompt"] == "" and back["Variation seed"] == "9"


@pytest.mark.parametrize("sampler", ["Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC"])
def test_img2img_takes_a_variation_seed_a_mask_and_nv_noise_with_every_sampler(sampler):
    """The WebUI accepts these together with any sampler, and the endpoint samples them its way (serve/sampling.py)."""
    r = parse_request(body("img2img", init_images=[PNG], mask=PNG, subseed=3, subseed_strength=0.5,
                           sampler_name=sampler, override_settings={"randn_source": "NV"}))
    assert (r.sampler_name, r.subseed_strength, r.randn_source, r.mask) == (sampler, 0.5, "NV", PNG)
