"""The tensor names (and shapes) of a model file, read from its first bytes only, never by unpickling.

.safetensors: an 8-byte little-endian length, then a JSON header of {name: {dtype, shape, data_offsets}}.
.ckpt/.pt/.pth/.bin: torch's zip, whose `<archive>/data.pkl` names the state dict's keys; torch.save writes that
entry first, so its local header at offset 0 says where it ends. Older files are plain pickles from the start.
A pickle is only walked opcode by opcode (pickletools.genops): no object is built and no code runs.
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

MiB = 1024 * 1024
# No model's header comes near this (an SDXL checkpoint's is ~300 KB); a bigger claim is not a model's header.
HEAD_LIMIT = 16 * MiB
Shapes = Dict[str, Optional[Tuple[int, ...]]]  # tensor name -> shape; other names the file holds -> None
ZIP_LOCAL = b"PK\x03\x04"
PICKLE_END = b".PK\x07\x08"  # a pickle's STOP, then the zip's data descriptor


class Unreadable(Exception):
    """The file is not what its name says (or is cut short): the reason, as the end of a sentence."""


def is_safetensors(name: str) -> bool:
    return name.lower().endswith(".safetensors")


def head_length(name: str, head: bytes, size: Optional[int] = None) -> int:
    """How many of the file's first bytes `read_head` needs, judged from the `head` read so far (64 KiB, say):
    more than len(head) means read up to that many and ask again (torch's zip says where data.pkl ends only after
    it, so its end is searched for in a growing head)."""
    if is_safetensors(name) and len(head) >= 8:
        wanted = 8 + struct.unpack("<Q", head[:8])[0]
        if wanted > HEAD_LIMIT + 8 or (size is not None and wanted > size):
            return len(head)  # the claim alone says it is no header: read no more
    elif head.startswith(ZIP_LOCAL) and len(head) >= 30:
        _, _, flags, _, _, _, _, packed, _, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", head[:30])
        wanted = 30 + name_len + extra_len + packed
        if flags & 8 and not packed:  # the size comes after the data: up to the end of data.pkl's pickle
            end = head.find(PICKLE_END, 30)
            wanted = end + 1 if end >= 0 else max(64 * 1024, 4 * len(head))
    else:
        wanted = MiB  # a plain pickle (torch before 1.6): its opening, where the names are
    wanted = min(wanted, HEAD_LIMIT + 64 * 1024)
    return min(wanted, size) if size is not None else wanted


def grow_head(name: str, head: bytes, read: Callable[[int], bytes], size: Optional[int] = None) -> bytes:
    """`head` and as many more bytes from `read(n)` (b"" at the end) as `read_head` needs."""
    while True:
        wanted = head_length(name, head, size)
        more = read(wanted - len(head)) if wanted > len(head) else b""
        if not more:
            return head
        head += more


def read_head(name: str, head: bytes, size: Optional[int]) -> Shapes:
    """The names in a file, from its first bytes (`size`: the whole file's, when known). Unreadable when the
    bytes contradict the format the name gives; an empty dict when they are of a format we cannot look into."""
    if is_safetensors(name):
        return safetensors_header(head, size)
    if head.startswith(ZIP_LOCAL):
        return _first_zip_entry(head)
    if head[:1] == b"\x80":
        return scan_pickles(head)
    raise Unreadable("it is not a PyTorch file (neither a zip archive nor a pickle)")


def read_file(path: Path) -> Shapes:
    """The names in a file on disk: the safetensors header, or the zip's data.pkl found through its listing."""
    size = path.stat().st_size
    with path.open("rb") as f:
        first = f.read(64 * 1024)
        if is_safetensors(path.name) or not first.startswith(ZIP_LOCAL):
            return read_head(path.name, grow_head(path.name, first, f.read, size), size)
        try:
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                pkl = [i for i in archive.infolist() if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
                if not pkl:
                    return {}  # a zip, but not torch's: nothing to tell
                if pkl[0].file_size > HEAD_LIMIT:
                    return {}
                return scan_pickles(archive.read(pkl[0]))
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise Unreadable(f"its zip listing is unreadable, a damaged or truncated file ({exc})") from None


def safetensors_header(head: bytes, size: Optional[int]) -> Shapes:
    if len(head) < 8:
        raise Unreadable("it is too short to be a .safetensors file")
    length = struct.unpack("<Q", head[:8])[0]
    if length > HEAD_LIMIT:
        raise Unreadable(f"its header claims {length:,} bytes, far more than any model's: not a .safetensors file")
    if size is not None and 8 + length > size:
        raise Unreadable(f"its header claims {length:,} bytes but the whole file has {size:,}: "
                         "not a .safetensors file, or cut short")
    if len(head) < 8 + length:
        raise Unreadable("the file ends inside its header")
    try:
        header = json.loads(head[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Unreadable("its header is not JSON: not a .safetensors file") from None
    if not isinstance(header, dict):
        raise Unreadable("its header is not a table of tensors: not a .safetensors file")
    shapes: Shapes = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shape = tuple(int(n) for n in entry["shape"])
            start, stop = (int(n) for n in entry["data_offsets"])
            if not isinstance(entry["dtype"], str) or not 0 <= start <= stop:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise Unreadable(f"its header does not describe the tensor '{key}': not a .safetensors file") from None
        shapes[key] = shape
        end = max(end, stop)
    if size is not None and 8 + length + end > size:
        raise Unreadable(f"it is cut short: its tensors need {8 + length + end:,} bytes, the file has {size:,}")
    meta = header.get("__metadata__")
    if isinstance(meta, dict):  # kohya's and ModelSpec's notes of the base model: a hint where shapes are silent
        for k in ("modelspec.architecture", "ss_base_model_version"):
            if isinstance(meta.get(k), str):
                shapes[f"__metadata__.{k}={meta[k]}"] = None
    return shapes


def _first_zip_entry(head: bytes) -> Shapes:
    """torch's data.pkl from the zip's first local header (torch.save writes it first); {} if it is not there."""
    if len(head) < 30:
        raise Unreadable("the file ends inside its zip header")
    _, _, flags, method, _, _, _, packed, _, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", head[:30])
    name = head[30:30 + name_len].decode("utf-8", "replace")
    start = 30 + name_len + extra_len
    if flags & 8 and not packed and method == 0:  # torch's own way: stored, its size after it
        end = head.find(PICKLE_END, start)
        packed = end + 1 - start if end >= 0 else HEAD_LIMIT + 1
    if not name.endswith("data.pkl") or packed > HEAD_LIMIT:
        return {}  # another writer's order, or no end in sight: the listing is at the end of the file
    data = head[start:start + packed]
    if len(data) < packed:
        raise Unreadable("the file ends inside its first zip entry")
    try:
        if method == 8:
            data = zlib.decompress(data, -15)
        elif method != 0:
            return {}
    except zlib.error:
        raise Unreadable("its first zip entry is damaged") from None
    return scan_pickles(data)


_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_INTS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}
_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GETS = {"BINGET", "LONG_BINGET", "GET"}
_TUPLES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"}
_REBUILD = ("_rebuild_tensor", "_rebuild_parameter")


def scan_pickles(data: bytes) -> Shapes:
    """Every string of one or more pickles in `data`; for each tensor (torch's `_rebuild_tensor_v2(storage, offset,
    size, ...)`) its shape under the string just before it, its key in the state dict. What comes after a cut
    or an unknown opcode is left out."""
    shapes: Shapes = {}
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            _scan_one(stream, shapes)
    except Exception:  # noqa: BLE001 - cut short or not a pickle: keep what was read
        if not shapes:
            raise Unreadable("it is not a readable PyTorch file (its pickle is damaged)") from None
    return shapes


def _scan_one(stream: io.BytesIO, shapes: Shapes) -> None:
    memo: Dict[int, Tuple[str, str]] = {}
    memoized = 0  # MEMOIZE numbers every object it stores, ours or not
    recent: list = []  # the last strings pushed
    last: Optional[Tuple[str, str]] = None  # what the last op pushed, for PUT ("str"|"global", value)
    key: Optional[str] = None
    state, ints = "", []  # "" | "tensor" (wait for its storage) | "offset" | "size"
    for op, arg, _ in pickletools.genops(stream):
        name, pushed = op.name, None
        if name in _STRINGS:
            pushed = ("str", arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
        elif name == "GLOBAL":
            pushed = ("global", str(arg))
        elif name == "STACK_GLOBAL" and len(recent) >= 2:
            pushed = ("global", f"{recent[-2]} {recent[-1]}")
            del recent[-2:]
        elif name in _GETS:
            pushed = memo.get(arg)
        elif name in _PUTS or name == "MEMOIZE":
            index = arg if name != "MEMOIZE" else memoized
            memoized += name == "MEMOIZE"
            if last is not None:
                memo[index] = last
            continue
        last = pushed
        if pushed and pushed[0] == "str":
            recent = (recent + [pushed[1]])[-3:]
            if not state:
                shapes.setdefault(pushed[1], None)
        elif pushed and pushed[0] == "global" and pushed[1].split(" ")[-1].startswith(_REBUILD):
            if not state:
                key, state = (recent[-1] if recent else None), "tensor"
        elif name == "BINPERSID" and state == "tensor":
            state, ints = "offset", []
        elif name in _INTS and state in ("offset", "size"):
            state = "size"
            ints.append(int(arg))
        elif name in _TUPLES and state == "size":
            if key is not None:
                shapes[key] = tuple(ints[1:])  # the first int was the storage offset
            state, key = "", None
