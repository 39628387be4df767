"""The WebUI's sampler + schedule type, as a diffusers scheduler built from the checkpoint's own config.

The WebUI's k-diffusion samplers space their sigmas evenly over the model's timesteps ("linspace" in
diffusers' terms); its DDIM uses the "leading" spacing with an offset of one. Its UniPC (the UniPC authors' own
sampler: order 3, variant bh1, "time_uniform") steps evenly from timestep 999 down to 0 and ends at the smallest
noise level, not at zero. A combination diffusers cannot give (Euler a with Karras sigmas, say) is refused by
request.py rather than approximated.
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
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "predict_x0": True,
                                          "lower_order_final": True, "final_sigmas_type": "sigma_min"}),
}
LEADING = {"ddim"}


def make_scheduler(base_config: dict, sampler_id: str, schedule: str, seed: Optional[int] = None):
    """A fresh scheduler (they keep per-run state, so one per generation) for the checkpoint's noise schedule."""
    class_name, extra = SCHEDULERS[sampler_id]
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"):
        config.pop(flag, None)
    config.update(extra)
    if sampler_id in LEADING:
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
