"""The WebUI's k-diffusion samplers (Euler, Euler a, DPM++ 2M) where diffusers' cannot do what the WebUI does
(img2img; Euler a with another schedule or with NV noise), written from the published algorithms (k-diffusion:
Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"; DPM-Solver++, Lu et al.
2022) and the WebUI's rules:

- the schedule: evenly spaced timesteps 999..0 interpolated in log sigma ("Automatic"), or Karras's / exponential
  spacing between the model's smallest and largest sigma; then zero;
- txt2img starts from the seed's noise times the first sigma;
- img2img runs the last int(strength x steps) + 1 steps of that schedule, from the init image's encoding plus the
  seed's first noise times the sigma there;
- an ancestral sampler's step noise continues from each image's own generator.

The model is the WebUI's CompVis denoiser: input scaled by 1/sqrt(sigma^2 + 1), the timestep found back from sigma
by interpolating log sigma, and classifier-free guidance on a batch of [uncond, cond].
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

RHO = 7.0  # Karras et al.'s schedule exponent


def log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().float()


def schedule(alphas_cumprod: torch.Tensor, steps: int, kind: str = "default") -> torch.Tensor:
    """steps sigmas from the largest down, then 0 (steps + 1 values)."""
    logs = log_sigmas(alphas_cumprod)
    high, low = float(logs.max().exp()), float(logs.min().exp())
    if kind == "karras":
        ramp = torch.linspace(0, 1, steps)
        sigmas = (high ** (1 / RHO) + ramp * (low ** (1 / RHO) - high ** (1 / RHO))) ** RHO
    elif kind == "exponential":
        sigmas = torch.linspace(math.log(high), math.log(low), steps).exp()
    else:
        t = torch.linspace(len(logs) - 1, 0, steps)
        below = t.floor().long()
        above = (below + 1).clamp(max=len(logs) - 1)
        frac = t - below
        sigmas = ((1 - frac) * logs[below] + frac * logs[above]).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def img2img_sigmas(alphas_cumprod: torch.Tensor, steps: int, strength: float, kind: str) -> torch.Tensor:
    """The tail of the full schedule an img2img run takes: t_enc + 1 steps, t_enc = int(min(strength, 0.999) x steps)."""
    t_enc = int(min(strength, 0.999) * steps)
    return schedule(alphas_cumprod, steps, kind)[steps - t_enc - 1:]


class Denoiser:
    """sigma -> the model's estimate of the clean latent, with classifier-free guidance. uncond and cond: the UNet's
    text conditioning of each half ({"context": states, "added": SDXL's extra inputs or None}); of one length they go
    through the UNet as one batch, of two (a long prompt, a shorter negative one) as two calls, as the WebUI does."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, uncond: dict, cond: dict, cfg: float,
                 v_prediction: bool = False):
        self.unet, self.cfg, self.v = unet, cfg, v_prediction
        self.uncond, self.cond = uncond, cond
        self.logs = log_sigmas(alphas_cumprod).to(cond["context"].device)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log = sigma.log()
        at_or_below = ((log - self.logs) >= 0).nonzero()  # none: below the smallest sigma, by rounding
        i = min(int(at_or_below.max()) if len(at_or_below) else 0, len(self.logs) - 2)
        w = ((self.logs[i] - log) / (self.logs[i] - self.logs[i + 1])).clamp(0, 1)
        return (i + w).reshape(1)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, half: dict) -> torch.Tensor:
        kwargs = {"added_cond_kwargs": half["added"]} if half.get("added") else {}
        context = half["context"]
        return self.unet(x.to(context.dtype), t.expand(x.shape[0]).to(x.device), encoder_hidden_states=context,
                         **kwargs).sample.float()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        scaled = x / (sigma ** 2 + 1) ** 0.5
        t = self.timestep(sigma)
        if self.uncond["context"].shape == self.cond["context"].shape:
            both = {"context": torch.cat([self.uncond["context"], self.cond["context"]]), "added": None}
            if self.cond.get("added"):
                both["added"] = {k: torch.cat([self.uncond["added"][k], self.cond["added"][k]])
                                 for k in self.cond["added"]}
            uncond, cond = self._unet(torch.cat([scaled, scaled]), t, both).chunk(2)
        else:
            uncond, cond = self._unet(scaled, t, self.uncond), self._unet(scaled, t, self.cond)
        guided = uncond + self.cfg * (cond - uncond)
        if self.v:  # a v-prediction model: the clean latent from x and v
            return x * (1 / (sigma ** 2 + 1)) - guided * (sigma / (sigma ** 2 + 1) ** 0.5)
        return x - guided * sigma


def sample(kind: str, denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor,
           next_noise: Optional[Callable[[], torch.Tensor]] = None, on_step: Callable[[int], None] = lambda i: None):
    """Run a k-diffusion sampler from x at sigmas[0] down to sigmas[-1]; next_noise() gives an ancestral step's
    noise, one draw per image from each image's own generator."""
    previous = None
    for i in range(len(sigmas) - 1):
        on_step(i)
        sigma, after = sigmas[i], sigmas[i + 1]
        d = denoise(x, sigma)
        if kind == "dpmpp_2m":
            if after == 0:
                x = d
            else:
                h = sigma.log() - after.log()
                mixed = d
                if previous is not None:
                    r = (sigmas[i - 1].log() - sigma.log()) / h
                    mixed = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * previous
                x = (after / sigma) * x - torch.expm1(-h) * mixed
            previous = d
            continue
        up = torch.zeros(()) if kind == "euler" else \
            torch.minimum(after, (after ** 2 * (sigma ** 2 - after ** 2) / sigma ** 2) ** 0.5)
        down = (after ** 2 - up ** 2) ** 0.5
        x = x + (x - d) / sigma * (down - sigma)
        if kind == "euler_a" and after > 0:
            x = x + next_noise().to(x.device) * up
    return x


def generate(pipe, req, embeds: dict, inits: Optional[list], noise, seeds: List[int], alphas_cumprod: torch.Tensor,
             v_prediction: bool, device: str, on_step: Callable[[int], None]) -> list:
    """Pictures the WebUI's way: txt2img from the seeds' noise at the first sigma; img2img (inits: PIL images) from
    their encoding plus that noise at the sigma where the run starts; then the sampler to zero, and the VAE."""
    vae, n = pipe.vae, len(seeds)
    shape = (pipe.unet.config.in_channels, req.height // pipe.vae_scale_factor, req.width // pipe.vae_scale_factor)
    start = torch.zeros((n, *shape), device=device)
    if inits is not None:
        posterior = vae.encode(pipe.image_processor.preprocess(inits).to(device, vae.dtype)).latent_dist
        # the encoding's own noise: the WebUI draws it from torch's global generator, whose state an infotext does
        # not carry; here each image's seed fixes it (the spread is small beside the sampler's noise)
        draws = torch.stack([torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds]).to(posterior.mean.device, posterior.mean.dtype)
        start = ((posterior.mean + posterior.std * draws) * vae.config.scaling_factor).float()
    sigmas = schedule(alphas_cumprod, req.steps, req.schedule) if inits is None else \
        img2img_sigmas(alphas_cumprod, req.steps, req.denoising_strength, req.schedule)
    sigmas = sigmas.to(device)
    x = start + noise.first(shape).to(device, torch.float32) * sigmas[0]
    halves = []
    for prefix in ("negative_", ""):
        context = embeds[prefix + "prompt_embeds"]
        added = None
        if "pooled_prompt_embeds" in embeds:  # SDXL: the pooled text and the size, as the WebUI conditions it
            size = torch.tensor([[req.height, req.width, 0, 0, req.height, req.width]], dtype=context.dtype,
                                device=context.device).repeat(n, 1)
            added = {"text_embeds": embeds[prefix + "pooled_prompt_embeds"], "time_ids": size}
        halves.append({"context": context, "added": added})
    denoise = Denoiser(pipe.unet, alphas_cumprod, halves[0], halves[1], req.cfg_scale, v_prediction)
    x = sample(req.sampler_id, denoise, x, sigmas, lambda: noise.next(shape), on_step=on_step)
    decoded = vae.decode((x / vae.config.scaling_factor).to(vae.dtype)).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")
