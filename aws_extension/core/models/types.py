"""The six model types: UI label, WebUI folder, S3 prefix, accepted file extensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import Refused

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelType:
    id: str  # short CLI name
    label: str  # as the tab shows it
    webui_folder: str  # relative to the WebUI data dir (A1111 defaults)
    s3_folder: str  # under models/ in the bucket
    aliases: tuple = ()

    @property
    def prefix(self) -> str:
        return f"models/{self.s3_folder}/"

    def key(self, name: str) -> str:
        return self.prefix + name


MODEL_TYPES = (
    ModelType("checkpoint", "SD Checkpoint", "models/Stable-diffusion", "Stable-diffusion", ("sd", "ckpt")),
    ModelType("embedding", "Textual Inversion", "embeddings", "embeddings", ("textual-inversion", "ti")),
    ModelType("lora", "LoRA", "models/Lora", "Lora"),
    ModelType("controlnet", "ControlNet", "models/ControlNet", "ControlNet"),
    ModelType("hypernetwork", "Hypernetwork", "models/hypernetworks", "hypernetworks"),
    ModelType("vae", "VAE", "models/VAE", "VAE"),
)


def model_type(name: str) -> ModelType:
    """Find a type by id, alias, folder name or label, case-insensitive."""
    wanted = (name or "").strip().lower()
    for t in MODEL_TYPES:
        if wanted in {t.id, t.label.lower(), t.s3_folder.lower(), *t.aliases} or wanted == t.prefix.lower():
            return t
    choices = ", ".join(t.id for t in MODEL_TYPES)
    raise Refused(f"Unknown model type '{name}': choose one of {choices}.")


def type_of_key(key: str) -> Optional[ModelType]:
    for t in MODEL_TYPES:
        if key.startswith(t.prefix):
            return t
    return None


def has_model_extension(name: str) -> bool:
    return name.lower().endswith(MODEL_EXTENSIONS)


def check_file_name(name: str, item: Optional[str] = None) -> str:
    """A plain file name with a model extension, safe as the last part of an S3 key."""
    item = item or name
    if not name or name in (".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 for c in name):
        raise Refused(f"{item}: '{name}' is not a valid file name.")
    if not has_model_extension(name):
        raise Refused(f"{item}: not a model file (accepted: {' '.join(MODEL_EXTENSIONS)}).")
    return name
