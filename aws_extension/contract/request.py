"""The body of POST /invocations: the WebUI API's own txt2img/img2img fields plus the S3 models, checked up front.

Defaults are the WebUI 1.10 API's (modules/api/models.py builds them from modules/processing.py's dataclasses):
steps 50, cfg_scale 7.0, 512x512, seed/subseed -1, sampler "Euler" (its sampler_index default), scheduler
"Automatic", img2img denoising_strength 0.75. Anything the endpoint cannot honour is refused by name, because a
silently dropped option gives a picture the user did not ask for.
"""

from __future__ import annotations

import base64
import binascii
import random
from typing import Dict, List, Optional, Tuple

from ..core.aws import split_s3_uri
from ..core.compat import BaseModel
from ..core.errors import UserError

SEED_RANGE = 4294967294  # the WebUI draws a random seed with random.randrange(4294967294)

# WebUI name -> (internal id, the schedule its "Automatic" means; sd_samplers_kdiffusion gives DPM++ karras)
SAMPLERS: Dict[str, Tuple[str, str]] = {
    "Euler a": ("euler_a", "default"), "Euler": ("euler", "default"), "DPM++ 2M": ("dpmpp_2m", "karras"),
    "DPM++ SDE": ("dpmpp_sde", "karras"), "DDIM": ("ddim", "default"), "UniPC": ("unipc", "default"),
}
# WebUI 1.10 scheduler label (or its name, as sd_schedulers maps both) -> internal schedule
SCHEDULES = {"Automatic": None, "Karras": "karras", "Exponential": "exponential"}
SCHEDULE_LABELS = {"default": "Automatic", "karras": "Karras", "exponential": "Exponential"}
# the WebUI's "Random number generator source" choices; NV is drawn on the CPU by serve/rng.py
RANDN_SOURCES = ("GPU", "CPU", "NV")
# the WebUI's timestep samplers take any schedule type and ignore it (its infotext still names the one chosen)
IGNORE_SCHEDULE = {"ddim", "unipc"}

# Known WebUI options the endpoint does not do: accepted only at their WebUI default values.
UNSUPPORTED: Dict[str, Tuple[tuple, str]] = {
    "enable_hr": ((False, None), "hires fix (enable_hr)"),
    **{k: (v, "hires fix (" + k + ")") for k, v in {
        "hr_scale": (2.0, 2, None), "hr_upscaler": (None, ""), "hr_second_pass_steps": (0, None),
        "hr_resize_x": (0, None), "hr_resize_y": (0, None), "hr_checkpoint_name": (None, "", "Use same checkpoint"),
        "hr_sampler_name": (None, "", "Use same sampler"), "hr_scheduler": (None, "", "Use same scheduler"),
        "hr_prompt": ("", None), "hr_negative_prompt": ("", None), "firstphase_width": (0, None),
        "firstphase_height": (0, None), "firstpass_image": (None, ""), "hr_additional_modules": (None, [])}.items()},
    "refiner_checkpoint": ((None, "", "None"), "the refiner (refiner_checkpoint)"),
    "refiner_switch_at": ((None, 0, 0.0, 1, 1.0), "the refiner (refiner_switch_at)"),
    "alwayson_scripts": (({}, None), "scripts and extensions such as ControlNet (alwayson_scripts)"),
    "script_name": ((None, ""), "scripts (script_name)"), "script_args": (([], None), "scripts (script_args)"),
    "tiling": ((False, None), "tiling"), "restore_faces": ((False, None), "face restoration (restore_faces)"),
    "styles": (([], None), "saved styles (styles)"),
    "seed_resize_from_h": ((-1, 0, None), "seed resize (seed_resize_from_h)"),
    "seed_resize_from_w": ((-1, 0, None), "seed resize (seed_resize_from_w)"),
    "eta": ((None,), "eta"), "s_min_uncond": ((None, 0, 0.0), "s_min_uncond"), "s_churn": ((None,), "s_churn"),
    "s_tmax": ((None,), "s_tmax"), "s_tmin": ((None,), "s_tmin"), "s_noise": ((None,), "s_noise"),
    "save_images": ((False, None), "saving on the endpoint (save_images)"),
    "disable_extra_networks": ((False, None), "disable_extra_networks"), "infotext": ((None, ""), "infotext"),
    "image_cfg_scale": ((None,), "image_cfg_scale"), "resize_mode": ((0, None), "resize_mode"),
    "mask_blur_x": ((4, None), "mask_blur_x"), "mask_blur_y": ((4, None), "mask_blur_y"),
    "mask_round": ((True, None), "mask_round"),
    # masked content "original" and inpaint area "Whole picture", the WebUI UI's defaults, are what serve/masks.py does
    "inpainting_fill": ((1, None), "masked content other than 'original' (inpainting_fill)"),
    "inpaint_full_res": ((False, 0, None), "inpaint area 'Only masked' (inpaint_full_res)"),
    "inpaint_full_res_padding": ((0, None), "inpaint_full_res_padding"),
    "initial_noise_multiplier": ((None, 1, 1.0), "initial_noise_multiplier"), "latent_mask": ((None,), "latent_mask"),
    "include_init_images": ((False, None), "include_init_images"),
}
# Sent by common WebUI clients and meaningless on an endpoint (nothing is saved there, a task id is ours to give,
# settings are restored anyway): accepted with any value and not used.
HARMLESS = {"do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards", "force_task_id",
            "comments", "seed_enable_extras", "sampler_index", "send_images", "user"}
# denoising_strength is not here: txt2img clients send it, and the WebUI uses it only for hires fix
IMG2IMG_ONLY = {"init_images", "mask", "mask_blur", "inpainting_mask_invert"}


class BadRequest(UserError):
    """A request the server refuses (HTTP 400); field is the one to fix, as a dotted path."""

    def __init__(self, field: str, message: str):
        super().__init__(message if field in message else f"{field}: {message}")
        self.field = field


class Models(BaseModel):
    checkpoint: str
    vae: Optional[str] = None
    lora: List[str] = []
    embeddings: List[str] = []


# The sampler the WebUI's txt2img/img2img forms start with (its API's own default, for a payload without one, is Euler):
# the tab and the CLI start there too.
FORM_SAMPLER = "DPM++ 2M"


class GenerationRequest(BaseModel):
    task: str
    models: Models
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "Euler"  # the WebUI's canonical name, as its infotext writes it
    scheduler: str = "Automatic"  # the schedule type used, as the infotext names it (DPM++ Automatic = Karras)
    sampler_id: str = "euler"
    schedule: str = "default"
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    batch_size: int = 1
    n_iter: int = 1
    send_images: bool = True
    denoising_strength: Optional[float] = None  # img2img only
    init_images: List[str] = []  # base64, any data: URL prefix removed
    mask: Optional[str] = None
    mask_blur: int = 4
    inpainting_mask_invert: int = 0
    clip_skip: int = 1  # the WebUI's CLIP_stop_at_last_layers, sent in override_settings
    randn_source: str = "GPU"  # the WebUI's "Random number generator source" (randn_source), ditto


def sampler_schedule(sampler_name: Optional[str], scheduler: Optional[str] = None) -> Tuple[str, str]:
    """WebUI sampler + scheduler -> (internal sampler id, "default" | "karras" | "exponential")."""
    return _resolve(sampler_name, scheduler)[:2]


def _resolve(sampler_name: Optional[str], scheduler: Optional[str]) -> Tuple[str, str, str, str]:
    """(internal sampler id, internal schedule, the WebUI's sampler name, the schedule type its infotext names)."""
    name, label = sampler_name or "Euler", scheduler or "Automatic"
    if not isinstance(name, str):
        raise BadRequest("sampler_name", "sampler_name must be a string")
    for suffix in ("Karras", "Exponential", "Automatic"):  # the legacy combined names, e.g. "DPM++ 2M Karras"
        if name.endswith(" " + suffix) and name not in SAMPLERS:
            name, label = name[: -len(suffix) - 1], suffix
    label = {k.lower(): k for k in SCHEDULES}.get(str(label).lower(), label)  # sd_schedulers also takes "karras"
    if name not in SAMPLERS:
        raise BadRequest("sampler_name", f"sampler_name {sampler_name!r} is not supported by this endpoint; "
                                         f"supported: {', '.join(SAMPLERS)}")
    if label not in SCHEDULES:
        raise BadRequest("scheduler", f"scheduler {scheduler!r} is not supported by this endpoint; "
                                      f"supported: {', '.join(SCHEDULES)}")
    sampler_id, automatic = SAMPLERS[name]
    schedule = SCHEDULES[label] or automatic
    if sampler_id in IGNORE_SCHEDULE:
        return sampler_id, "default", name, label
    return sampler_id, schedule, name, SCHEDULE_LABELS[schedule]


def resolve_seeds(seed: int, subseed: int, batch_size: int, n_iter: int, rng: Optional[random.Random] = None,
                  subseed_strength: float = 0.0) -> Tuple[List[int], List[int]]:
    """all_seeds and all_subseeds as the WebUI's process_images_inner makes them: one per image, consecutive."""
    rng = rng or random.Random()
    seed = rng.randrange(SEED_RANGE) if seed == -1 else seed
    subseed = rng.randrange(SEED_RANGE) if subseed == -1 else subseed
    count = batch_size * n_iter
    # with a variation strength every image shares the seed and only the subseed moves, as in the WebUI
    all_seeds = [seed + (i if subseed_strength == 0 else 0) for i in range(count)]
    return all_seeds, [subseed + i for i in range(count)]


def _number(payload: dict, name: str, kind: type, lo: float, hi: float, default):
    value = payload.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int and isinstance(value, float):
        ok = value.is_integer()  # JSON clients send 20.0 for 20
    if not ok:
        raise BadRequest(name, f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    if not lo <= value <= hi:
        raise BadRequest(name, f"{name} must be between {lo} and {hi}, not {value}")
    return kind(value)


def _text(payload: dict, name: str) -> str:
    value = payload.get(name) or ""
    if not isinstance(value, str):
        raise BadRequest(name, f"{name} must be a string")
    return value


def _image(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(field, f"{field} must be a base64 PNG or JPEG image")
    data = value.split(",", 1)[1] if value.startswith("data:") else value  # the WebUI accepts data: URLs too
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(field, f"{field} is not valid base64") from None
    if not (raw.startswith(b"\x89PNG\r\n\x1a\n") or raw.startswith(b"\xff\xd8\xff")):
        raise BadRequest(field, f"{field} is not a PNG or JPEG image")
    return data


def _s3(field: str, value) -> str:
    bucket, key = split_s3_uri(value)
    if not bucket or key.endswith("/"):
        raise BadRequest(field, f"{field} must be an S3 location s3://bucket/key, not {value!r}")
    return value


def _models(models) -> Models:
    if not isinstance(models, dict):
        raise BadRequest("models", "models must be an object with the checkpoint's S3 location")
    extra = sorted(set(models) - {"checkpoint", "vae", "lora", "embeddings"})
    if extra:
        raise BadRequest("models." + extra[0], f"models.{extra[0]} is not a known model kind")
    if not models.get("checkpoint"):
        raise BadRequest("models.checkpoint", "models.checkpoint is required")
    lists = {}
    for kind in ("lora", "embeddings"):
        items = models.get(kind) or []
        if not isinstance(items, list):
            raise BadRequest(f"models.{kind}", f"models.{kind} must be a list of S3 locations")
        lists[kind] = [_s3(f"models.{kind}[{i}]", uri) for i, uri in enumerate(items)]
    vae = _s3("models.vae", models["vae"]) if models.get("vae") is not None else None
    return Models(checkpoint=_s3("models.checkpoint", models["checkpoint"]), vae=vae, **lists)


def parse_request(body: dict) -> GenerationRequest:
    """The checked request, or BadRequest naming the first field at fault."""
    if not isinstance(body, dict):
        raise BadRequest("body", "body must be a JSON object with task, payload and models")
    extra = sorted(set(body) - {"task", "payload", "models"})
    if extra:
        raise BadRequest(extra[0], f"{extra[0]} is not a known request field (task, payload, models)")
    task = body.get("task")
    if task not in ("txt2img", "img2img"):
        raise BadRequest("task", f"task must be 'txt2img' or 'img2img', not {task!r}")
    p = body.get("payload") or {}
    if not isinstance(p, dict):
        raise BadRequest("payload", "payload must be a JSON object")
    known = {f for f in GenerationRequest.__fields__
             if f not in ("task", "models", "sampler_id", "schedule", "clip_skip", "randn_source")}
    known.add("override_settings")
    for name, value in p.items():
        if name in UNSUPPORTED:
            defaults, what = UNSUPPORTED[name]
            if not any(value == d and type(value) is not bool or value is d for d in defaults):
                raise BadRequest(name, f"{what} is not supported by this endpoint")
        elif task == "txt2img" and name in IMG2IMG_ONLY and value is not None:
            raise BadRequest(name, f"{name} is for img2img; txt2img does not take it")
        elif name not in known and name not in HARMLESS:
            raise BadRequest(name, f"{name} is not a WebUI txt2img/img2img option this endpoint knows")
    sampler_id, schedule, sampler_name, schedule_label = _resolve(p.get("sampler_name") or p.get("sampler_index"),
                                                                  p.get("scheduler"))
    values = dict(
        task=task, models=_models(body.get("models")), prompt=_text(p, "prompt"),
        negative_prompt=_text(p, "negative_prompt"), sampler_name=sampler_name,
        scheduler=schedule_label, sampler_id=sampler_id, schedule=schedule,
        steps=_number(p, "steps", int, 1, 150, 50), cfg_scale=_number(p, "cfg_scale", float, 1, 30, 7.0),
        seed=_number(p, "seed", int, -1, 2**32 - 1, -1), subseed=_number(p, "subseed", int, -1, 2**32 - 1, -1),
        subseed_strength=_number(p, "subseed_strength", float, 0, 1, 0.0),
        batch_size=_number(p, "batch_size", int, 1, 8, 1), n_iter=_number(p, "n_iter", int, 1, 100, 1),
        send_images=p.get("send_images") is not False)
    for side in ("width", "height"):
        values[side] = _number(p, side, int, 64, 2048, 512)
        if values[side] % 8:
            raise BadRequest(side, f"{side} must be a multiple of 8, not {values[side]}")
    if task == "img2img":
        images = p.get("init_images")
        if not isinstance(images, list) or not images:
            raise BadRequest("init_images", "init_images is required for img2img: a list of base64 images")
        values["init_images"] = [_image(f"init_images[{i}]", v) for i, v in enumerate(images)]
        values["mask"] = _image("mask", p["mask"]) if p.get("mask") else None
        values["denoising_strength"] = _number(p, "denoising_strength", float, 0, 1, 0.75)
        values["mask_blur"] = _number(p, "mask_blur", int, 0, 64, 4)
        values["inpainting_mask_invert"] = _number(p, "inpainting_mask_invert", int, 0, 1, 0)
    values.update(_override_settings(p.get("override_settings")))
    return GenerationRequest(**values)


def _override_settings(settings) -> dict:
    """The WebUI settings a request may override here: Clip skip (CLIP_stop_at_last_layers) and the random number
    generator source (randn_source: GPU, CPU or NV)."""
    if settings in (None, {}):
        settings = {}
    if not isinstance(settings, dict):
        raise BadRequest("override_settings", "override_settings must be an object")
    for name in settings:
        if name not in ("CLIP_stop_at_last_layers", "randn_source"):
            raise BadRequest(f"override_settings.{name}", f"override_settings.{name} is not supported by this "
                                                          "endpoint (only CLIP_stop_at_last_layers and randn_source)")
    source = settings.get("randn_source") or "GPU"
    if source not in RANDN_SOURCES:
        raise BadRequest("override_settings.randn_source", f"randn_source must be one of {', '.join(RANDN_SOURCES)}, "
                                                           f"not {source!r}")
    return {"clip_skip": _number(settings, "CLIP_stop_at_last_layers", int, 1, 12, 1), "randn_source": source}
