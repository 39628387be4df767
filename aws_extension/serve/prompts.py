"""Prompts as the WebUI 1.10 reads them, turned into diffusers' prompt_embeds.

Reproduced: <lora:...> tags (positive prompt only; in the negative prompt they stay text, as in the WebUI), emphasis,
BREAK, long prompts (chunks of 75 tokens, cut after a comma within the last 20, encoded one by one and joined on the
sequence axis), the "Original" emphasis (states times weights, rescaled to the unweighted mean), CLIP skip for SD1
(SDXL ignores it, as the WebUI does by default), SDXL's penultimate states of both encoders with the pooled embedding
of the first chunk (an empty SDXL negative prompt gives zeros, as the WebUI's sd_models_xl does), and
textual-inversion embeddings named in the prompt. Prompt editing ([a:b:0.5], [a|b]) and AND are refused rather than
read as text. The shorter of prompt and negative prompt gets empty-prompt chunks appended (the WebUI's "Pad
prompt/negative prompt" option; without it the WebUI runs the two through the UNet separately).
"""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..core.errors import UserError
from ..contract.prompt_tags import LORA_KINDS, extract_networks  # noqa: F401 - re-exported: torch-free, shared with the client
from ..contract.request import BadRequest

CHUNK = 75  # tokens of one chunk, BOS and EOS excluded
COMMA_BACKTRACK = 20  # the WebUI's comma_padding_backtrack default
BREAK_MARK = ("BREAK", -1.0)  # parse_attention's item for a BREAK; never merged with a neighbour
_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_SCHEDULE = re.compile(r":\s*[+-]?(\d+\.?\d*|\.\d+)\s*$")
_NESTED = re.compile(r"\([^()\[\]]*\)|\[[^()\[\]]*\]")

Chunk = Tuple[List[int], List[float], List[Tuple[int, str]]]  # 77 ids, 77 weights, (position, embedding name)


def parse_attention(text: str, field: str = "prompt") -> List[Tuple[str, float]]:
    """The WebUI's emphasis: (x) x1.1, [x] /1.1, (x:w) xw, nested ones multiply; \\( \\) \\[ \\] \\\\ are literal,
    another backslash is dropped; brackets left open apply at the end, a stray closing one is text; BREAK (a word,
    upper case) gives BREAK_MARK. Neighbours of equal weight are merged; an empty text gives [("", 1.0)]."""
    pieces: List[List] = []  # [text, weight]; a bracket starts a new piece so that ranges can be scaled
    rounds: List[int] = []
    squares: List[int] = []
    fresh = True

    def add(s: str) -> None:
        nonlocal fresh
        if fresh or not pieces:
            pieces.append([s, 1.0])
        else:
            pieces[-1][0] += s
        fresh = False

    def scale(start: int, factor: float) -> None:
        nonlocal fresh
        for piece in pieces[start:]:
            piece[1] *= factor
        fresh = True

    i = 0
    while i < len(text):
        c, weight = text[i], _WEIGHT.match(text, i) if text[i] == ":" and rounds else None
        if c == "\\":  # an escaped bracket or backslash is text; a lone backslash is dropped, as in the WebUI
            if text[i + 1:i + 2] in ("(", ")", "[", "]", "\\"):
                add(text[i + 1])
                i += 1
        elif c in "([":
            (rounds if c == "(" else squares).append(len(pieces))
            fresh = True
        elif c == ")" and rounds:
            scale(rounds.pop(), 1.1)
        elif c == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
        elif weight:
            try:
                factor = float(weight.group(1))
            except ValueError:
                raise BadRequest(field, f"{field}: '{weight.group(0)}' is not a valid emphasis weight") from None
            scale(rounds.pop(), factor)
            i = weight.end() - 1
        else:
            add(c)
        i += 1
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    out: List[Tuple[str, float]] = []
    for piece, weight in pieces:
        for n, part in enumerate(_BREAK.split(piece)):
            if n:
                out.append(BREAK_MARK)
            if not part:
                continue
            if out and out[-1] != BREAK_MARK and out[-1][1] == weight:
                out[-1] = (out[-1][0] + part, weight)
            else:
                out.append((part, weight))
    return out or [("", 1.0)]


def _refuse_editing(text: str, field: str, composable: bool) -> None:
    """Prompt editing/alternation and AND change the picture in the WebUI; read as text they would not."""
    if composable and re.search(r"\bAND\b", text):
        raise BadRequest(field, f"{field}: AND (composable diffusion) is not supported; write 'and' for the word")
    opened: List[int] = []
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 1
        elif text[i] == "[":
            opened.append(i)
        elif text[i] == "]" and opened:
            start = opened.pop()
            inner, before = text[start + 1:i], None
            while before != inner:
                before, inner = inner, _NESTED.sub("", inner)
            if "|" in inner or _SCHEDULE.search(inner):
                raise BadRequest(field, f"{field}: prompt editing {text[start:i + 1]} is not supported "
                                 "(emphasis is written (text:weight))")
        i += 1


def _encoders(pipe) -> List[tuple]:
    """(tokenizer, text encoder) pairs: one for SD1, two for SDXL (told by pipe.text_encoder_2)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    if any(t is None or e is None for t, e in pairs):
        raise UserError("This checkpoint has no text encoder (an SDXL refiner?); it cannot be used on its own")
    return pairs


def _tokens(tokenizer, texts: Sequence[str]) -> List[List[int]]:
    """Token ids without BOS/EOS; a long text is fine here (chunks), so the length warning is off."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    """CLIP's tokenizer (both SD1 and SDXL use its vocabulary), for Embeddings.used before a pipeline is bound."""
    from transformers import CLIPTokenizer

    from .tokenizer import write_tokenizer
    with tempfile.TemporaryDirectory() as folder:  # read into memory: the files can go
        return CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(folder))), local_files_only=True)


class Embeddings:
    """Textual-inversion embeddings, used where their name appears in a prompt.

    A name matches where its tokens appear in a prompt's tokens (the WebUI's rule: case-insensitive, "easynegative,"
    matches, the longest name wins). The vectors replace the token embeddings at their positions while encoding; the
    tokenizer and the text encoder's vocabulary stay untouched. Sizes are checked against the pipeline given here or
    to bind() (encode_prompts binds its own); loaded names stay until another load() of the name or clear().
    """

    def __init__(self, pipe=None):
        self.vectors: Dict[str, List[torch.Tensor]] = {}  # name -> [n, dim] per text encoder, float32 on the CPU
        self.sources: Dict[str, Tuple[str, str]] = {}  # name -> (file name, "sd1" | "sdxl")
        self.encoders: Optional[List[tuple]] = None
        if pipe is not None:
            self.bind(pipe)

    def bind(self, pipe) -> "Embeddings":
        """Use pipe's tokenizers and check every loaded embedding against its text encoders (UserError if one
        does not fit)."""
        self.encoders = _encoders(pipe)
        for name, tensors in self.vectors.items():
            self._check(*self.sources[name], tensors)
        return self

    @property
    def kind(self) -> Optional[str]:
        return None if self.encoders is None else ("sdxl" if len(self.encoders) == 2 else "sd1")

    def _check(self, file: str, kind: str, tensors: List[torch.Tensor]) -> None:
        if kind != self.kind:
            raise UserError(f"{file}: an {kind.upper()} embedding; this checkpoint is {self.kind.upper()}")
        for tensor, (_, encoder) in zip(tensors, self.encoders):
            if tensor.shape[1] != encoder.config.hidden_size:
                raise UserError(f"{file}: the embedding's vectors have size {tensor.shape[1]}, the model's text "
                                f"encoder takes {encoder.config.hidden_size} (an embedding made for another model)")

    def clear(self) -> None:
        self.vectors.clear(), self.sources.clear()

    def load(self, name: str, path, kind: Optional[str] = None) -> None:
        """Read a WebUI (.pt/.bin string_to_param, .safetensors emb_params or clip_l+clip_g) or diffusers
        ({token: tensor}) embedding under name (the WebUI uses the file's stem); kind ("sd1" or "sdxl", the
        checkpoint's) if given must be what the file is made for. UserError naming the file if it does not fit."""
        path = Path(path)
        if path.suffix.lower() not in (".safetensors", ".pt", ".bin"):
            raise UserError(f"{path.name}: embeddings must be .pt, .bin or .safetensors files")
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file
                data = load_file(str(path), device="cpu")
            else:
                data = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise TypeError(f"holds a {type(data).__name__}, not a dict")
        except Exception as exc:  # a truncated, pickled-code or foreign file
            raise UserError(f"{path.name}: not a readable embedding file ({exc})") from None
        if "clip_l" in data and "clip_g" in data:
            tensors, made_for = [data["clip_l"], data["clip_g"]], "sdxl"
        else:
            if "string_to_param" in data and isinstance(data["string_to_param"], dict):
                data = data["string_to_param"]
            elif "emb_params" in data:
                data = {"emb_params": data["emb_params"]}
            tensors, made_for = [v for v in data.values() if isinstance(v, torch.Tensor)], "sd1"
            if len(tensors) != 1:
                raise UserError(f"{path.name}: not an embedding file (expected one tensor, found {len(tensors)})")
        if kind is not None and kind != made_for:
            raise UserError(f"{path.name}: an {made_for.upper()} embedding; this checkpoint is {kind.upper()}")
        tensors = [t.detach().float().reshape(1, -1) if t.dim() == 1 else t.detach().float() for t in tensors]
        if any(t.dim() != 2 for t in tensors) or len({t.shape[0] for t in tensors}) != 1 \
                or not 0 < tensors[0].shape[0] <= CHUNK:
            shapes = [tuple(t.shape) for t in tensors]
            raise UserError(f"{path.name}: not an embedding of 1 to {CHUNK} vectors (tensors of shape {shapes})")
        if not _tokens(_clip_tokenizer() if self.encoders is None else self.encoders[0][0], [name])[0]:
            raise UserError(f"{path.name}: the name {name!r} has no tokens to find in a prompt")
        if self.encoders is not None:
            self._check(path.name, made_for, tensors)
        self.vectors[name], self.sources[name] = tensors, (path.name, made_for)

    def lookup(self, tokenizer) -> Dict[str, Tuple[int, ...]]:
        """Each name's token ids for this tokenizer."""
        names = list(self.vectors)
        return {name: tuple(ids) for name, ids in zip(names, _tokens(tokenizer, names))}

    def used(self, prompt_texts: Sequence[str]) -> List[str]:
        """Names of the loaded embeddings that these prompts (tags already extracted) use, in order of first use."""
        tokenizer = _clip_tokenizer() if self.encoders is None else self.encoders[0][0]
        chunks = [c for text in prompt_texts for c in _chunks(parse_attention(text), tokenizer, 0, self)]
        return list(dict.fromkeys(name for chunk in chunks for _, name in chunk[2]))


def _find(lookup: Dict[str, Tuple[int, ...]], tokens: Sequence[int], position: int) -> Optional[Tuple[str, int]]:
    """The embedding whose tokens start at position (the longest), as (name, its token count)."""
    hits = [(name, len(ids)) for name, ids in lookup.items() if tuple(tokens[position:position + len(ids)]) == ids]
    return max(hits, key=lambda hit: hit[1]) if hits else None


def _chunks(parsed: List[Tuple[str, float]], tokenizer, encoder: int, embeddings: Optional[Embeddings]) -> List[Chunk]:
    """The WebUI's chunking: 75 tokens per chunk, cut after a comma within the last 20 tokens, BREAK closes one.
    A chunk is BOS, its tokens, EOS, then the tokenizer's pad id (EOS for CLIP-L, "!" for SDXL's second one)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    lookup = embeddings.lookup(tokenizer) if embeddings else {}
    chunks: List[Chunk] = []
    ids: List[int] = []
    weights: List[float] = []
    fixes: List[Tuple[int, str]] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, fixes, last_comma
        pad = CHUNK - len(ids)
        chunks.append(([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad,
                       [1.0] + weights + [1.0] * (pad + 1), [(p + 1, name) for p, name in fixes]))
        ids, weights, fixes, last_comma = [], [], [], -1

    texts = [text for text, weight in parsed if (text, weight) != BREAK_MARK]
    tokenized = iter(_tokens(tokenizer, texts))
    for text, weight in parsed:
        if (text, weight) == BREAK_MARK:
            close()
            continue
        tokens, i = next(tokenized), 0
        while i < len(tokens):
            if tokens[i] == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved = (ids[cut:], weights[cut:], [(p - cut, n) for p, n in fixes if p >= cut])
                ids, weights, fixes = ids[:cut], weights[:cut], [(p, n) for p, n in fixes if p < cut]
                close()
                ids, weights, fixes = moved
            if len(ids) == CHUNK:
                close()
            hit = _find(lookup, tokens, i) if lookup else None
            if hit is None:
                ids.append(tokens[i])
                weights.append(weight)
                i += 1
                continue
            count = embeddings.vectors[hit[0]][encoder].shape[0]
            if len(ids) + count > CHUNK:
                close()
            fixes.append((len(ids), hit[0]))
            ids += [0] * count  # placeholder ids; their input embeddings are replaced
            weights += [weight] * count
            i += hit[1]
    if ids or not chunks:
        close()
    return chunks


def _run(text_encoder, chunks: List[Chunk], device, vectors) -> object:
    """The text encoder's output for the chunks (one batch), embedding vectors written over the token embeddings."""
    fixes = [(row, pos, vectors(name)) for row, chunk in enumerate(chunks) for pos, name in chunk[2]]

    def overwrite(module, args, output):
        output = output.clone()
        for row, pos, vec in fixes:
            output[row, pos:pos + vec.shape[0]] = vec.to(output.device, output.dtype)
        return output

    # transformers 5.x CLIPTextModel takes no inputs_embeds: a hook on the token embedding layer replaces rows
    hook = text_encoder.get_input_embeddings().register_forward_hook(overwrite) if fixes else None
    try:
        return text_encoder(torch.tensor([c[0] for c in chunks], device=device), output_hidden_states=True)
    finally:
        if hook is not None:
            hook.remove()


def _weigh(z: torch.Tensor, chunks: List[Chunk]) -> torch.Tensor:
    """The WebUI's "Original" emphasis, per chunk: z times the weights, rescaled to z's unweighted mean."""
    w = torch.tensor([c[1] for c in chunks], dtype=torch.float32, device=z.device)[..., None]
    if bool((w == 1).all()):
        return z
    zf = z.float()
    weighted = zf * w
    weighted = weighted * (zf.mean(dim=(1, 2), keepdim=True) / weighted.mean(dim=(1, 2), keepdim=True))
    return weighted.to(z.dtype)


def encode_prompts(pipe, prompt: str, negative_prompt: str, *, clip_skip: int = 1,
                   embeddings: Optional[Embeddings] = None, pad: bool = True) -> dict:
    """Pipeline keyword arguments: prompt_embeds and negative_prompt_embeds, [1, 77 * chunks, dim] (the same chunk
    count for both unless pad=False, the WebUI's default, which then runs them through the UNet separately), and for
    SDXL pooled_prompt_embeds and negative_pooled_prompt_embeds, [1, dim] (an empty SDXL negative prompt gives zeros,
    as in the WebUI); in the text encoder's dtype, on the pipeline's execution device. For a batch the caller repeats
    them. Extra-network tags still in prompt are dropped (extract_networks gives them); clip_skip (the WebUI's "Clip
    skip") applies to SD1 only, as the WebUI's SDXL ignores it by default.
    """
    prompt = extract_networks(prompt)[0]
    _refuse_editing(prompt, "prompt", composable=True)
    _refuse_editing(negative_prompt, "negative_prompt", composable=False)
    encoders = _encoders(pipe)
    sdxl = len(encoders) == 2
    layers = encoders[0][1].config.num_hidden_layers
    if not sdxl and not (isinstance(clip_skip, int) and 1 <= clip_skip <= layers):
        raise BadRequest("clip_skip", f"clip_skip must be an integer from 1 to {layers}, not {clip_skip!r}")
    if embeddings is not None:
        embeddings.bind(pipe)
    device = getattr(pipe, "_execution_device", None) or encoders[0][1].device
    parsed = [parse_attention(prompt), parse_attention(negative_prompt, "negative_prompt")]
    chunks = [[_chunks(p, tok, n, embeddings) for p in parsed] for n, (tok, _) in enumerate(encoders)]
    for side in (0, 1):  # the encoders' chunks line up; pad gives both sides the same count
        count = max(len(chunks[n][s]) for n in range(len(encoders)) for s in ((0, 1) if pad else (side,)))
        for n, (tokenizer, _) in enumerate(encoders):
            chunks[n][side] += [_chunks([("", 1.0)], tokenizer, n, None)[0]] * (count - len(chunks[n][side]))
    dtype = encoders[0][1].dtype
    result: dict = {}
    for side, key in enumerate(("prompt_embeds", "negative_prompt_embeds")):
        states, pooled = [], None
        for n, (_, encoder) in enumerate(encoders):
            with torch.no_grad():
                out = _run(encoder, chunks[n][side], device, lambda name, n=n: embeddings.vectors[name][n])
                if sdxl:
                    z = out.hidden_states[-2]
                    pooled = out.text_embeds[:1] if n == 1 else pooled
                elif clip_skip == 1:
                    z = out.last_hidden_state
                else:  # transformers 5.x CLIPTextModel has no .text_model: the layer norm is its own
                    z = getattr(encoder, "text_model", encoder).final_layer_norm(out.hidden_states[-clip_skip])
                states.append(_weigh(z, chunks[n][side]).to(device, dtype))
        z = torch.cat(states, dim=-1)
        result[key] = z.reshape(1, -1, z.shape[-1])
        if sdxl:
            result[key.replace("prompt_embeds", "pooled_prompt_embeds")] = pooled.to(device, dtype)
    if sdxl and negative_prompt == "":  # the WebUI zeroes an empty SDXL negative prompt, pooled one included
        for key in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            result[key] = torch.zeros_like(result[key])
    return result
