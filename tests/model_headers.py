"""Tiny model files of every kind, made at test time without torch: the tensor names and shapes a detector reads,
in the formats the WebUI uses. .safetensors headers are written by hand; .ckpt/.pt are torch's zip (an
`archive/data.pkl` pickled the way torch pickles tensors: `_rebuild_tensor_v2(storage by persistent id, offset,
size, stride, ...)`), streamed like torch.save writes it (data.pkl first, sizes after the data)."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

UNET = "model.diffusion_model."
ATTN = "transformer_blocks.0.attn2.to_k"
KINDS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "sd1-checkpoint": {UNET + f"input_blocks.1.1.{ATTN}.weight": (8, 768),
                       "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
                       "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (8, 768)},
    "sd2-checkpoint": {UNET + f"input_blocks.1.1.{ATTN}.weight": (8, 1024),
                       "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
                       "cond_stage_model.model.token_embedding.weight": (8, 1024)},
    "sdxl-checkpoint": {UNET + f"input_blocks.4.1.{ATTN}.weight": (8, 2048),
                        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 768),
                        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (8,)},
    "sd3-checkpoint": {UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (8,),
                       "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (8, 768)},
    "flux-checkpoint": {"double_blocks.0.img_attn.norm.key_norm.scale": (8,), "single_blocks.0.linear1.weight": (8, 8)},
    "sd1-lora": {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (8, 4),
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": (),
                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)},
    "sd2-lora": {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024),
                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1024)},
    "sdxl-lora": {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
                  "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
                  "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)},
    "sdxl-lycoris": {f"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.{p}": s for p, s in
                     (("hada_w1_a", (8, 4)), ("hada_w1_b", (4, 2048)), ("hada_w2_a", (8, 4)), ("hada_w2_b", (4, 2048)),
                      ("alpha", ()))},
    "flux-lora": {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": (4, 8),
                  "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": (8, 4)},
    "sd1-embedding": {"emb_params": (2, 768)},
    "sdxl-embedding": {"clip_l": (2, 768), "clip_g": (2, 1280)},
    "vae": {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 4, 3, 3),
            "quant_conv.weight": (8, 8, 1, 1), "post_quant_conv.weight": (4, 4, 1, 1)},
    "flux-vae": {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 16, 3, 3)},
    "sd1-controlnet": {"control_model.input_hint_block.0.weight": (16, 3, 3, 3),
                       f"control_model.input_blocks.1.1.{ATTN}.weight": (8, 768)},
    "sdxl-controlnet": {"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
                        f"down_blocks.1.attentions.0.{ATTN}.weight": (8, 2048),
                        "add_embedding.linear_1.weight": (8, 2816)},
}


def safetensors_bytes(tensors: Dict[str, Tuple[int, ...]], size: Optional[int] = None, seed: int = 1,
                      metadata: Optional[dict] = None) -> bytes:
    """A .safetensors file (U8 tensors, so a shape's bytes are its element count); `size`: padded with one more
    tensor of bytes that differ per seed to exactly that many bytes."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = math.prod(shape)
        header[name] = {"dtype": "U8", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    pad = 0 if size is None else size - 8 - offset - len(json.dumps(header)) - 100
    while True:
        if size is not None:
            header["padding"] = {"dtype": "U8", "shape": [pad], "data_offsets": [offset, offset + pad]}
        payload = json.dumps(header).encode()
        spare = 0 if size is None else size - (8 + len(payload) + offset + pad)
        if spare >= 0:
            break
        pad += spare
    assert pad >= 0, f"{size} bytes cannot hold these tensors"
    payload += b" " * spare  # spaces after the JSON: still a valid header, and the file exactly `size`
    return struct.pack("<Q", len(payload)) + payload + filler(offset + max(pad, 0), seed)


def filler(n: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def write_safetensors(path: Path, kind_or_tensors, size: Optional[int] = None, seed: int = 1, **kw) -> bytes:
    tensors = KINDS[kind_or_tensors] if isinstance(kind_or_tensors, str) else kind_or_tensors
    data = safetensors_bytes(tensors, size, seed, **kw)
    Path(path).write_bytes(data)
    return data


# -- torch's zip, without torch ------------------------------------------------------------------------------------
class _Storage:
    def __init__(self, numel: int):
        self.numel = numel


def _rebuild_tensor_v2(*args):  # named like torch's: only its name is pickled, and nothing here unpickles
    raise AssertionError("the detector must never unpickle")


class FakeTensor:
    def __init__(self, *shape: int):
        self.shape = tuple(shape)

    def __reduce__(self):
        stride = tuple(math.prod(self.shape[i + 1:]) for i in range(len(self.shape)))
        return _rebuild_tensor_v2, (_Storage(math.prod(self.shape)), 0, self.shape, stride, False,
                                    collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):  # torch pickles each storage by reference to its record in the zip
        if isinstance(obj, _Storage):
            return ("storage", "FloatStorage", str(id(obj)), "cpu", obj.numel)
        return None


class _Unseekable(io.RawIOBase):
    """As torch.save writes: no seeking back, so each entry's sizes come after its data."""

    def __init__(self):
        self.parts = []

    def writable(self):
        return True

    def write(self, b):
        self.parts.append(bytes(b))
        return len(b)


def torch_zip_bytes(obj, archive: str = "archive", streamed: bool = True) -> bytes:
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    out = _Unseekable() if streamed else io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        z.writestr(f"{archive}/data/0", bytes(256))
        z.writestr(f"{archive}/version", "3\n")
    return b"".join(out.parts) if streamed else out.getvalue()


def state_dict(kind: str) -> dict:
    return {name: FakeTensor(*shape) for name, shape in KINDS[kind].items()}


def write_torch(path: Path, obj, **kw) -> bytes:
    data = torch_zip_bytes(obj, Path(path).stem, **kw)
    Path(path).write_bytes(data)
    return data


def webui_embedding(dim: int = 768) -> dict:
    """A textual inversion as the WebUI saves it (.pt)."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": FakeTensor(2, dim)}, "name": "emb", "step": 0,
            "sd_checkpoint": None, "sd_checkpoint_name": None}


def webui_hypernetwork() -> dict:
    """A hypernetwork as the WebUI saves it (.pt): modules per context width, and its settings by name."""
    layers = {size: [{"linear.0.weight": FakeTensor(2, size), "linear.0.bias": FakeTensor(2)},
                     {"linear.0.weight": FakeTensor(2, size)}] for size in (768, 1024, 320, 640, 1280)}
    return {**layers, "step": 0, "name": "hn", "layer_structure": [1, 2, 1], "activation_func": "linear",
            "is_layer_norm": False}
