"""The WebUI's k-diffusion samplers (Euler, Euler a, DPM++ 2M, DPM++ SDE), written from the published algorithms
(k-diffusion: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"; DPM-Solver++,
Lu et al. 2022) and the WebUI's rules:

- the schedule: evenly spaced timesteps 999..0 interpolated in log sigma ("Automatic"), or Karras's / exponential
  spacing between the model's smallest and largest sigma; then zero;
- txt2img starts from the seed's noise times the first sigma;
- img2img runs the last int(strength x steps) + 1 steps of that schedule, from the init image's encoding plus the
  seed's first noise times the sigma there;
- an ancestral sampler's step noise continues from each image's own generator; DPM++ SDE's comes from a Brownian
  tree per image, seeded by the image's seed and spanning the whole schedule's sigmas;
- with a mask, each step's estimate keeps the init image's latent where the mask keeps the picture.

The model is the WebUI's CompVis denoiser: input scaled by 1/sqrt(sigma^2 + 1), the timestep found back from sigma
by interpolating log sigma, and classifier-free guidance on a batch of [uncond, cond].
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

RHO = 7.0  # Karras et al.'s schedule exponent


def alphas_cumprod(config: dict) -> torch.Tensor:
    """The training noise schedule of a checkpoint's scheduler config (SD's "scaled_linear", or "linear"), computed
    in float64 and kept in float32, as the WebUI's model does."""
    n, start, end = config.get("num_train_timesteps", 1000), config["beta_start"], config["beta_end"]
    if config.get("beta_schedule", "scaled_linear") == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


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


class Guidance:
    """The UNet with classifier-free guidance: (its input, timestep) -> uncond + cfg x (cond - uncond). uncond and
    cond: the text conditioning of each half ({"context": states, "added": SDXL's extra inputs or None}); of one
    length they go through the UNet as one batch, of two (a long prompt, a shorter negative one) as two calls, as
    the WebUI does."""

    def __init__(self, unet, uncond: dict, cond: dict, cfg: float):
        self.unet, self.uncond, self.cond, self.cfg = unet, uncond, cond, cfg

    def _unet(self, x: torch.Tensor, t: torch.Tensor, half: dict) -> torch.Tensor:
        kwargs = {"added_cond_kwargs": half["added"]} if half.get("added") else {}
        context = half["context"]
        # a contiguous timestep: a compiled graph is guarded on strides, and its warm-up ran on contiguous copies
        t = t.reshape(-1).expand(x.shape[0]).contiguous().to(x.device)
        return self.unet(x.to(context.dtype), t, encoder_hidden_states=context, **kwargs).sample.float()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.uncond["context"].shape == self.cond["context"].shape:
            both = {"context": torch.cat([self.uncond["context"], self.cond["context"]]), "added": None}
            if self.cond.get("added"):
                both["added"] = {k: torch.cat([self.uncond["added"][k], self.cond["added"][k]])
                                 for k in self.cond["added"]}
            uncond, cond = self._unet(torch.cat([x, x]), t, both).chunk(2)
        else:
            uncond, cond = self._unet(x, t, self.uncond), self._unet(x, t, self.cond)
        return uncond + self.cfg * (cond - uncond)


class Blend:
    """A mask's hold on the latents: keep is 1 where the init image stays (the WebUI's p.mask), 0 where the
    picture is drawn anew."""

    def __init__(self, init: torch.Tensor, keep: torch.Tensor):
        self.init, self.keep = init, keep

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * (1 - self.keep) + self.init * self.keep


class Denoiser:
    """sigma -> the model's estimate of the clean latent (k-diffusion's CompVis denoiser over Guidance); with a
    mask, the estimate is blended with the init latent after each call, as the WebUI's k-diffusion samplers do."""

    def __init__(self, guidance: Guidance, alphas_cumprod: torch.Tensor, v_prediction: bool = False,
                 blend: Optional[Blend] = None):
        self.guidance, self.v, self.blend = guidance, v_prediction, blend
        self.logs = log_sigmas(alphas_cumprod).to(guidance.cond["context"].device)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log = sigma.log()
        at_or_below = ((log - self.logs) >= 0).nonzero()  # none: below the smallest sigma, by rounding
        i = min(int(at_or_below.max()) if len(at_or_below) else 0, len(self.logs) - 2)
        w = ((self.logs[i] - log) / (self.logs[i] - self.logs[i + 1])).clamp(0, 1)
        return (i + w).reshape(1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        guided = self.guidance(x / (sigma ** 2 + 1) ** 0.5, self.timestep(sigma))
        if self.v:  # a v-prediction model: the clean latent from x and v
            denoised = x * (1 / (sigma ** 2 + 1)) - guided * (sigma / (sigma ** 2 + 1) ** 0.5)
        else:
            denoised = x - guided * sigma
        return self.blend(denoised) if self.blend else denoised


class BrownianNoise:
    """DPM++ SDE's noise as the WebUI draws it: one Brownian tree per image (torchsde's, seeded with the image's
    seed) over [smallest sigma, largest sigma] of the whole schedule; the noise between two sigmas is the tree's
    increment from the first to the second, over the square root of their distance."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: List[int]):
        import torchsde

        low, high = sigmas[sigmas > 0].min(), sigmas.max()
        zero = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(low, zero, high, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        lo, hi = (sigma, after) if sigma < after else (after, sigma)
        sign = 1 if sigma < after else -1
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        return w / (after - sigma).abs().sqrt()


def ancestral(sigma: torch.Tensor, after: torch.Tensor, eta: float = 1.0):
    """(sigma down, sigma up): an ancestral step to `after` split into a deterministic step and fresh noise."""
    up = torch.minimum(after, eta * (after ** 2 * (sigma ** 2 - after ** 2) / sigma ** 2) ** 0.5)
    return (after ** 2 - up ** 2) ** 0.5, up


def sample(kind: str, denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor,
           next_noise: Optional[Callable[[], torch.Tensor]] = None, on_step: Callable[[int], None] = lambda i: None,
           brownian: Optional[BrownianNoise] = None):
    """Run a k-diffusion sampler from x at sigmas[0] down to sigmas[-1]; next_noise() gives an ancestral step's
    noise, one draw per image from each image's own generator; brownian, DPM++ SDE's."""
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
        elif kind == "dpmpp_sde":
            x = d if after == 0 else _sde_step(denoise, x, d, sigma, after, brownian)
        else:
            down, up = ancestral(sigma, after) if kind == "euler_a" else (after, torch.zeros(()))
            x = x + (x - d) / sigma * (down - sigma)
            if kind == "euler_a" and after > 0:
                x = x + next_noise().to(x.device) * up
    return x


def _sde_step(denoise: Callable, x: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor, after: torch.Tensor,
              noise: BrownianNoise) -> torch.Tensor:
    """One DPM++ SDE step (r = 1/2, eta = 1): an ancestral half step in log sigma to the midpoint, the model there,
    then the full step from the midpoint's estimate, each with its Brownian increment."""
    t, t_next = -sigma.log(), -after.log()
    mid = (t + (t_next - t) / 2).neg().exp()
    down, up = ancestral(sigma, mid)
    x_mid = (down / sigma) * x - torch.expm1(down.log() - sigma.log()) * d
    x_mid = x_mid + noise(sigma, mid).to(x.device) * up
    d_mid = denoise(x_mid, mid)
    down, up = ancestral(sigma, after)
    x = (down / sigma) * x - torch.expm1(down.log() - sigma.log()) * d_mid
    return x + noise(sigma, after).to(x.device) * up
