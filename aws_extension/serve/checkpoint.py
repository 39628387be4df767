"""The checkpoints WebUI users upload: single-file (LDM layout) SD 1.x and SDXL, loaded offline into diffusers.

diffusers reads these files but wants a diffusers-layout config folder, which it would fetch from the hub. We read
the sizes from the tensor shapes instead and write that folder ourselves, so nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, infer_diffusers_model_type
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..core.errors import UserError
from .tokenizer import write_tokenizer

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
CLIP_G = "conditioner.embedders.1.model."
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
LAYOUT = 1  # part of the config folder's name: bump it when what config_dir writes changes
UNSUPPORTED = {"v2": "Stable Diffusion 2.x", "inpainting": "an SD 1.x inpainting model",
               "inpainting_v2": "an SD 2.x inpainting model", "xl_inpaint": "an SDXL inpainting model",
               "xl_refiner": "the SDXL refiner", "playground-v2-5": "Playground v2.5", "upscale": "the SD x4 upscaler",
               "instruct-pix2pix": "InstructPix2Pix", "sd3": "Stable Diffusion 3", "sd35_medium": "Stable Diffusion 3.5",
               "sd35_large": "Stable Diffusion 3.5", "flux": "Flux", "chroma": "Chroma (Flux)"}


class LoadError(UserError):
    """A model file that cannot be served: what is wrong with it, by name."""


@dataclass(frozen=True)
class TextEncoder:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    positions: int
    projection_dim: Optional[int] = None  # SDXL's second encoder only


@dataclass(frozen=True)
class Architecture:
    """Everything the diffusers configs need, read from tensor shapes."""
    kind: str  # "sd1" | "sdxl"
    in_channels: int
    out_channels: int
    block_out_channels: Tuple[int, ...]
    layers_per_block: int
    attention: Tuple[bool, ...]  # which levels have cross-attention
    transformer_depth: Tuple[int, ...]  # transformer blocks per level (1 where there is no attention)
    heads: Tuple[int, ...]
    linear_projection: bool
    cross_attention_dim: int
    vae_block_out_channels: Tuple[int, ...]
    vae_layers_per_block: int
    latent_channels: int
    text_encoder: TextEncoder
    text_encoder_2: Optional[TextEncoder] = None
    addition_time_embed_dim: Optional[int] = None
    projection_class_embeddings_input_dim: Optional[int] = None


def _heads(width: int) -> int:
    # real CLIP/SDXL widths use 64-wide heads; widths that are no multiple of 64 only occur in tests (8-wide)
    return width // 64 if width % 64 == 0 else max(1, width // 8)


def _torch_load(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # the pre-1.6 format cannot be memory-mapped: read it whole
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """All tensors of a .safetensors / .ckpt / .pt file; pickles are read with weights_only (no code runs)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            sd = load_file(str(path))
        else:
            sd = _torch_load(path)
    except pickle.UnpicklingError as e:
        if re.search(r"Unsupported (global|class)|not an allowed global|unrecognized function", str(e)):
            raise LoadError(f"{path.name}: the file holds Python objects besides weights and is not loaded, since "
                            "unpickling them could run code. Convert it to .safetensors.") from None
        raise LoadError(f"{path.name}: not a readable checkpoint (corrupt or not a model file).") from None
    except Exception as e:  # truncated zip, bad header, ...: all mean the same to a user
        raise LoadError(f"{path.name}: not a readable checkpoint (corrupt or not a model file: {e}).") from None
    while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise LoadError(f"{path.name}: not a checkpoint (no dictionary of weights inside).")
    return {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _shapes(source) -> Tuple[str, Dict[str, Tuple[int, ...]]]:
    if isinstance(source, dict):
        return "checkpoint", {k: tuple(v.shape) for k, v in source.items() if hasattr(v, "shape")}
    path = Path(source)
    if path.suffix.lower() != ".safetensors":
        return path.name, _shapes(read_state_dict(path))[1]
    try:  # the header only: keys and shapes, not gigabytes of data
        with safe_open(str(path), framework="pt") as f:
            return path.name, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise LoadError(f"{path.name}: not a readable .safetensors file (corrupt or truncated: {e}).") from None


def _indices(shapes, pattern: str) -> list:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes for m in [rx.fullmatch(k)] if m})


def _clip(shapes, prefix: str) -> TextEncoder:
    if prefix + "embeddings.token_embedding.weight" not in shapes:  # old checkpoints lack `text_model.`
        prefix = prefix[: -len("text_model.")]
    vocab, hidden = shapes[prefix + "embeddings.token_embedding.weight"]
    layers = len(_indices(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight"))
    return TextEncoder(hidden, shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0], layers, _heads(hidden), vocab,
                       shapes[prefix + "embeddings.position_embedding.weight"][0])


def _open_clip(shapes, prefix: str) -> TextEncoder:
    vocab, hidden = shapes[prefix + "token_embedding.weight"]
    layers = len(_indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"))
    return TextEncoder(hidden, shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0], layers, _heads(hidden),
                       vocab, shapes[prefix + "positional_embedding"][0], shapes[prefix + "text_projection"][1])


def _vae(shapes, prefix: str) -> Tuple[Tuple[int, ...], int, int]:
    levels = _indices(shapes, re.escape(prefix) + r"encoder\.down\.(\d+)\.block\.0\.conv2\.weight")
    channels = tuple(shapes[f"{prefix}encoder.down.{i}.block.0.conv2.weight"][0] for i in levels)
    per_level = len(_indices(shapes, re.escape(prefix) + r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight"))
    return channels, per_level, shapes[prefix + "post_quant_conv.weight"][0]


def _unet(shapes, kind: str) -> dict:
    u = lambda key: shapes[UNET + key]  # noqa: E731
    resnets = _indices(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\.0\.in_layers\.2\.weight")
    levels = len(_indices(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    per_level, odd = divmod(len(resnets), levels)
    if odd or not per_level:
        raise KeyError("input_blocks")
    channels, attention, depth = [], [], []
    for level in range(levels):
        first = 1 + level * (per_level + 1)  # LDM numbers resnets and downsamplers in one sequence
        channels.append(u(f"input_blocks.{first}.0.out_layers.3.weight")[0])
        blocks = _indices(shapes, re.escape(UNET) + rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.norm1\.weight")
        attention.append(bool(blocks))
        depth.append(len(blocks) or 1)
    linear = len(u("middle_block.1.proj_in.weight")) == 2
    # diffusers' "attention_head_dim" of SD 1.x is really 8 heads at every level; SDXL has 64-wide heads
    heads = tuple(8 if kind == "sd1" else _heads(c) for c in channels)
    return dict(in_channels=u("input_blocks.0.0.weight")[1], out_channels=u("out.2.weight")[0],
                block_out_channels=tuple(channels), layers_per_block=per_level, attention=tuple(attention),
                transformer_depth=tuple(depth), heads=heads, linear_projection=linear,
                cross_attention_dim=u("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1])


def _hint(shapes) -> str:
    keys = list(shapes)
    if any(k.startswith("lora_") for k in keys):
        return " It looks like a LoRA: put it in models/Lora."
    if any(k.startswith(VAE_PARTS) for k in keys) and not any(k.startswith(UNET) for k in keys):
        return " It looks like a VAE: put it in models/VAE."
    if {"emb_params", "string_to_param", "clip_l", "clip_g"} & set(keys):
        return " It looks like a textual-inversion embedding: put it in embeddings."
    return ""


def detect(source: Union[str, Path, Dict[str, torch.Tensor]], *, name: Optional[str] = None) -> Architecture:
    """The architecture of a checkpoint file (safetensors: from its header alone) or of a state dict
    (name: the file name that messages give)."""
    default, shapes = _shapes(source)
    name = name or default
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # what diffusers' detector indexes
    try:
        model_type = infer_diffusers_model_type(meta)
    except Exception:
        model_type = "unknown"
    if model_type not in ("v1", "xl_base"):
        what = UNSUPPORTED.get(model_type) or ("Flux" if "flux" in model_type else f"a {model_type} model")
        raise LoadError(f"{name}: this is {what}; only Stable Diffusion 1.x and SDXL base checkpoints are supported.")
    kind = "sdxl" if model_type == "xl_base" else "sd1"
    clip = CLIP_L[kind] + "text_model."
    if kind == "sd1" and not all(any(k.startswith(p) for k in shapes) for p in (UNET, VAE, CLIP_L["sd1"])):
        raise LoadError(f"{name}: not a Stable Diffusion checkpoint (it lacks the UNet, VAE or CLIP weights)."
                        + _hint(shapes))
    try:
        te = _clip(shapes, clip)
        te2 = _open_clip(shapes, CLIP_G) if kind == "sdxl" else None
        vae_channels, vae_layers, latent = _vae(shapes, VAE)
        unet = _unet(shapes, kind)
        extra = {}
        if te2:  # SDXL's extra input: pooled text (projection_dim) + 6 size/crop numbers of addition_time_embed_dim
            adm = shapes[UNET + "label_emb.0.0.weight"][1]
            per_number, odd = divmod(adm - te2.projection_dim, 6)
            if odd or per_number <= 0:
                raise ValueError("label_emb sizes")
            extra = dict(addition_time_embed_dim=per_number, projection_class_embeddings_input_dim=adm)
    except (KeyError, IndexError, ValueError) as e:
        raise LoadError(f"{name}: an incomplete or damaged {kind.upper()} checkpoint (missing {e}).") from None
    if unet["cross_attention_dim"] != te.hidden + (te2.hidden if te2 else 0):
        raise LoadError(f"{name}: its UNet and text encoder do not fit together (a damaged or merged-wrong file).")
    return Architecture(kind=kind, **unet, vae_block_out_channels=vae_channels, vae_layers_per_block=vae_layers,
                        latent_channels=latent, text_encoder=te, text_encoder_2=te2, **extra)


def _one(values):
    return values[0] if len(set(values)) == 1 else list(values)


def _configs(a: Architecture) -> Dict[str, dict]:
    sdxl = a.kind == "sdxl"
    unet = {"_class_name": "UNet2DConditionModel", "sample_size": 128 if sdxl else 64, "in_channels": a.in_channels,
            "out_channels": a.out_channels, "block_out_channels": list(a.block_out_channels),
            "down_block_types": ["CrossAttnDownBlock2D" if x else "DownBlock2D" for x in a.attention],
            "up_block_types": ["CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(a.attention)],
            "layers_per_block": a.layers_per_block, "cross_attention_dim": a.cross_attention_dim,
            "attention_head_dim": _one(a.heads), "transformer_layers_per_block": _one(a.transformer_depth),
            "use_linear_projection": a.linear_projection}
    if sdxl:
        unet.update(addition_embed_type="text_time", addition_time_embed_dim=a.addition_time_embed_dim,
                    projection_class_embeddings_input_dim=a.projection_class_embeddings_input_dim,
                    upcast_attention=None)  # as SDXL's own config has it
    levels = len(a.vae_block_out_channels)
    vae = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": a.latent_channels,
           "block_out_channels": list(a.vae_block_out_channels), "layers_per_block": a.vae_layers_per_block,
           "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
           "sample_size": 1024 if sdxl else 512, "scaling_factor": 0.13025 if sdxl else 0.18215}
    scheduler = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                 "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
                 "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False}
    index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "feature_extractor": [None, None],
             "image_encoder": [None, None]}
    out = {"unet/config.json": unet, "vae/config.json": vae, "scheduler/scheduler_config.json": scheduler,
           "text_encoder/config.json": _clip_config(a.text_encoder, "CLIPTextModel", "quick_gelu")}
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True,
                     add_watermarker=False)  # the WebUI does not watermark
        out["text_encoder_2/config.json"] = _clip_config(a.text_encoder_2, "CLIPTextModelWithProjection", "gelu")
    else:
        index.update(safety_checker=[None, None], requires_safety_checker=False)
    out["model_index.json"] = index
    return out


def _clip_config(t: TextEncoder, cls: str, act: str) -> dict:
    # eos 49407 (not the legacy 2): the pooled output then stays at the end token when embeddings add tokens
    return {"architectures": [cls], "model_type": "clip_text_model", "hidden_size": t.hidden,
            "intermediate_size": t.intermediate, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "vocab_size": t.vocab, "max_position_embeddings": t.positions, "hidden_act": act, "layer_norm_eps": 1e-5,
            "projection_dim": t.projection_dim or t.hidden, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 1}


def config_dir(arch: Architecture, root: Union[str, Path]) -> Path:
    """The diffusers-layout config folder for arch under root, written once (atomically) and then reused."""
    digest = hashlib.sha256(json.dumps([LAYOUT, dataclasses.asdict(arch)], sort_keys=True).encode()).hexdigest()
    final = Path(root) / f"{arch.kind}-{digest[:16]}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        for rel, content in _configs(arch).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(json.dumps(content, indent=1), encoding="utf-8")
        write_tokenizer(tmp / "tokenizer")
        if arch.kind == "sdxl":
            write_tokenizer(tmp / "tokenizer_2", pad_token="!")  # OpenCLIP pads with "!" (id 0)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # else another process finished the same folder first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _part(name: str, part: str, load) -> torch.nn.Module:
    """load() with its failures put in the user's terms."""
    try:
        model = load()
    except (ValueError, RuntimeError, KeyError) as e:
        if "meta" not in str(e):
            raise LoadError(f"{name}: its {part} weights do not fit the detected architecture ({e}).") from None
        model = None  # diffusers' final .to(dtype) trips over the weights the file lacked
    # without a dtype, diffusers leaves the weights the file lacks on the `meta` device instead of failing
    if model is None or any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise LoadError(f"{name}: the file lacks some of the {part}'s weights (a damaged or partial checkpoint).")
    return model


def load_pipeline(path: Union[str, Path], *, device, dtype, config_root: Union[str, Path]):
    """(StableDiffusionPipeline or StableDiffusionXLPipeline by the detected kind, Architecture), offline.

    The pipeline classes' from_single_file takes only a path, so we read the file once, fix it up in memory
    (old CLIP names) and build each part with the functions that from_single_file itself uses."""
    path = Path(path)
    sd = read_state_dict(path)
    arch = detect(sd, name=path.name)
    clip = CLIP_L[arch.kind]
    for key in [k for k in sd if k.startswith(clip) and not k.startswith(clip + "text_model.")]:
        sd[clip + "text_model." + key[len(clip):]] = sd.pop(key)
    sd.pop(clip + "text_model.embeddings.position_ids", None)  # a buffer the model makes itself (often damaged)
    folder = config_dir(arch, config_root)
    common = dict(config=str(folder), local_files_only=True, torch_dtype=dtype)
    loaders = {"unet": lambda: UNet2DConditionModel.from_single_file(sd, subfolder="unet", **common),
               "vae": lambda: AutoencoderKL.from_single_file(sd, subfolder="vae", **common),
               "text_encoder": lambda: create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder",
                                                                            **common)}
    if arch.kind == "sdxl":
        loaders["text_encoder_2"] = lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, sd, subfolder="text_encoder_2", **common)
    parts = {part: _part(path.name, part, load) for part, load in loaders.items()}
    sd.clear()  # the models hold their own copies now
    parts["scheduler"] = EulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    parts["tokenizer"] = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    if arch.kind == "sdxl":
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))
        pipe = StableDiffusionXLPipeline(**parts, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    return pipe.to(device), arch


def load_vae(path: Union[str, Path], arch: Architecture, *, device, dtype,
             config_root: Union[str, Path]) -> AutoencoderKL:
    """A standalone WebUI VAE file (optionally under first_stage_model. / vae., or in a ckpt) for arch's pipeline."""
    path = Path(path)
    sd = read_state_dict(path)
    prefix = next((p for p in (VAE, "vae.", "") if p + "decoder.conv_out.weight" in sd), None)
    if prefix is None:
        raise LoadError(f"{path.name}: not a VAE (no decoder weights in the WebUI's layout).")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and k[len(prefix):].startswith(VAE_PARTS)}
    try:
        dims = _vae({k: tuple(v.shape) for k, v in sd.items()}, "")
    except (KeyError, IndexError) as e:
        raise LoadError(f"{path.name}: an incomplete or damaged VAE (missing {e}).") from None
    if dims != (arch.vae_block_out_channels, arch.vae_layers_per_block, arch.latent_channels):
        raise LoadError(f"{path.name}: this VAE does not fit the checkpoint ({arch.kind.upper()} VAE expected).")
    folder = config_dir(arch, config_root)
    vae = _part(path.name, "VAE", lambda: AutoencoderKL.from_single_file(
        sd, config=str(folder), subfolder="vae", local_files_only=True, torch_dtype=dtype))
    return vae.to(device)
