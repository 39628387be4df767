"""The WebUI's sampler + schedule type, as a diffusers scheduler built from the checkpoint's own config.

The WebUI's k-diffusion samplers space their sigmas evenly over the model's timesteps ("linspace" in
diffusers' terms); its DDIM and UniPC use the "leading" spacing with an offset of one. A combination diffusers
cannot give (Euler a with Karras sigmas, say) is refused by request.py rather than approximated.
"""

from __future__ import annotations

from typing import Optional

import diffusers


# internal sampler id -> (diffusers class, extra config); request.py refuses the schedules a class cannot do
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": False, "clip_sample": False}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
TIMESTEP_SAMPLERS = {"ddim", "unipc"}


def make_scheduler(base_config: dict, sampler_id: str, schedule: str, seed: Optional[int] = None):
    """A fresh scheduler (they keep per-run state, so one per generation) for the checkpoint's noise schedule."""
    class_name, extra = SCHEDULERS[sampler_id]
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"):
        config.pop(flag, None)
    config.update(extra)
    if sampler_id in TIMESTEP_SAMPLERS:
        config.update(timestep_spacing="leading", steps_offset=1)
    else:
        config.update(timestep_spacing="linspace", steps_offset=0)
    if schedule == "karras":
        config["use_karras_sigmas"] = True
    elif schedule == "exponential":
        config["use_exponential_sigmas"] = True
    if sampler_id == "dpmpp_sde" and seed is not None:
        config["noise_sampler_seed"] = seed  # its Brownian tree is seeded like the WebUI's, by the image seed
    cls = getattr(diffusers, class_name)
    return cls.from_config(config)
