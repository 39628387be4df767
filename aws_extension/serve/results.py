"""The answer of POST /invocations, shaped like the WebUI API's: base64 PNGs, the parameters, and `info`.

`info` is the JSON string of the WebUI's Processed.js() (modules/processing.py), so "reuse seed", PNG info and
"send to" read ours as their own. Each PNG carries its infotext in the "parameters" text chunk, as the WebUI's
API writes it.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING


from .. import __version__
from ..contract.infotext import hashes_text, infotext, png_base64
from ..contract.request import GenerationRequest

if TYPE_CHECKING:
    from .engine import Generated

# The infotext's "Version": the WebUI release whose pictures the server reproduces, then ours. The WebUI reads it
# for back-compatibility switches meant for its own pre-1.8 infotexts; this one turns none of them on.
VERSION = f"v1.10.1-sagemaker-{__version__}"


def image_infotext(req: GenerationRequest, g: "Generated", index: int) -> str:
    return infotext(
        req.prompt, req.negative_prompt, steps=req.steps, sampler=req.sampler_name, schedule_type=req.scheduler,
        cfg_scale=req.cfg_scale, seed=g.seeds[index], width=req.width, height=req.height,
        model_name=g.model_name, model_hash=g.model_hash, vae_name=g.vae_name, vae_hash=g.vae_hash,
        subseed=g.subseeds[index], subseed_strength=req.subseed_strength,
        denoising_strength=req.denoising_strength if req.task == "img2img" else None, clip_skip=req.clip_skip,
        rng=req.randn_source, lora_hashes=g.lora_hashes, ti_hashes=g.ti_hashes, version=VERSION)


def response(req: GenerationRequest, payload: dict, g: "Generated") -> dict:
    count = len(g.images)
    infotexts = [image_infotext(req, g, i) for i in range(count)]
    extra = {"Schedule type": req.scheduler, "Lora hashes": hashes_text(g.lora_hashes),
             "TI hashes": hashes_text(g.ti_hashes)}
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * count,
        "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * count,
        "seed": g.seeds[0], "all_seeds": g.seeds, "subseed": g.subseeds[0], "all_subseeds": g.subseeds,
        "subseed_strength": req.subseed_strength, "width": req.width, "height": req.height,
        "sampler_name": req.sampler_name, "cfg_scale": req.cfg_scale, "steps": req.steps,
        "batch_size": req.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": g.model_name, "sd_model_hash": g.model_hash,
        "sd_vae_name": g.vae_name, "sd_vae_hash": g.vae_hash,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": req.denoising_strength if req.task == "img2img" else None,
        "extra_generation_params": {k: v for k, v in extra.items() if v},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": req.clip_skip,
        "is_using_inpainting_conditioning": False, "version": VERSION,
    }
    parameters = dict(payload)
    parameters.update(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps,
                      sampler_name=req.sampler_name, scheduler=req.scheduler, cfg_scale=req.cfg_scale,
                      width=req.width, height=req.height, seed=req.seed, subseed=req.subseed,
                      subseed_strength=req.subseed_strength, batch_size=req.batch_size, n_iter=req.n_iter)
    if req.task == "img2img":  # the WebUI leaves the (large) input images out of the echo
        parameters.update(init_images=None, mask=None, denoising_strength=req.denoising_strength)
    images = [png_base64(im, text) for im, text in zip(g.images, infotexts)] if req.send_images else []
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}
