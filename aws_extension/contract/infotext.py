"""Generation info in the WebUI 1.10 infotext format, so PNG Info, "send to" and the gallery read ours like its own.

The format is what modules/processing.py `create_infotext` writes: the prompt, then "Negative prompt: ..." when
there is one, then one line of "Key: value" pairs joined by ", " in a fixed order, empty ones left out; a value
holding a comma, colon or newline is JSON-quoted (modules/infotext_utils.py `quote`).
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Dict, Optional

from PIL import Image, PngImagePlugin

# "Key: value" pairs of the parameters line; a quoted value may hold commas (infotext_utils uses the same shape).
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def model_hash(sha256_hex: str) -> str:
    """A1111's "Model hash": the first 10 hex characters of the file's sha256 (its "sha256 short")."""
    value = sha256_hex.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"Not a sha256 hex digest: {sha256_hex!r}")
    return value[:10]


def network_hash(sha256_hex: str) -> str:
    """LoRA and embedding hashes in "Lora hashes"/"TI hashes" are 12 characters long (the networks' shorthash)."""
    return model_hash(sha256_hex) + sha256_hex.strip().lower()[10:12]


def hashes_text(hashes: Optional[Dict[str, str]]) -> Optional[str]:
    """The "Lora hashes" / "TI hashes" value: "name: hash, name: hash" (None when there are none)."""
    return ", ".join(f"{k}: {v}" for k, v in hashes.items()) if hashes else None


def quote(value) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def infotext(prompt: str, negative_prompt: str, *, steps: int, sampler: str, schedule_type: Optional[str],
             cfg_scale: float, seed: int, width: int, height: int, model_name: Optional[str],
             model_hash: Optional[str], vae_name: Optional[str] = None, vae_hash: Optional[str] = None,
             subseed: Optional[int] = None, subseed_strength: float = 0.0, denoising_strength: Optional[float] = None,
             clip_skip: int = 1, rng: str = "GPU", lora_hashes: Optional[Dict[str, str]] = None,
             ti_hashes: Optional[Dict[str, str]] = None, version: Optional[str] = None) -> str:
    """One image's infotext; pass denoising_strength for img2img only, as the WebUI writes it only there."""
    params = {  # create_infotext's order; None means "left out" as there
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
        "CFG scale": cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Variation seed": None if not subseed_strength else subseed,
        "Variation seed strength": None if not subseed_strength else subseed_strength,
        "Denoising strength": denoising_strength,
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "RNG": None if rng == "GPU" else rng,  # the WebUI names its source only when it is not the default
        # extra_generation_params come after the fixed keys; the Lora and TI extensions add these two
        "Lora hashes": hashes_text(lora_hashes),
        "TI hashes": hashes_text(ti_hashes),
        "Version": version,
    }
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def parse_infotext(text: str) -> Dict[str, str]:
    """Read an infotext back, keyed like the WebUI's parse_generation_parameters (Prompt, Negative prompt, Steps,
    Size-1, Size-2, ...); values stay strings, as there."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    found = PAIR.findall(last)
    if len(found) < 3:  # the WebUI's own test: fewer pairs means the last line is still prompt
        found = []
    else:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in found:
        value = unquote(value.strip())
        result[key.strip()] = value
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size:
            result[f"{key.strip()}-1"], result[f"{key.strip()}-2"] = size.group(1), size.group(2)
    return result


# -- the PNG "parameters" text chunk, where the WebUI keeps an image's infotext ----------------------------------------
def png_bytes(image: Image.Image, infotext: Optional[str] = None) -> bytes:
    meta = None
    if infotext:
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", infotext)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


def png_base64(image: Image.Image, infotext: Optional[str] = None) -> str:
    return base64.b64encode(png_bytes(image, infotext)).decode("ascii")


def png_parameters(png: bytes) -> Optional[str]:
    """The infotext in a PNG's "parameters" text chunk (tEXt, zTXt or iTXt, anywhere in the file)."""
    return Image.open(io.BytesIO(png)).text.get("parameters")


def with_parameters(png: bytes, infotext: str) -> bytes:
    """The PNG again, carrying this infotext (for an answer whose PNG lacks one)."""
    return png_bytes(Image.open(io.BytesIO(png)), infotext)

