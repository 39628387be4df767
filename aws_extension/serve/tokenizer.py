"""CLIP's tokenizer files, written from the BPE merges that ship inside this package.

Nothing may come from a model hub at run time. `clip_merges.txt` holds the first 48,894 merges of OpenAI's
`bpe_simple_vocab_16e6.txt.gz` (CLIP, MIT licence), the part CLIP uses: from it we write the vocab.json/merges.txt
pair that transformers' CLIPTokenizer reads. Shipping the data with the package means every way of installing
the server (pip, the image, the code package) has it, and no package with torch/torchvision requirements of its
own is needed just for a vocabulary file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

MERGES_FILE = Path(__file__).with_name("clip_merges.txt")
MERGES = 49152 - 256 - 2  # CLIP's 48,894 merges: with 512 byte tokens and 2 specials, 49,408 ids
START, END = "<|startoftext|>", "<|endoftext|>"


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
    lines = MERGES_FILE.read_text(encoding="utf-8").splitlines()
    if len(lines) != MERGES:  # a truncated install would silently change every token id
        raise ValueError(f"{MERGES_FILE} holds {len(lines)} merges, not CLIP's {MERGES}: reinstall the server.")
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
