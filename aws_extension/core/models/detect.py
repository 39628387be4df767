"""What a model file is (checkpoint, LoRA, embedding, VAE, ControlNet, hypernetwork) and for which base model,
from the names and shapes of its tensors (headers.py reads them from the file's first bytes).

Checkpoints are told apart as the inference server does (serve/checkpoint.py, through diffusers'
infer_diffusers_model_type): SDXL has a second text encoder (`conditioner.embedders.1.`), SD 2.x a cross-attention
of 1024, anything else with an LDM UNet is SD 1.x. Other files by their context width: 768 SD 1.x, 1024 SD 2.x,
2048 (768 + 1280) SDXL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import Refused
from .headers import Shapes, Unreadable, read_file, read_head
from .types import ModelType, model_type

AUTO = "auto"  # the type choice "read it from the file"
AUTO_LABEL = "Auto"
BASES = ("sd1", "sd2", "sdxl", "sd3", "flux", "unknown")
BASE_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
KIND_NAMES = {"checkpoint": "checkpoint", "lora": "LoRA", "embedding": "textual inversion", "vae": "VAE",
              "controlnet": "ControlNet", "hypernetwork": "hypernetwork"}
BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
UNET = "model.diffusion_model."
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
LORA_MARKS = ("lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down.", "lora.up.", "lora_linear_layer")
LYCORIS_MARKS = (".hada_w", ".lokr_w", ".oft_", ".lokr_t")
# the same refusal reaches the CLI and the tab: name the switch of each
FORCE_HINT = " (`--force` on the command line; in the tab, \"Upload even if the type does not match\")"


@dataclass(frozen=True)
class Detected:
    """kind: a model type id or "unknown"; base: one of BASES; what: "a LoRA for SDXL"; problem: why the file
    could not be read at all (then kind is "unknown")."""

    kind: str = "unknown"
    base: str = "unknown"
    what: str = ""
    problem: str = ""

    @property
    def known(self) -> bool:
        return self.kind != "unknown"


def article(noun: str) -> str:
    return f"{'an' if noun.startswith('SD') else 'a'} {noun}"  # "an SDXL ...", "a LoRA", "a VAE"


def describe(kind: str, base: str = "unknown", variant: str = "") -> Detected:
    """The record, with its sentence: "an SDXL checkpoint", "a LoRA for SD 1.x", "a VAE"."""
    noun = variant or KIND_NAMES[kind]
    if base not in BASE_NAMES:
        return Detected(kind, "unknown", article(noun))
    if kind == "checkpoint":
        return Detected(kind, base, article(f"{BASE_NAMES[base]} {noun}"))
    return Detected(kind, base, f"{article(noun)} for {BASE_NAMES[base]}")


def _context(shapes: Shapes, keys: Iterable[str]) -> str:
    """The base from the width a cross-attention key projects from (its weight's in-features, dim 1)."""
    for k in keys:
        shape = shapes.get(k)
        if shape and len(shape) >= 2 and shape[1] in BY_CONTEXT:
            return BY_CONTEXT[shape[1]]
    return "unknown"


def _hinted(keys: list) -> str:
    """kohya's / ModelSpec's note of the base model, when the file has one."""
    for k in keys:
        if k.startswith("__metadata__."):
            note = k.split("=", 1)[-1].lower()
            for mark, base in (("xl", "sdxl"), ("flux", "flux"), ("stable-diffusion-3", "sd3"), ("sd3", "sd3"),
                               ("v2", "sd2"), ("v1", "sd1")):
                if mark in note:
                    return base
    return "unknown"


def _lora_base(shapes: Shapes, keys: list) -> str:
    joined = "\n".join(keys)
    if re.search(r"double_blocks|single_blocks|single_transformer_blocks", joined):
        return "flux"
    if re.search(r"joint_blocks|joint_transformer_blocks", joined):
        return "sd3"
    if re.search(r"^(lora_te[12]_|text_encoder_2\.|lora_unet_\w*transformer_blocks_[1-9])", joined, re.M):
        return "sdxl"
    down = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", ".hada_w1_b", ".hada_w2_b")
    attn = [k for k in keys if re.search(r"attn2[._]to_k", k) and k.endswith(down)]
    te = [k for k in keys if re.search(r"^(lora_te_|text_encoder\.).*q_proj", k) and k.endswith(down)]
    for found in (_context(shapes, attn), _context(shapes, te), _hinted(keys)):
        if found != "unknown":
            return found
    return "unknown"


def _checkpoint_base(shapes: Shapes, keys: list) -> str:
    if any(k.startswith("conditioner.embedders.1.") or k.startswith("conditioner.embedders.0.model.") for k in keys):
        return "sdxl"  # base, or the refiner (one OpenCLIP encoder): either way an SDXL model
    found = _context(shapes, [k for k in keys if k.startswith(UNET + "input_blocks.") and k.endswith("attn2.to_k.weight")])
    if found in ("sd2", "sdxl"):
        return found
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP as the text encoder
    return "sd1"  # the server's (diffusers') fallback too


def classify(shapes: Shapes) -> Detected:
    """The kind and base a state dict's names and shapes tell; "unknown" when they tell nothing we know."""
    keys = list(shapes)
    bare = [k[len(UNET):] if k.startswith(UNET) else k for k in keys]
    if any(k.startswith("control_model.") or "input_hint_block" in k or k.startswith("controlnet_cond_embedding")
           or k == "lora_controlnet" for k in keys):
        cross = [k for k in keys if k.endswith("attn2.to_k.weight")]
        base = _context(shapes, cross)
        if base == "unknown" and any(k.startswith(("add_embedding.", "control_model.label_emb.")) for k in keys):
            base = "sdxl"
        return describe("controlnet", base)
    if any(k.startswith("lora_") or any(m in k for m in LORA_MARKS + LYCORIS_MARKS) for k in keys):
        lycoris = any(m in k for k in keys for m in LYCORIS_MARKS)
        return describe("lora", _lora_base(shapes, keys), "LyCORIS" if lycoris else "")
    if any(k.startswith("double_blocks.0.img_attn") for k in bare):
        return describe("checkpoint", "flux")
    if any(k.startswith("joint_blocks.0.context_block") for k in bare):
        return describe("checkpoint", "sd3")
    if any(k.startswith(UNET) for k in keys):
        return describe("checkpoint", _checkpoint_base(shapes, keys))
    if "clip_l" in shapes and "clip_g" in shapes:
        return describe("embedding", "sdxl")
    if "emb_params" in shapes or "string_to_param" in shapes:
        dims = [s[-1] for s in shapes.values() if s and s[-1] in (768, 1024)]
        return describe("embedding", BY_CONTEXT.get(dims[0], "unknown") if dims else "unknown")
    if "layer_structure" in shapes or "activation_func" in shapes:
        return describe("hypernetwork")
    vae = [k[len("first_stage_model."):] if k.startswith("first_stage_model.") else k for k in keys]
    if any(k.startswith(VAE_PARTS) for k in vae) and any(k.startswith("decoder.") for k in vae):
        conv = shapes.get("decoder.conv_in.weight") or shapes.get("first_stage_model.decoder.conv_in.weight")
        if conv and len(conv) == 4 and conv[1] == 16:  # 16 latent channels: the SD3 / Flux autoencoder
            return Detected("vae", "unknown", "a VAE for SD3 or Flux")
        return describe("vae")
    tensors = {k: s for k, s in shapes.items() if s}
    if 0 < len(tensors) <= 16 and all(len(s) <= 2 and s[-1] in (768, 1024) for s in tensors.values()):
        # diffusers' learned_embeds.bin: {"<token>": vector}
        return describe("embedding", BY_CONTEXT[next(iter(tensors.values()))[-1]])
    return Detected(what="a file of unknown kind")


def detect_file(path: Path) -> Detected:
    """From the file on disk (its header, or its zip listing's data.pkl, only)."""
    try:
        return classify(read_file(path))
    except Unreadable as exc:
        return Detected(problem=str(exc))


def detect_head(name: str, head: bytes, size: Optional[int] = None) -> Detected:
    """From the file's first bytes (as many as headers.head_length says; `size`: the whole file's, if known)."""
    try:
        return classify(read_head(name, head, size))
    except Unreadable as exc:
        return Detected(problem=str(exc))


def is_auto(type_name: Optional[str]) -> bool:
    return (type_name or AUTO).strip().lower() in (AUTO, "")


def chosen_type(type_name: Optional[str]) -> Optional[ModelType]:
    """The type the user chose, or None for Auto."""
    return None if is_auto(type_name) else model_type(type_name)


def decide(detected: Detected, chosen: Optional[ModelType], item: str, force: bool = False) -> ModelType:
    """The type a file goes up as: the chosen one unless the file is plainly something else (then Refused, unless
    forced); under Auto the detected one (Refused when it cannot be told). Only what the file positively says
    counts against a chosen type: a file we cannot read goes up as chosen."""
    if chosen is None:
        if detected.problem:
            raise Refused(f"{item}: {detected.problem}; nothing was uploaded.")
        if not detected.known:
            raise Refused(f"{item}: cannot tell what kind of model this is; choose its type instead of Auto.")
        return model_type(detected.kind)
    if detected.known and detected.kind != chosen.id and not force:
        raise Refused(f"{item}: this file is {detected.what}, not {article(chosen.label)}; choose "
                      f"{model_type(detected.kind).label} (or Auto), or upload it anyway{FORCE_HINT}.")
    return chosen
