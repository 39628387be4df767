"""Same seed, same picture for the samplers whose details diffusers' pipelines do not share with the WebUI: DPM++ SDE
(a Brownian tree per image), the timestep samplers DDIM and UniPC (the WebUI's own timestep grid, txt2img and
img2img), and masks (the WebUI's blend of the init latent), each against the algorithm written out here or the
timesteps the WebUI's code walks, on the tiny SD 1.x model, CPU fp32."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from aws_extension.contract.request import parse_request
from aws_extension.serve.masks import prepare
from aws_extension.serve.prompts import encode_prompts
from test_fidelity import SAME_PICTURE_DB, init_png, k_sample, psnr, request


def img2img(cloud, **payload):
    base = {"prompt": "a cat", "steps": 8, "width": 64, "height": 64, "cfg_scale": 5.0, "seed": 77,
            "denoising_strength": 0.6, "init_images": [init_png()]}
    return parse_request({"task": "img2img", "payload": {**base, **payload}, "models": {"checkpoint": cloud["tiny-sd1"]}})


def png(pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def right_half_mask() -> str:
    pixels = np.zeros((64, 64), np.uint8)
    pixels[:, 32:] = 255
    return png(pixels)


@torch.inference_mode()
def init_latent(pipe, req) -> torch.Tensor:
    """The init image's encoding as the server draws it (the encoding's noise from the image's seed)."""
    image = Image.open(io.BytesIO(base64.b64decode(req.init_images[0]))).convert("RGB").resize((req.width, req.height))
    posterior = pipe.vae.encode(pipe.image_processor.preprocess([image])).latent_dist
    draw = torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(req.seed))[None]
    return (posterior.mean + posterior.std * draw) * pipe.vae.config.scaling_factor


@torch.inference_mode()
def decoded(pipe, x: torch.Tensor) -> np.ndarray:
    image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0])


def ddim_reference(unet, embeds: dict, alphas: torch.Tensor, size: int, steps: int, cfg: float, seed: int,
                   init: torch.Tensor = None, strength: float = 1.0, keep: torch.Tensor = None) -> torch.Tensor:
    """The WebUI's DDIM (eta 0) from Song et al.'s update: timesteps 1, 1 + 1000 // steps, ...; from the top one
    down to 1. img2img: the init noised to the timestep past the int(strength x steps) first, which it walks.
    A mask (keep) holds the init latent in what the model sees, and in the result."""
    timesteps = [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]
    x = torch.randn((unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed))[None]
    if init is not None:
        t_enc = int(min(strength, 0.999) * steps)
        a = alphas[timesteps[t_enc]]
        x = init * a.sqrt() + x * (1 - a).sqrt()
        timesteps = timesteps[:t_enc]
    both = torch.cat([embeds["negative_prompt_embeds"], embeds["prompt_embeds"]])
    for j in range(len(timesteps) - 1, 0, -1):
        seen = x if keep is None else init * keep + x * (1 - keep)
        uncond, cond = unet(torch.cat([seen, seen]), torch.tensor([timesteps[j]] * 2),
                            encoder_hidden_states=both).sample.chunk(2)
        eps = uncond + cfg * (cond - uncond)
        a, a_prev = alphas[timesteps[j]], alphas[timesteps[j - 1]]
        clean = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * clean + (1 - a_prev).sqrt() * eps
    return x if keep is None else init * keep + x * (1 - keep)


def test_dpmpp_sde_draws_each_images_noise_from_its_own_brownian_tree(engine, cloud):
    """A batch of two: image i is the picture of seed + i alone (the WebUI seeds one tree per image, so a seed gives
    the same picture in any batch), each against DPM++ SDE written out with Karras sigmas (its Automatic)."""
    req = request(cloud, sampler_name="DPM++ SDE", negative_prompt="blurry", batch_size=2)
    ours = [np.asarray(i.convert("RGB")) for i in engine.generate(req).images]
    pipe = engine.loaded.pipe
    with torch.inference_mode():
        embeds = encode_prompts(pipe, req.prompt, req.negative_prompt)
        for i, picture in enumerate(ours):
            x = k_sample("dpmpp_sde", pipe.unet, embeds, pipe.scheduler.alphas_cumprod, 8, req.steps, req.cfg_scale,
                         req.seed + i, karras=True)
            print(f"DPM++ SDE image {i}: {psnr(picture, decoded(pipe, x)):.1f} dB")
            assert psnr(picture, decoded(pipe, x)) >= SAME_PICTURE_DB


@pytest.mark.parametrize("sampler_name, reference", [("DPM++ SDE", "dpmpp_sde"), ("Euler a", "euler_a")])
def test_k_diffusion_img2img_with_a_mask_blends_each_estimate_and_keeps_the_rest(engine, cloud, sampler_name,
                                                                                reference):
    req = img2img(cloud, sampler_name=sampler_name, mask=right_half_mask(), mask_blur=0)
    ours = np.asarray(engine.generate(req).images[0].convert("RGB"))
    pipe = engine.loaded.pipe
    keep = torch.zeros((1, 4, 8, 8))
    keep[..., :4] = 1  # the left half of the latent stays the init image's
    with torch.inference_mode():
        init = init_latent(pipe, req)
        x = k_sample(reference, pipe.unet, encode_prompts(pipe, "a cat", ""), pipe.scheduler.alphas_cumprod, 8, 8,
                     5.0, 77, karras=reference == "dpmpp_sde", init=init, strength=0.6, keep=keep)
    theirs = decoded(pipe, x)
    user = np.asarray(Image.open(io.BytesIO(base64.b64decode(req.init_images[0]))).convert("RGB"))
    assert np.array_equal(ours[:, :32], user[:, :32])  # outside the mask: the user's own pixels
    print(f"img2img {sampler_name} with a mask: {psnr(ours[:, 32:], theirs[:, 32:]):.1f} dB")
    assert psnr(ours[:, 32:], theirs[:, 32:]) >= SAME_PICTURE_DB


@pytest.mark.parametrize("task", ["txt2img", "img2img", "img2img with a mask"])
def test_ddim_is_the_webuis_with_its_timesteps(engine, cloud, task):
    req = request(cloud, sampler_name="DDIM", steps=8) if task == "txt2img" else \
        img2img(cloud, sampler_name="DDIM", **({"mask": right_half_mask(), "mask_blur": 0} if "mask" in task else {}))
    ours = np.asarray(engine.generate(req).images[0].convert("RGB"))
    pipe = engine.loaded.pipe
    keep = None
    if "mask" in task:
        keep = torch.zeros((1, 4, 8, 8))
        keep[..., :4] = 1
    with torch.inference_mode():
        embeds = encode_prompts(pipe, req.prompt, req.negative_prompt)
        init = init_latent(pipe, req) if req.task == "img2img" else None
        x = ddim_reference(pipe.unet, embeds, pipe.scheduler.alphas_cumprod, 8, 8, req.cfg_scale, req.seed, init,
                           req.denoising_strength or 1.0, keep)
    theirs, drawn = decoded(pipe, x), slice(32 if keep is not None else 0, 64)  # the mask's half, or all
    print(f"DDIM {task}: {psnr(ours[:, drawn], theirs[:, drawn]):.1f} dB")
    assert psnr(ours[:, drawn], theirs[:, drawn]) >= SAME_PICTURE_DB


def unet_times(engine, req) -> list:
    """The timesteps the UNet is called at, in order (the batch's first)."""
    seen = []
    unet = engine.loaded.pipe.unet if engine.loaded else None

    def hook(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append(round(float(t.reshape(-1)[0]), 3))

    if unet is None:
        engine.generate(req)
        unet = engine.loaded.pipe.unet
    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        engine.generate(req)
    finally:
        handle.remove()
    return seen


def test_timestep_samplers_walk_the_webuis_timesteps(engine, cloud):
    """What the WebUI's DDIM and UniPC call the model at, for 8 steps: DDIM from 876 down by 125 to 126 (7 calls);
    UniPC evenly from 999 to 0 (8 calls); img2img at 0.6: int(4.8) = 4 timesteps, the init noised to the 5th (501),
    DDIM walking 376, 251, 126, UniPC evenly from 376 to 0."""
    assert unet_times(engine, request(cloud, sampler_name="DDIM", steps=8)) == [876, 751, 626, 501, 376, 251, 126]
    assert unet_times(engine, request(cloud, sampler_name="UniPC", steps=8)) == \
        [round(999 - 999 / 8 * i, 3) for i in range(8)]
    assert unet_times(engine, img2img(cloud, sampler_name="DDIM")) == [376, 251, 126]
    assert unet_times(engine, img2img(cloud, sampler_name="UniPC")) == [376, 282, 188, 94]
    # a strength below 1 / steps: nothing to walk, the picture is the init image's (not an error)
    assert unet_times(engine, img2img(cloud, sampler_name="UniPC", denoising_strength=0.1)) == []


def test_unipc_on_whole_timesteps_is_the_authors_sampler_as_diffusers_runs_it(engine, cloud):
    """At 9 steps the WebUI's grid (999, 888, ..., 111, then 0) falls on whole timesteps, where diffusers' UniPC
    (order 3, bh1, predicting the clean latent, ending at the smallest noise level) steps the same times: the two
    must give one picture."""
    import diffusers

    req = request(cloud, sampler_name="UniPC", steps=9, negative_prompt="blurry")
    ours = np.asarray(engine.generate(req).images[0].convert("RGB"))
    pipe = engine.loaded.pipe
    scheduler = diffusers.UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, solver_order=3, solver_type="bh1", predict_x0=True, lower_order_final=True,
        final_sigmas_type="sigma_min", timestep_spacing="linspace", steps_offset=0)
    with torch.inference_mode():
        embeds = encode_prompts(pipe, req.prompt, req.negative_prompt)
        start = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(req.seed))[None]
        run = diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})
        run.set_progress_bar_config(disable=True)
        theirs = np.asarray(run(prompt_embeds=embeds["prompt_embeds"], negative_prompt_embeds=embeds[
            "negative_prompt_embeds"], num_inference_steps=9, guidance_scale=req.cfg_scale, latents=start, width=64,
            height=64).images[0])
    print(f"UniPC vs diffusers' UniPC: {psnr(ours, theirs):.1f} dB")
    assert psnr(ours, theirs) >= SAME_PICTURE_DB


def test_mask_blur_is_opencvs_gaussian_before_the_resize():
    """A one-pixel line blurred with mask_blur 4 spreads over OpenCV's kernel, 2 x int(2.5 x 4 + 0.5) + 1 = 21
    pixels, symmetrically; the overlay doubles the mask (the drawn picture shows fully from half strength)."""
    pixels = np.zeros((64, 64), np.uint8)
    pixels[:, 31] = 255
    mask = prepare(Image.open(io.BytesIO(base64.b64decode(png(pixels)))), 64, 64, blur=4, invert=False)
    row = np.asarray(mask.image, dtype=np.int32)[32]
    assert row[31] == row.max() and np.array_equal(row[21:31], row[32:42][::-1])
    assert (row[21:42] > 0).all() and (row[:20] == 0).all() and (row[43:] == 0).all()
    assert np.array_equal(np.asarray(mask.overlay), np.clip(np.asarray(mask.image, np.int32) * 2, 0, 255))
    inverted = prepare(Image.open(io.BytesIO(base64.b64decode(png(pixels)))), 64, 64, blur=0, invert=True)
    assert np.asarray(inverted.image)[0, 31] == 0 and np.asarray(inverted.image)[0, 0] == 255
