"""Stand-in: the WebUI's shared state; the test replaces cmd_opts with its own parsed arguments."""

import argparse

from modules.options import OptionInfo, Options  # noqa: F401 - the WebUI re-exports OptionInfo here
from modules.shared_state import State

cmd_opts = argparse.Namespace()
# WebUI 1.10's defaults of the options the extension reads (config.json holds them once saved)
opts = Options({
    "samples_save": True,
    "samples_format": "png",
    "CLIP_stop_at_last_layers": 1,
    "img2img_background_color": "#ffffff",
    "outdir_samples": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "tiling": False,
    "randn_source": "GPU",
})
state = State()  # the WebUI assigns it at start-up (shared_init.initialize)
