"""The cloud models a request names: by file name, name without extension, WebUI title or model hash, each with a
few requests whatever the number of models; and the forms' lists of checkpoints, VAEs, LoRAs and embeddings, those
made for another base model than the chosen checkpoint left out."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ...contract.prompt_tags import extract_networks
from ...contract.request import BadRequest
from ..aws import Aws
from ..errors import NotFound, Refused
from .catalog import (CloudModel, find_by_hash, list_models, list_models_with_bases, model_at, models_with_stem,
                      read_record)
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


# -- what fits the checkpoint ---------------------------------------------------------------------------------------
KIND_PLURALS = {"LoRA": "LoRAs", "embedding": "embeddings", "VAE": "VAEs"}


@dataclass(frozen=True)
class Extra:
    """A LoRA or an embedding as a prompt names it: `name` is its file name without the extension."""

    type: str  # "lora" or "embedding"
    name: str
    base: Optional[str] = None  # what its record says; None: unknown

    @property
    def kind(self) -> str:
        return "LoRA" if self.type == "lora" else "embedding"

    @property
    def label(self) -> str:
        """As a list offers it: "detail (LoRA)", "bad-hands (embedding)"."""
        return f"{self.name} ({self.kind})"

    @property
    def tag(self) -> str:
        """What goes into the prompt, as the WebUI's extra networks write it (a LoRA at weight 1)."""
        return f"<lora:{self.name}:1>" if self.type == "lora" else self.name

    def pattern(self) -> re.Pattern:
        """Where the prompt uses it: the LoRA's tag at any weight, or the embedding's name as a word of its own."""
        if self.type == "lora":
            return re.compile(r"<lora:" + re.escape(self.name) + r"(?::[^>]*)?>")
        return re.compile(r"(?<![^\s,(\[])" + re.escape(self.name) + r"(?![^\s,)\]:])")


@dataclass
class GenerateModels:
    """What Generate offers: the checkpoints' names, and the VAEs, LoRAs and embeddings with their bases."""

    checkpoints: List[str] = field(default_factory=list)
    vaes: List[CloudModel] = field(default_factory=list)
    extras: List[Extra] = field(default_factory=list)


@dataclass
class Fitting:
    """The VAE names (OWN_VAE first) and the extras that fit a checkpoint, and a line saying what was left out."""

    vaes: List[str]
    extras: List[Extra]
    hidden: str = ""


def generate_models(aws: Aws) -> GenerateModels:
    """The four folders side by side: the checkpoints with one LIST per 1,000, the others with their bases
    (list_models_with_bases: three LISTs per 1,000, no GET once their bases are marked)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        checkpoints = pool.submit(list_models, aws, "checkpoint")
        vaes, loras, embeddings = (pool.submit(list_models_with_bases, aws, t) for t in ("vae", "lora", "embedding"))
        checkpoints, vaes, loras, embeddings = (f.result() for f in (checkpoints, vaes, loras, embeddings))
    embeddings = [m for m in embeddings if m.name.lower().endswith(EMBEDDING_EXTENSIONS)]
    extras = [Extra(t, stem, m.base) for t, models in (("lora", loras), ("embedding", embeddings))
              for stem, m in sorted(_preferred(models).items(), key=lambda item: item[0].lower())]
    return GenerateModels([m.name for m in checkpoints], vaes, extras)


def checkpoint_base(aws: Aws, name: Optional[str]) -> Optional[str]:
    """The base the checkpoint's record names (one GET); None when it names none, or no checkpoint is chosen."""
    return _recorded_base(aws, model_type("checkpoint").key(name)) if name and "/" not in name else None


def fits(base: Optional[str], checkpoint: Optional[str]) -> bool:
    """A model goes with the checkpoint unless both bases are known and differ: an unknown one (an older record,
    a header that did not say) is never left out."""
    return not base or not checkpoint or base == checkpoint


def hidden_text(hidden: Sequence[tuple], checkpoint: Optional[str]) -> str:
    """"3 LoRAs for SDXL, 1 VAE for SD 2.x hidden: the checkpoint is SD 1.x." for (kind, base) pairs left out."""
    if not hidden or checkpoint not in BASE_NAMES:
        return ""
    counts: Dict[tuple, int] = {}
    order = {kind: i for i, kind in enumerate(KIND_PLURALS)}
    bases = list(BASE_NAMES)
    for kind, base in sorted(hidden, key=lambda kb: (order[kb[0]], bases.index(kb[1]))):
        counts[(kind, base)] = counts.get((kind, base), 0) + 1
    parts = [f"{n} {kind if n == 1 else KIND_PLURALS[kind]} for {BASE_NAMES[base]}" for (kind, base), n in counts.items()]
    return f"{', '.join(parts)} hidden: the checkpoint is {BASE_NAMES[checkpoint]}."


def fitting(models: GenerateModels, checkpoint: Optional[str]) -> Fitting:
    """The VAEs and extras that go with a checkpoint of base `checkpoint` (None: unknown, all of them)."""
    vaes = [m.name for m in models.vaes if fits(m.base, checkpoint)]
    extras = [e for e in models.extras if fits(e.base, checkpoint)]
    hidden = [("VAE", m.base) for m in models.vaes if not fits(m.base, checkpoint)]
    hidden += [(e.kind, e.base) for e in models.extras if not fits(e.base, checkpoint)]
    return Fitting([OWN_VAE] + vaes, extras, hidden_text(hidden, checkpoint))


def add_to_prompt(prompt: str, extra: Extra) -> str:
    """The prompt with the extra's tag at the end, after a space (unless the prompt already uses it)."""
    text = prompt or ""
    if extra.pattern().search(text):
        return text
    return text + (" " if text and not text[-1].isspace() else "") + extra.tag


def remove_from_prompt(prompt: str, extra: Extra) -> str:
    """The prompt without the extra: every use of it, with the separator before it (a comma and spaces)."""
    text = prompt or ""
    removed = re.sub(r"(?:[ \t]*,)?[ \t]*" + extra.pattern().pattern, "", text)
    return removed.lstrip(" \t,") if text[:1] not in (" ", "\t", ",") else removed


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
