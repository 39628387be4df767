"""CLIP's tokenizer files, written from the BPE vocabulary that ships inside a PyPI package.

Nothing may come from a model hub at run time. The `clip-anytorch` package carries OpenAI's
`bpe_simple_vocab_16e6.txt.gz`; from it we write the vocab.json/merges.txt pair that transformers'
CLIPTokenizer reads. The package is installed without its dependencies (only this file is used), so
nothing of it is imported.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError

MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file (line 0 is a header)
START, END = "<|startoftext|>", "<|endoftext|>"


def bpe_path() -> Path:
    spec = importlib.util.find_spec("clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise ConfigError("CLIP's tokenizer vocabulary is missing: install the server's requirements "
                      "(container/requirements.txt, which includes clip-anytorch).")


def _byte_unicode() -> List[str]:
    """GPT-2's reversible byte -> printable character table, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    # CLIP lists the printable bytes first, then the remapped ones, each keeping its character
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def write_tokenizer(folder: Path, pad_token: Optional[str] = None) -> Path:
    """vocab.json, merges.txt and tokenizer_config.json for transformers' CLIPTokenizer in folder."""
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")[1:MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    base = _byte_unicode()
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [START, END]
    vocab: Dict[str, int] = {t: i for i, t in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    config = {"model_max_length": 77, "bos_token": START, "eos_token": END, "unk_token": END,
              "pad_token": pad_token or END, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
