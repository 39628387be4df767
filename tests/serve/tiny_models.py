"""Tiny random-weight Stable Diffusion files in the WebUI's own formats, made at test time (nothing is downloaded).

diffusers only converts LDM (single-file) checkpoints *to* its layout, so the reverse mapping that writes a
WebUI-style file from diffusers models lives here. The same functions work on `meta`-device models, so tests can
build the key->shape table of a real-size SD 1.5 / SDXL checkpoint without allocating any weights.

    python tests/serve/tiny_models.py OUT_DIR     # writes every kind of file below into OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Dict, Optional

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

# The tiny architectures. Heads follow the loader's rule (64-wide heads, 8-wide when the width is no multiple of 64).
SD1_UNET = dict(sample_size=64, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                attention_head_dim=8)
SDXL_UNET = dict(sample_size=128, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32 + 24,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=[4, 1], transformer_layers_per_block=[1, 2], use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=24 + 6 * 8,
                 upcast_attention=None)
# four levels keep the 8x downscale that pipelines assume (vae_scale_factor = 2 ** (levels - 1))
SD1_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, sample_size=512,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SDXL_VAE = dict(SD1_VAE, block_out_channels=(32, 32, 32, 64), sample_size=1024, scaling_factor=0.13025)
CLIP = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
SD1_CLIP = dict(CLIP, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                hidden_act="quick_gelu", projection_dim=32)
SDXL_CLIP_L = SD1_CLIP
# the type detector looks for layer 9 of the second encoder; its width must differ from the first's
SDXL_CLIP_G = dict(CLIP, hidden_size=24, intermediate_size=37, num_hidden_layers=10, num_attention_heads=3,
                   hidden_act="gelu", projection_dim=24)

UNET, VAE = "model.diffusion_model.", "first_stage_model."
PREFIXES = {"sd1": ("cond_stage_model.transformer.", None),
            "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")}

# ---------------------------------------------------------------- diffusers -> LDM key mapping

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str, table=_RESNET) -> str:
    name, _, tail = rest.partition(".")
    return dict(table).get(name, name) + "." + tail


def unet_to_ldm(sd: Dict[str, torch.Tensor], layers_per_block: int) -> Dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> the `model.diffusion_model.*` names (without that prefix)."""
    n = layers_per_block
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if p[0] in ("down_blocks", "up_blocks"):
            b, part = int(p[1]), p[2]
            if p[0] == "down_blocks":
                if part == "downsamplers":
                    new = f"input_blocks.{1 + b * (n + 1) + n}.0.op.{p[-1]}"
                else:
                    block = f"input_blocks.{1 + b * (n + 1) + int(p[3])}"
                    rest = ".".join(p[4:])
                    new = f"{block}.0.{_resnet(rest)}" if part == "resnets" else f"{block}.1.{rest}"
            elif part == "upsamplers":  # after the resnet, and after the attention if the block has one
                slot = 2 if any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd) else 1
                new = f"output_blocks.{b * (n + 1) + n}.{slot}.conv.{p[-1]}"
            else:
                block = f"output_blocks.{b * (n + 1) + int(p[3])}"
                rest = ".".join(p[4:])
                new = f"{block}.0.{_resnet(rest)}" if part == "resnets" else f"{block}.1.{rest}"
        elif p[0] == "mid_block":
            rest = ".".join(p[3:])
            new = f"middle_block.1.{rest}" if p[1] == "attentions" else f"middle_block.{2 * int(p[2])}.{_resnet(rest)}"
        else:
            new = _UNET_TOP[".".join(p[:-1])] + "." + p[-1]
        out[new] = value
    return out


_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out", "proj_out")]


def vae_to_ldm(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> the WebUI VAE names (`encoder.down.0.block.0...`, no prefix)."""
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up_blocks."))
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if p[0] in ("quant_conv", "post_quant_conv") or p[1] in ("conv_in", "conv_out"):
            new = key
        elif p[1] == "conv_norm_out":
            new = f"{p[0]}.norm_out.{p[-1]}"
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2]) if p[1] == "down_blocks" else levels - 1 - int(p[2])  # LDM numbers decoder levels upwards
            level = f"{p[0]}.{'down' if p[1] == 'down_blocks' else 'up'}.{i}"
            if p[3] in ("downsamplers", "upsamplers"):
                new = f"{level}.{p[3][:-2]}.conv.{p[-1]}"
            else:
                new = f"{level}.block.{p[4]}.{_resnet('.'.join(p[5:]), [('conv_shortcut', 'nin_shortcut')])}"
        elif p[2] == "resnets":
            new = f"{p[0]}.mid.block_{int(p[3]) + 1}.{'.'.join(p[4:])}".replace("conv_shortcut", "nin_shortcut")
        else:  # mid-block attention: LDM keeps 1x1 convolutions where diffusers has linear layers
            name = dict(_VAE_ATTN)[p[4]]
            new = f"{p[0]}.mid.attn_1.{name}.{p[-1]}"
            if name != "norm" and value.dim() == 2:
                value = value[:, :, None, None]
        out[new] = value
    return out


def clip_to_ldm(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CLIPTextModel -> the `text_model.*` names under `cond_stage_model.transformer.` (transformers 5 drops them)."""
    out = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}
    positions = out["text_model.embeddings.position_embedding.weight"].shape[0]
    # real checkpoints carry this buffer too
    out["text_model.embeddings.position_ids"] = torch.arange(positions, device=out[
        "text_model.embeddings.position_embedding.weight"].device)[None]
    return out


_OPEN_CLIP = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
              ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def open_clip_to_ldm(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP names (SDXL's `conditioner.embedders.1.model.*`)."""
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].T.contiguous()}
    for key, value in sd.items():
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", key)
        if not m:
            continue
        layer, rest = f"transformer.resblocks.{m.group(1)}.", m.group(2)
        if re.match(r"self_attn\.[qkv]_proj\.", rest):
            if rest.startswith("self_attn.q_proj."):  # OpenCLIP packs q, k, v into one projection
                kind = rest.rsplit(".", 1)[1]
                qkv = [sd[key.replace("q_proj", x)] for x in ("q_proj", "k_proj", "v_proj")]
                out[f"{layer}attn.in_proj_{kind}"] = torch.cat(qkv)
            continue
        for new, old in ((b, a) for a, b in _OPEN_CLIP):
            rest = rest.replace(old, new)
        out[layer + rest] = value
    return out


def checkpoint_state_dict(kind: str, unet, vae, text_encoder, text_encoder_2=None) -> Dict[str, torch.Tensor]:
    """The full single-file state dict (LDM names) of diffusers models; also works on `meta` models."""
    sd = {UNET + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config.layers_per_block).items()}
    sd.update({VAE + k: v for k, v in vae_to_ldm(vae.state_dict()).items()})
    clip_l, clip_g = PREFIXES[kind]
    sd.update({clip_l + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
    if text_encoder_2 is not None:
        sd.update({clip_g + k: v for k, v in open_clip_to_ldm(text_encoder_2.state_dict()).items()})
    return sd


# ---------------------------------------------------------------- building and saving

def _fp16_exact(model):
    """Round weights to fp16 values so a file saved in fp16 loads back bit for bit as fp32."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model.eval()


def _build(kind: str, seed: Optional[int]) -> Dict[str, torch.nn.Module]:
    if seed is not None:
        torch.manual_seed(seed)
    sdxl = kind == "sdxl"
    models = {"unet": UNet2DConditionModel(**(SDXL_UNET if sdxl else SD1_UNET)),
              "vae": AutoencoderKL(**(SDXL_VAE if sdxl else SD1_VAE)),
              "text_encoder": CLIPTextModel(CLIPTextConfig(**(SDXL_CLIP_L if sdxl else SD1_CLIP)))}
    if sdxl:
        models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G))
    if seed is not None:  # a real CLIP's final layer norm is not the identity: without this every token's output
        with torch.no_grad():  # averages to zero and the emphasis' mean-restoring rescale would be rounding noise
            for name in ("text_encoder", "text_encoder_2"):
                if name in models:
                    model = models[name]  # transformers 5 has no text_model level
                    norm = getattr(model, "text_model", model).final_layer_norm
                    norm.weight.copy_(1 + 0.5 * torch.randn_like(norm.weight))
                    norm.bias.copy_(0.2 * torch.randn_like(norm.bias) + 0.1)
    return {k: _fp16_exact(m) if seed is not None else m for k, m in models.items()}


def _save(sd: Dict[str, torch.Tensor], path: Path, dtype=torch.float16) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:  # .ckpt / .pt as the WebUI's training scripts write them
        torch.save({"state_dict": sd, "global_step": 0}, str(path))
    return path


def build(kind: str, seed: int = 0) -> Dict[str, torch.nn.Module]:
    """The diffusers models (unet, vae, text_encoder[, text_encoder_2]) that make_sd1/make_sdxl(seed) write."""
    return _build(kind, seed)


def build_vae(like: str = "sd1", seed: int = 1) -> AutoencoderKL:
    """The AutoencoderKL that make_vae(like, seed) writes."""
    torch.manual_seed(seed)
    return _fp16_exact(AutoencoderKL(**(SDXL_VAE if like == "sdxl" else SD1_VAE)))


def _make(kind: str, path, seed: int, old_clip_keys: bool, ema: bool) -> Path:
    sd = checkpoint_state_dict(kind, **_build(kind, seed))
    if old_clip_keys:  # checkpoints from before transformers 4.x nest CLIP without `text_model.`
        clip = PREFIXES[kind][0]
        sd = {k.replace(clip + "text_model.", clip): v for k, v in sd.items()}
    if ema:  # EMA copies under flattened names, with other values: a loader must ignore them
        gen = torch.Generator().manual_seed(seed + 100)
        sd.update({"model_ema." + k[len("model."):].replace(".", ""): torch.randn(v.shape, generator=gen)
                   for k, v in sd.items() if k.startswith(UNET)})
        sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(0, dtype=torch.int32)
    return _save(sd, path)


def make_sd1(path, seed: int = 0, *, old_clip_keys: bool = False, ema: bool = False) -> Path:
    """A tiny SD 1.x checkpoint: .safetensors, or .ckpt/.pt with a "state_dict" (weights: build("sd1", seed))."""
    return _make("sd1", path, seed, old_clip_keys, ema)


def make_sdxl(path, seed: int = 0, *, old_clip_keys: bool = False, ema: bool = False) -> Path:
    """A tiny SDXL base checkpoint (weights: build("sdxl", seed))."""
    return _make("sdxl", path, seed, old_clip_keys, ema)


def make_vae(path, like: str = "sd1", seed: int = 1, *, prefix: str = "") -> Path:
    """A standalone WebUI VAE file (`encoder.*`, `decoder.*`, ...; prefix e.g. "first_stage_model."; .pt/.ckpt
    files get a "state_dict" around them). Weights: build_vae(like, seed)."""
    return _save({prefix + k: v for k, v in vae_to_ldm(build_vae(like, seed).state_dict()).items()}, path)


def _lora_targets(kind: str):
    """(Kohya key stem, in, out) for every attention projection of the tiny models."""
    with torch.device("meta"):  # names and sizes only
        models = _build(kind, None)
    unet = models["unet"]
    names = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and re.search(r"attn[12]\.(to_[qkv]|to_out\.0)$", name):
            if kind == "sdxl":  # Kohya names SDXL's UNet modules the LDM way (input_blocks_4_1_...)
                ldm = next(iter(unet_to_ldm({name + ".weight": module.weight}, unet.config.layers_per_block)))
                stem = "lora_unet_" + ldm[: -len(".weight")].replace(".", "_")
            else:
                stem = "lora_unet_" + name.replace(".", "_")
            names[stem] = (module.in_features, module.out_features)
    encoders = [("lora_te" if kind == "sd1" else "lora_te1", models["text_encoder"])]
    if kind == "sdxl":
        encoders.append(("lora_te2", models["text_encoder_2"]))
    for tag, encoder in encoders:
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and re.search(r"self_attn\.(q|k|v|out)_proj$", name):
                full = name if name.startswith("text_model.") else "text_model." + name
                names[f"{tag}_{full.replace('.', '_')}"] = (module.in_features, module.out_features)
    return names


def make_lora(path, like: str = "sd1", seed: int = 2, rank: int = 4) -> Path:
    """A Kohya/WebUI LoRA (.safetensors: `<stem>.lora_down.weight`, `.lora_up.weight`, `.alpha`) for the tiny models."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for stem, (fan_in, fan_out) in _lora_targets(like).items():
        sd[stem + ".lora_down.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5
        sd[stem + ".lora_up.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.5  # large: visible in the image
        sd[stem + ".alpha"] = torch.tensor(float(rank))
    return _save(sd, path)


def make_embedding(path, like: str = "sd1", vectors: int = 2, seed: int = 3, name: Optional[str] = None) -> Path:
    """A textual-inversion embedding as the WebUI writes it: SD1 .pt (string_to_param) or .safetensors (emb_params);
    SDXL .safetensors with clip_l and clip_g."""
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    if like == "sdxl":
        return _save({"clip_l": torch.randn(vectors, SDXL_CLIP_L["hidden_size"], generator=gen),
                      "clip_g": torch.randn(vectors, SDXL_CLIP_G["hidden_size"], generator=gen)}, path, torch.float32)
    param = torch.randn(vectors, SD1_CLIP["hidden_size"], generator=gen)
    if path.suffix == ".safetensors":
        return _save({"emb_params": param}, path, torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": param}, "name": name or path.stem,
                "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None}, str(path))
    return path


def save_header_only(shapes: Dict[str, tuple], path) -> Path:
    """A .safetensors file with a real header and a sparse, all-zero fp16 body: real-size key/shape tables for
    detection tests without gigabytes on disk (`shapes` may map to meta tensors)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        shape = [int(n) for n in getattr(shape, "shape", shape)]
        size = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    payload = json.dumps(header).encode()
    payload += b" " * (-len(payload) % 8)
    path = Path(path)
    with path.open("wb") as f:
        f.write(len(payload).to_bytes(8, "little"))
        f.write(payload)
        f.truncate(8 + len(payload) + offset)
    return path


# ---------------------------------------------------------------- real sizes (SD 1.5, SDXL base), random weights
REAL_SD15_UNET = dict(sample_size=64, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, in_channels=4, out_channels=4,
                 act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                 mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32)
REAL_SDXL_UNET = dict(sample_size=128, block_out_channels=[320, 640, 1280], layers_per_block=2, cross_attention_dim=2048,
                 attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], in_channels=4,
                 out_channels=4, use_linear_projection=True, addition_embed_type="text_time",
                 addition_embed_type_num_heads=64, addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-05,
                 norm_num_groups=32, time_embedding_type="positional", upcast_attention=None)
REAL_SD15_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, in_channels=3, out_channels=3, latent_channels=4,
                layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=512)
REAL_SDXL_VAE = dict(REAL_SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
REAL_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
REAL_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280)




def real_models(kind: str, seed: int = 0) -> Dict[str, torch.nn.Module]:
    """The real architectures with random weights (same compute as the real models); on the meta device for shapes."""
    sdxl = kind == "sdxl"
    torch.manual_seed(seed)
    models = {"unet": UNet2DConditionModel(**(REAL_SDXL_UNET if sdxl else REAL_SD15_UNET)),
              "vae": AutoencoderKL(**(REAL_SDXL_VAE if sdxl else REAL_SD15_VAE)),
              "text_encoder": CLIPTextModel(CLIPTextConfig(**REAL_CLIP_L))}
    if sdxl:
        models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**REAL_CLIP_G))
    return models


def make_real(kind: str, path, seed: int = 0) -> Path:
    """A real-size random-weight checkpoint in the LDM layout (SD 1.5: ~2 GB, SDXL: ~6.5 GB in fp16)."""
    return _save(checkpoint_state_dict(kind, **real_models(kind, seed)), Path(path))


def write_all(out: Path) -> None:
    out = Path(out)
    make_sd1(out / "sd1.safetensors")
    make_sd1(out / "sd1.ckpt")
    make_sdxl(out / "sdxl.safetensors")
    for like in ("sd1", "sdxl"):
        make_vae(out / f"vae-{like}.safetensors", like)
        make_lora(out / f"lora-{like}.safetensors", like)
        make_embedding(out / f"emb-{like}.safetensors", like)
    make_embedding(out / "emb-sd1.pt", "sd1")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/serve/tiny_models.py OUT_DIR")
    write_all(Path(sys.argv[1]))
    for f in sorted(Path(sys.argv[1]).iterdir()):
        print(f"{f.stat().st_size:>10,}  {f}")
