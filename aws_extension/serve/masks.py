"""An img2img mask the WebUI's way (inpaint area "Whole picture", masked content "original"):

- the mask image becomes black and white (a sketch's alpha channel if it has one), inverted on request;
- it is blurred across, then down, by a Gaussian of sigma mask_blur over 2 x int(2.5 x blur + 0.5) + 1 pixels
  (OpenCV's GaussianBlur, whose border mirrors without repeating the edge), then resized to the picture;
- the sampler keeps the init latent where the mask, shrunk to the latent's size and rounded, is black;
- the decoded picture is laid under the init image, whose opacity is 1 - min(2 x mask, 1): what the mask
  leaves out stays the user's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch
from PIL import Image


@dataclass
class Mask:
    image: Image.Image  # "L", the picture's size, blurred: 255 where the picture is drawn anew
    overlay: Image.Image  # "L": where the generated picture shows through the init image

    def keep(self, channels: int, height: int, width: int) -> torch.Tensor:
        """1 where the sampler keeps the init latent, 0 where it draws; (channels, height, width)."""
        small = np.asarray(self.image.convert("RGB").resize((width, height)), dtype=np.float32)[..., 0] / 255
        return torch.from_numpy(1.0 - np.around(small)).expand(channels, height, width)

    def lay_under(self, images: List[Image.Image], inits: List[Image.Image]) -> List[Image.Image]:
        return [Image.composite(out.convert("RGB"), init, self.overlay) for out, init in zip(images, inits)]


def prepare(mask: Image.Image, width: int, height: int, blur: int, invert: bool) -> Mask:
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")  # an inpaint sketch: the painted strokes are in its alpha channel
    mask = mask.convert("L").point(lambda v: 255 if v > 128 else 0)
    if invert:
        mask = mask.point(lambda v: 255 - v)
    if blur > 0:
        pixels = np.asarray(mask, dtype=np.float64)
        pixels = np.round(_blur(pixels, blur, axis=1))
        pixels = np.round(_blur(pixels, blur, axis=0))
        mask = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    mask = mask.resize((width, height), Image.LANCZOS)
    overlay = Image.fromarray(np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
    return Mask(image=mask, overlay=overlay)


def _blur(pixels: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    size = 2 * int(2.5 * sigma + 0.5) + 1
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(pixels, pad, mode="reflect")
    out = np.zeros_like(pixels)
    for i, weight in enumerate(kernel):
        out += weight * (padded[:, i:i + pixels.shape[1]] if axis == 1 else padded[i:i + pixels.shape[0]])
    return out
