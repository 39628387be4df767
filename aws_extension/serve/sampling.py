"""Pictures the WebUI's way, on diffusers' models: the text conditioning, the starting latent (the seed's noise, or
the init image's encoding with it), the WebUI's sampler (ksampling.py, timesteps.py), a mask's blend, the VAE.
diffusers' pipelines are used for their models only: their samplers differ from the WebUI's in the details that
decide which picture a seed gives."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from . import timesteps
from .ksampling import BrownianNoise, Blend, Denoiser, Guidance, img2img_sigmas, sample, schedule
from .masks import Mask


def conditioning(req, embeds: dict, n: int) -> List[dict]:
    """[uncond, cond]: each half's text states, and SDXL's pooled text and size as the WebUI conditions it."""
    halves = []
    for prefix in ("negative_", ""):
        context = embeds[prefix + "prompt_embeds"].repeat(n, 1, 1)
        added = None
        if "pooled_prompt_embeds" in embeds:
            size = torch.tensor([[req.height, req.width, 0, 0, req.height, req.width]], dtype=context.dtype,
                                device=context.device).repeat(n, 1)
            added = {"text_embeds": embeds[prefix + "pooled_prompt_embeds"].repeat(n, 1), "time_ids": size}
        halves.append({"context": context, "added": added})
    return halves


def encode(pipe, inits: list, seeds: List[int], device: str) -> torch.Tensor:
    """The init images' latents. The encoding's own noise: the WebUI draws it from torch's global generator, whose
    state an infotext does not carry; here each image's seed fixes it (the spread is small beside the sampler's)."""
    vae = pipe.vae
    posterior = vae.encode(pipe.image_processor.preprocess(inits).to(device, vae.dtype)).latent_dist
    draws = torch.stack([torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(s))
                         for s in seeds]).to(posterior.mean.device, posterior.mean.dtype)
    return ((posterior.mean + posterior.std * draws) * vae.config.scaling_factor).float()


def generate(pipe, req, embeds: dict, inits: Optional[list], mask: Optional[Mask], noise, seeds: List[int],
             alphas: torch.Tensor, v_prediction: bool, device: str, on_step: Callable[[int], None]) -> list:
    """PIL pictures for one batch (one image per seed)."""
    n = len(seeds)
    shape = (pipe.unet.config.in_channels, req.height // pipe.vae_scale_factor, req.width // pipe.vae_scale_factor)
    init = encode(pipe, inits, seeds, device) if inits is not None else None
    guidance = Guidance(pipe.unet, *conditioning(req, embeds, n), req.cfg_scale)
    blend = Blend(init, mask.keep(*shape).to(device)) if mask is not None else None
    first = noise.first(shape).to(device, torch.float32)
    if req.sampler_id in timesteps.TIMESTEP_SAMPLERS:
        predict = timesteps.NoisePredictor(guidance, alphas.to(device), v_prediction, blend)
        x = timesteps.run(req.sampler_id, predict, first, init, req.steps, req.denoising_strength, alphas, on_step)
    else:
        full = schedule(alphas, req.steps, req.schedule).to(device)
        sigmas = full if init is None else img2img_sigmas(alphas, req.steps, req.denoising_strength,
                                                          req.schedule).to(device)
        x = first * sigmas[0] + (init if init is not None else 0)
        brownian = BrownianNoise(x, full, seeds) if req.sampler_id == "dpmpp_sde" else None
        denoise = Denoiser(guidance, alphas, v_prediction, blend)
        x = sample(req.sampler_id, denoise, x, sigmas, lambda: noise.next(shape), on_step, brownian)
    if blend is not None:  # the WebUI blends the final latent too
        x = blend(x)
    vae = pipe.vae
    decoded = vae.decode((x / vae.config.scaling_factor).to(vae.dtype)).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")
