"""The WebUI's extra-network tags (`<lora:name:weight>`), read without torch: the server applies them, and the client
checks before sending that every LoRA a prompt names is in the cloud."""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

from .request import BadRequest  # torch-free: the request's checks only

LORA_KINDS = ("lora", "lyco")
_TAG = re.compile(r"<(\w+):([^>]+)>")


def extract_networks(prompt: str) -> Tuple[str, List[Tuple[str, float]]]:
    """The prompt without its <lora:...>/<lyco:...> tags, and the networks as (name, weight) in order of appearance.

    A name given twice keeps its first place and the later weight (the WebUI would apply it twice). A tag whose
    text-encoder and UNet weights differ, a dyn= argument, hypernetworks and other kinds are refused (HTTP 400).
    """
    found: Dict[str, float] = {}

    def take(match: re.Match) -> str:
        kind, tag = match.group(1), match.group(0)
        if kind not in LORA_KINDS:
            raise BadRequest("prompt", f"prompt: {tag}: only LoRA extra networks (<lora:name:weight>) are supported, "
                             f"not '{kind}' (hypernetworks are not supported)")
        items = [item.partition("=") for item in match.group(2).split(":")]
        positional = [key for key, eq, _ in items if not eq]
        named = {key.strip(): value for key, eq, value in items if eq}
        name = positional[0].strip() if positional else ""
        try:
            te = float(named.get("te", positional[1] if len(positional) > 1 else 1.0))
            unet = float(named.get("unet", positional[2] if len(positional) > 2 else te))
        except ValueError:
            raise BadRequest("prompt", f"prompt: {tag}: the weight is not a number") from None
        if not name or len(positional) > 3 or "dyn" in named or set(named) - {"te", "unet", "dyn"}:
            raise BadRequest("prompt", f"prompt: {tag}: write LoRA tags as <lora:name> or <lora:name:weight>")
        if te != unet:
            raise BadRequest("prompt", f"prompt: {tag}: separate text-encoder and UNet weights are not supported")
        found[name] = te
        return ""

    return _TAG.sub(take, prompt), list(found.items())
