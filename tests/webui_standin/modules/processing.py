"""Stand-in: the processing objects of WebUI 1.10's modules/processing.py, as a script's run(p) receives them.

The fields are 1.10's dataclass fields with their defaults (those a script reads, and those Processed reads);
nothing generates here. Processed takes the same constructor arguments and keeps what it keeps in 1.10.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from modules import shared


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    eta: float = None
    denoising_strength: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False

    comments: dict = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    all_prompts: list = field(default=None, init=False)  # filled by process_images, which a dropdown script skips
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    user: str = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)

    def __post_init__(self):
        self.comments = {}
        if self.styles is None:
            self.styles = []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        if not self.seed_enable_extras:
            self.subseed = -1
            self.subseed_strength = 0
            self.seed_resize_from_h = 0
            self.seed_resize_from_w = 0

    def comment(self, text):
        self.comments[text] = 1

    def close(self):
        pass


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str = None


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None  # a property over mask_blur_x/y in 1.10; setting it sets both
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Image.Image = None
    force_task_id: str = None

    image_mask: Any = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask  # the mask given is kept as image_mask
        self.mask = None
        if isinstance(self.mask_blur, int):
            self.mask_blur_x = self.mask_blur_y = self.mask_blur
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = 1.0  # opts.initial_noise_multiplier's default


def create_binary_mask(image, round=True):  # the WebUI names it so
    """The mask as one channel: the alpha of a transparent RGBA image, else its grey levels."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round else alpha
    return image.convert("L")


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="",
                 extra_images_list=None):
        self.images = images_list
        self.extra_images = extra_images_list or []
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)  # 1.10 reads p's, not the argument
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = shared.opts.face_restoration_model if p.restore_faces else None
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.sd_vae_name = p.sd_vae_name
        self.sd_vae_hash = p.sd_vae_hash
        self.seed_resize_from_w = p.seed_resize_from_w
        self.seed_resize_from_h = p.seed_resize_from_h
        self.denoising_strength = getattr(p, "denoising_strength", None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles = p.styles
        self.job_timestamp = shared.state.job_timestamp
        self.clip_skip = shared.opts.CLIP_stop_at_last_layers
        self.is_using_inpainting_conditioning = p.is_using_inpainting_conditioning

        self.prompt = self.prompt if not isinstance(self.prompt, list) else self.prompt[0]
        self.negative_prompt = self.negative_prompt if not isinstance(self.negative_prompt, list) \
            else self.negative_prompt[0]
        self.seed = int(self.seed if not isinstance(self.seed, list) else self.seed[0]) if self.seed is not None else -1
        self.subseed = int(self.subseed if not isinstance(self.subseed, list) else self.subseed[0]) \
            if self.subseed is not None else -1

        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = "v1.10.1"

    def js(self):
        """The generation info JSON the gallery and "reuse seed" read (a subset of 1.10's keys)."""
        keys = ("all_prompts", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
                "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
                "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "denoising_strength",
                "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
                "clip_skip", "version")
        obj = {"prompt": self.all_prompts[0], "negative_prompt": self.all_negative_prompts[0],
               **{k: getattr(self, k) for k in keys}}
        return json.dumps(obj, default=lambda o: None)
