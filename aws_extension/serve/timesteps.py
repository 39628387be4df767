"""The WebUI's timestep samplers, DDIM and UniPC, with its own rules (not diffusers' pipelines'):

- the timesteps: 1, 1 + 1000 // steps, ... (at most 999), walked from the top;
- txt2img starts from the seed's noise as it is; img2img from the init latent noised to the timestep one past
  the int(strength x steps) first ones, and walks those;
- DDIM (eta 0) steps from each timestep to the one below it and stops at the lowest, 1: one model call fewer than
  steps (Song et al. 2020, "Denoising Diffusion Implicit Models");
- UniPC (Zhao et al. 2023: order 3, variant bh1, predicting the clean latent, lower orders at the end) steps evenly
  in time from the top timestep, 999 or the img2img one, down to 0, where it ends at the smallest noise level;
- with a mask, the latent the model sees keeps the init latent where the mask keeps the picture (these samplers
  blend before the model, the k-diffusion ones after).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .ksampling import Blend, Guidance

TIMESTEP_SAMPLERS = ("ddim", "unipc")


def webui_timesteps(steps: int) -> torch.Tensor:
    return (torch.arange(0, 1000, 1000 // steps) + 1).clamp(0, 999)


class NoisePredictor:
    """(latent, timestep) -> the guided noise estimate, as the WebUI's timestep denoiser gives it."""

    def __init__(self, guidance: Guidance, alphas_cumprod: torch.Tensor, v_prediction: bool = False,
                 blend: Optional[Blend] = None):
        self.guidance, self.alphas, self.v, self.blend = guidance, alphas_cumprod, v_prediction, blend

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        seen = self.blend(x) if self.blend else x
        out = self.guidance(seen, torch.tensor([float(t)], device=x.device))
        if self.v:  # v-prediction: the noise from v and the latent the model saw
            a = self.alphas[int(t)]
            out = a.sqrt() * out + (1 - a).sqrt() * seen
        return out


def run(kind: str, predict: NoisePredictor, noise: torch.Tensor, init: Optional[torch.Tensor], steps: int,
        strength: Optional[float], alphas: torch.Tensor, on_step: Callable[[int], None]) -> torch.Tensor:
    """The final latent of DDIM or UniPC from the seed's noise (txt2img) or init + noise (img2img)."""
    timesteps = webui_timesteps(steps)
    x = noise
    if init is not None:
        t_enc = int(min(strength, 0.999) * steps)
        a = alphas[timesteps[t_enc]]
        x = init * a.sqrt() + noise * (1 - a).sqrt()
        timesteps = timesteps[:t_enc]
    if kind == "ddim":
        return ddim(predict, x, timesteps, alphas, on_step)
    if not len(timesteps):  # a strength below 1 / steps leaves nothing to walk (the WebUI's UniPC fails there)
        return x
    top = 999.0 if init is None else float(timesteps[-1])
    return unipc(predict, x, top, len(timesteps), alphas, on_step)


def ddim(predict: NoisePredictor, x: torch.Tensor, timesteps: torch.Tensor, alphas: torch.Tensor,
         on_step: Callable[[int], None]) -> torch.Tensor:
    for i in range(len(timesteps) - 1):
        on_step(i)
        index = len(timesteps) - 1 - i
        eps = predict(x, int(timesteps[index]))
        a, a_prev = float(alphas[timesteps[index]]), float(alphas[timesteps[index - 1]])
        clean = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        x = a_prev ** 0.5 * clean + (1 - a_prev) ** 0.5 * eps
    return x


def sigma_at(alphas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """k-diffusion's sigma at fractional timesteps, log alpha interpolated linearly as UniPC's discrete schedule
    does."""
    log_alpha = 0.5 * alphas.double().log()
    below = t.floor().long().clamp(0, len(alphas) - 1)
    above = (below + 1).clamp(max=len(alphas) - 1)
    frac = (t.double() - below)
    a2 = (2 * ((1 - frac) * log_alpha[below] + frac * log_alpha[above])).exp()
    return ((1 - a2) / a2).sqrt().float()


def unipc(predict: NoisePredictor, x: torch.Tensor, top: float, steps: int, alphas: torch.Tensor,
          on_step: Callable[[int], None]) -> torch.Tensor:
    """diffusers' UniPC update rule (the authors' bh1 predictor-corrector) on the WebUI's time grid: model times
    evenly from top down to 0, fractional where they fall so, and the noise level there."""
    import diffusers

    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=len(alphas), trained_betas=_betas(alphas).tolist(), solver_order=3, solver_type="bh1",
        predict_x0=True, lower_order_final=True, final_sigmas_type="sigma_min", timestep_spacing="linspace")
    scheduler.set_timesteps(steps)
    times = torch.linspace(top, 0, steps + 1, dtype=torch.float64)
    scheduler.timesteps = times[:-1].float()
    scheduler.sigmas = sigma_at(alphas, times)
    for i, t in enumerate(scheduler.timesteps):
        on_step(i)
        x = scheduler.step(predict(x, float(t)), t, x).prev_sample
    return x


def _betas(alphas: torch.Tensor) -> torch.Tensor:
    previous = torch.cat([alphas.new_ones(1), alphas[:-1]])
    return (1 - alphas.double() / previous.double())
