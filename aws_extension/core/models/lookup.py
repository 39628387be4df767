"""The cloud models a request names: by file name, name without extension, WebUI title or model hash, each with a
few requests whatever the number of models; and the forms' lists of checkpoints and VAEs."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

from ...contract.prompt_tags import extract_networks
from ...contract.request import BadRequest
from ..aws import Aws
from ..errors import NotFound, Refused
from .catalog import CloudModel, find_by_hash, list_models, model_at, models_with_stem, read_record
from .detect import BASE_NAMES
from .types import MODEL_EXTENSIONS, has_model_extension, model_type

NO_VAE = ("", "none", "automatic")  # the WebUI's VAE settings that mean "the checkpoint's own"
OWN_VAE = "None"  # how the lists offer "the checkpoint's own VAE", as the WebUI's VAE setting calls it
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")  # what the server loads as embeddings
HASH = re.compile(r"[0-9a-fA-F]{10,64}")  # the WebUI's "Model hash" is 10; a longer sha256 prefix works too
TITLE = re.compile(r"(.+?)\s*\[([0-9a-fA-F]{8,64})\]")  # the WebUI's checkpoint title "name.safetensors [hash]"


def cloud_checkpoints(aws: Aws) -> List[str]:
    return [m.name for m in list_models(aws, "checkpoint")]


def cloud_vaes(aws: Aws) -> List[str]:
    return [OWN_VAE] + [m.name for m in list_models(aws, "vae")]


# -- models ---------------------------------------------------------------------------------------------------------
def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _preferred(models: Sequence[CloudModel]) -> Dict[str, CloudModel]:
    """Stem -> model; of two files with one stem, the extension earlier in MODEL_EXTENSIONS (.safetensors first)."""
    rank = {ext: i for i, ext in enumerate(MODEL_EXTENSIONS)}
    found: Dict[str, CloudModel] = {}
    for m in sorted(models, key=lambda m: rank.get("." + m.name.rsplit(".", 1)[-1].lower(), 99)):
        found.setdefault(_stem(m.name), m)
    return found


def _there(models: Sequence[CloudModel], limit: int = 20) -> str:
    names = sorted(m.name for m in models)
    if not names:
        return "none uploaded"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "there: " + ", ".join(names[:limit]) + more


def find_checkpoint_by_hash(aws: Aws, short_hash: str) -> Optional[str]:
    """The cloud checkpoint's file name for an infotext's "Model hash" (None when none has it)."""
    if not HASH.fullmatch((short_hash or "").strip()):
        return None
    found = find_by_hash(aws, "checkpoint", short_hash.strip())
    return found[0].name if found else None


def lookup(aws: Aws, type_id: str, wanted: str) -> Optional[CloudModel]:
    """By file name, key, s3:// URI, name without extension (the infotext's "Model"), WebUI title or hash. An exact
    name costs one HEAD, a name without extension one LIST of that stem, a hash one LIST of its markers."""
    t = model_type(type_id)
    text = wanted.strip()
    for prefix in (aws.s3_uri(), t.prefix):
        text = text[len(prefix):] if text.startswith(prefix) else text
    title = TITLE.fullmatch(text)
    name = title.group(1) if title else text
    exact = model_at(aws, type_id, name) if has_model_extension(name) else None
    if exact:
        return exact
    stem = _preferred(models_with_stem(aws, type_id, name)).get(name) if name and "/" not in name else None
    if stem:
        return stem
    short = title.group(2) if title else text
    if HASH.fullmatch(short):
        found = find_by_hash(aws, type_id, short)
        if found:
            return found[0]
    return None


def _find(aws: Aws, type_id: str, wanted: str) -> CloudModel:
    """lookup(), or NotFound saying what is there (the only case that lists the whole folder)."""
    found = lookup(aws, type_id, wanted)
    if found:
        return found
    t = model_type(type_id)
    raise NotFound(f"No {t.label} '{wanted.strip()}' in {aws.s3_uri(t.prefix)} ({_there(list_models(aws, type_id))}).")


def _checkpoint(aws: Aws, wanted: str) -> CloudModel:
    if not (wanted or "").strip():
        raise Refused("Choose a checkpoint: generating needs one of the cloud's SD checkpoints.")
    return _find(aws, "checkpoint", wanted)


def checkpoint_uri(aws: Aws, wanted: str) -> str:
    """The s3:// URI of a cloud checkpoint named as resolve_models takes it (the request's models.checkpoint)."""
    return aws.s3_uri(_checkpoint(aws, wanted).key)


def _recorded_base(aws: Aws, key: str) -> Optional[str]:
    record = read_record(aws, key, legacy=False)  # one GET; older records say no base
    return record.base if record and record.base in BASE_NAMES else None


def check_bases(aws: Aws, checkpoint: CloudModel, others: Sequence[tuple]) -> None:
    """Refuse LoRAs and embeddings ((label, model) pairs) made for another base model than the checkpoint, where the
    records of both say (what their headers told at upload): one GET for the checkpoint's, and only when it names
    a base one GET per other model, side by side."""
    base = _recorded_base(aws, checkpoint.key) if others else None
    if not base:
        return
    with ThreadPoolExecutor(max_workers=8) as pool:
        bases = list(pool.map(lambda m: _recorded_base(aws, m.key), [m for _, m in others]))
    wrong = [f"{label} {m.name} is for {BASE_NAMES[b]}" for (label, m), b in zip(others, bases) if b and b != base]
    if wrong:
        raise Refused(f"The checkpoint {checkpoint.name} is {BASE_NAMES[base]}, but {'; '.join(wrong)}: they do not "
                      f"work together. Choose a checkpoint for the same base, or leave those out of the prompt.")


def _mentions(texts: Sequence[str], word: str) -> bool:
    pattern = re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.IGNORECASE)
    return any(pattern.search(text) for text in texts)


def resolve_models(aws: Aws, checkpoint: str, vae: Optional[str], prompts: Sequence[str],
                   negative_prompts: Sequence[str] = ()) -> dict:
    """The request's `models`: S3 locations of the checkpoint, the VAE, every LoRA the prompts' tags name, and every
    embedding named as a word in a prompt. One listing per model folder. NotFound names what is missing; Refused
    when their records say a LoRA or embedding is for another base model than the checkpoint."""
    checkpoint_model = _checkpoint(aws, checkpoint)
    vae_uri = None
    if vae and vae.strip().lower() not in NO_VAE:
        vae_uri = aws.s3_uri(_find(aws, "vae", vae).key)
    texts, wanted = [], []
    for prompt in prompts:
        try:
            text, networks = extract_networks(prompt or "")
        except BadRequest as exc:  # the server would refuse it after the upload and the queue
            raise Refused(str(exc)) from None
        texts.append(text)
        wanted += [name for name, _ in networks]
    loras: List[CloudModel] = []
    if wanted:  # one LIST per LoRA named (of its stem), side by side
        names = list(dict.fromkeys(wanted))
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda n: _preferred(models_with_stem(aws, "lora", n)).get(n), names))
        missing = [name for name, model in zip(names, found) if model is None]
        if missing:
            raise NotFound(f"The prompt uses LoRA {', '.join(repr(n) for n in missing)}, not in "
                           f"{aws.s3_uri(model_type('lora').prefix)} ({_there(list_models(aws, 'lora'))}): "
                           f"upload it or fix the tag.")
        loras = found
    texts += [text or "" for text in negative_prompts]  # LoRA tags in a negative prompt are text, as in the WebUI
    embeddings: List[CloudModel] = []
    if any(text.strip() for text in texts):
        candidates = [m for m in list_models(aws, "embedding") if m.name.lower().endswith(EMBEDDING_EXTENSIONS)]
        embeddings = [m for name, m in sorted(_preferred(candidates).items()) if _mentions(texts, name)]
    # before anything is invoked; VAEs are left out: a header does not tell an SD 1.x VAE from an SDXL one
    check_bases(aws, checkpoint_model, [("LoRA", m) for m in loras] + [("embedding", m) for m in embeddings])
    return {"checkpoint": aws.s3_uri(checkpoint_model.key), "vae": vae_uri, "lora": [aws.s3_uri(m.key) for m in loras],
            "embeddings": [aws.s3_uri(m.key) for m in embeddings]}
