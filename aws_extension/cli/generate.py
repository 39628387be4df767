"""`generate`: a WebUI API payload from the options, one invocation, the PNGs saved with their infotexts."""

from __future__ import annotations

import argparse
import sys
from typing import List

from ..core.errors import UserError
from .output import EXIT_OK, Cli

def _image_base64(path: str, option: str) -> str:
    import base64

    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise UserError(f"{option} {path}: {exc.strerror or exc}") from None
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        raise UserError(f"{option} {path}: not a PNG or JPEG image")
    return base64.b64encode(data).decode("ascii")


def generate_payload(a: argparse.Namespace) -> dict:
    """The WebUI API payload from the options given; the others keep the server's (the WebUI API's) defaults."""
    if (a.mask or a.denoising_strength is not None) and not a.init_image:
        raise UserError(f"{'--mask' if a.mask else '--denoising-strength'} is for img2img: add --init-image.")
    options = {"prompt": a.prompt, "negative_prompt": a.negative_prompt, "steps": a.steps, "sampler_name": a.sampler,
               "scheduler": a.scheduler, "cfg_scale": a.cfg_scale, "width": a.width, "height": a.height,
               "seed": a.seed, "batch_size": a.batch_size, "denoising_strength": a.denoising_strength}
    payload = {k: v for k, v in options.items() if v is not None}
    if a.init_image:
        payload["init_images"] = [_image_base64(a.init_image, "--init-image")]
        if a.mask:
            payload["mask"] = _image_base64(a.mask, "--mask")
    return payload


def save_images(generation, out_dir: str) -> List[dict]:
    """PNGs as they came (infotext in their parameters chunk) named <seed>-<index>.png; never over another file."""
    from pathlib import Path

    from ..core.generation import png_parameters

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = generation.info.get("all_seeds") or []
    saved = []
    for index, png in enumerate(generation.images):
        seed = seeds[index] if index < len(seeds) else generation.info.get("seed", "image")
        path, n = folder / f"{seed}-{index}.png", 1
        while path.exists():
            n += 1
            path = folder / f"{seed}-{index}-{n}.png"
        path.write_bytes(png)
        saved.append({"path": str(path), "seed": seed, "infotext": png_parameters(png)})
    return saved


def cmd_generate(cli: Cli) -> int:
    from ..core.generation import invoke
    from ..core.models.lookup import resolve_models

    a = cli.args
    payload = generate_payload(a)
    models = resolve_models(cli.aws, a.checkpoint, a.vae, [a.prompt], [a.negative_prompt or ""])
    cli.watch_ctrl_c("Stopping the wait for the answer")
    generation = invoke(cli.aws, a.endpoint, "img2img" if a.init_image else "txt2img", payload, models,
                        on_state=lambda state, message: print(f"{a.endpoint}: {message}", file=sys.stderr, flush=True),
                        cancel=cli.cancel, timeout=a.timeout)
    saved = save_images(generation, a.out)
    cli.out(saved, lambda items: "\n".join(item["path"] for item in items) or "(no images)")
    return EXIT_OK
