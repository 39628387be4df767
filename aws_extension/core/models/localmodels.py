"""Sync's local side: which folders, which model files in them and of which type, and each file's sha256.

The type comes from the folder: the WebUI's own per type, a models folder (Stable-diffusion, Lora...), one type's
folder by its name, or the one --type given. Any other folder (a Downloads folder of mixed files) has no type of its
own: each file's header says what it is (detect.py, which never unpickles), and a file whose header says nothing is
reported rather than guessed. The sha256s come from the hash caches where they can, so a second sync reads nothing.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_kind
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import Interrupted, Refused
from .detect import AUTO, Detected, detect_file
from .hashcache import HashCache, JsonHashCache, Layered, TitleCache, webui_title
from .transfer import MiB
from .types import MODEL_TYPES, ModelType, check_file_name, has_model_extension, model_type
from .uploads import UploadResult

# The WebUI takes these beside its checkpoints as VAEs (sd_vae), not as checkpoints.
VAE_BESIDE_CHECKPOINTS = (".vae.pt", ".vae.ckpt", ".vae.safetensors")
SAVE_EVERY = 5.0  # seconds between hash cache writes while hashing: a stopped first sync keeps what it hashed


@dataclass(frozen=True)
class SyncFolder:
    """A folder to walk and the type of its files. type None: a folder of mixed files, each file's header says its
    type (then `types`, if any, keeps only those)."""

    type: Optional[ModelType]
    path: Path
    types: Tuple[ModelType, ...] = ()


@dataclass
class LocalModel:
    type: ModelType
    item: str  # the path as found in its folder: what messages name
    real: str  # resolved: the hash cache's key, and how one file reached twice is seen once
    relative: str  # inside its type's folder: the WebUI's cache title comes from it
    stat: os.stat_result
    sha256: Optional[str] = None
    detected: Optional[Detected] = None  # what its header says, once read
    by_header: bool = False  # its type is its header's (a mixed folder), not its folder's

    @property
    def name(self) -> str:
        return os.path.basename(self.item)

    @property
    def key(self) -> str:
        return self.type.key(self.name)

    @property
    def title(self) -> Optional[str]:
        """The WebUI's cache title; none for a mixed folder, which is not a WebUI's."""
        return None if self.by_header else webui_title(self.type, self.relative)


class SyncItem(UploadResult):
    """One local file (or folder) of a sync. Statuses: those of uploads, and "to-upload" in a dry run; a skipped
    file's key is where the cloud already has it (maybe another name)."""

    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("uploaded", "resumed", "skipped", "to-upload")


@dataclass
class SyncProgress:
    """The one line a sync shows: its phase, files and bytes done of this phase's total, the current file."""

    phase: str  # listing | hashing | uploading
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    current: str = ""
    item: str = "sync"  # the tab keeps the last progress per item: one for the whole sync


# -- which folders ---------------------------------------------------------------------------------------------
def _child(base: Path, relative: str) -> Optional[Path]:
    """base/relative as a folder, each part matched case-insensitively when not exactly (Lora, lora)."""
    for part in relative.split("/"):
        if (base / part).is_dir():
            base = base / part
            continue
        try:
            base = next(p for p in base.iterdir() if p.name.lower() == part.lower() and p.is_dir())
        except (StopIteration, OSError):
            return None
    return base


def folder_types(path: Path) -> List[Tuple[ModelType, Path]]:
    """What a folder holds: a WebUI root (models/Stable-diffusion, embeddings, ...), one type's folder by its name
    (Lora, VAE, checkpoints...: before the next, as a type's folder may have a subfolder named like another type), or
    a models folder (Stable-diffusion, Lora, ...); [] when none of these."""
    root = [(t, f) for t in MODEL_TYPES for f in [_child(path, t.webui_folder)] if f]
    if any(t.webui_folder.startswith("models/") for t, _ in root):
        return root
    named = [t for t in MODEL_TYPES if path.name.lower() in {t.s3_folder.lower(), t.id, t.id + "s"}]
    if named:
        return [(named[0], path)]
    return [(t, f) for t in MODEL_TYPES for f in [_child(path, t.s3_folder)] if f] or root


def folders_from_dirs(dirs: Sequence[str], type_names: Sequence[str] = ()) -> Tuple[List[SyncFolder], List[SyncItem]]:
    """The type folders inside each given folder (see folder_types), only of the types named if any. A folder of none
    of these layouts takes the type named when exactly one is (today's --type: the user says what its files are);
    otherwise its files' headers say (several types named: only those)."""
    wanted = list(dict.fromkeys(model_type(n) for n in type_names))
    folders: List[SyncFolder] = []
    failures: List[SyncItem] = []
    for raw in dirs:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            failures.append(SyncItem(item=raw, type="", status="failed", error=f"{raw}: no such folder."))
            continue
        found = folder_types(path)
        if found:
            folders += [SyncFolder(t, p) for t, p in found if not wanted or t in wanted]
        elif len(wanted) == 1:
            folders.append(SyncFolder(wanted[0], path))
        else:
            folders.append(SyncFolder(None, path, tuple(wanted)))
    return folders, failures


def default_dirs() -> List[str]:
    """With no folder named: the working folder if it is a WebUI's (or a models folder), else the WebUI this
    extension is installed in (<webui>/extensions/<this>)."""
    if folder_types(Path.cwd()):
        return [str(Path.cwd())]
    parents = Path(__file__).resolve().parents
    if len(parents) > 5 and parents[4].name == "extensions" and folder_types(parents[5]):
        return [str(parents[5])]
    raise Refused("No model folders to sync: name the WebUI's folder (or its model folders) with --models-dir.")


def standalone_cache(dirs: Sequence[str]) -> HashCache:
    """Our hash cache, then (read only) the WebUI's cache.json of each folder that is a WebUI root or its models/."""
    caches: List[HashCache] = [JsonHashCache()]
    for d in dirs:
        path = Path(d).expanduser()
        candidates = [path / "cache.json"] + ([path.parent / "cache.json"] if path.name.lower() == "models" else [])
        caches += [c for c in (TitleCache.from_file(f) for f in candidates if f.is_file()) if c]
    return Layered(caches)


# -- what is here ----------------------------------------------------------------------------------------------
def _failed(item: str, type_id: str, error: str) -> SyncItem:
    return SyncItem(item=item, type=type_id, status="failed", error=error)


def _type_of(folder: SyncFolder, full: str, file_name: str) -> Tuple[Optional[ModelType], Optional[Detected], str]:
    """The file's type: its folder's, or (a mixed folder) its header's; None with why not, or None and "" when the
    header says a type the sync was not asked for."""
    if folder.type is not None:
        vae = folder.type.id == "checkpoint" and file_name.lower().endswith(VAE_BESIDE_CHECKPOINTS)
        return (model_type("vae") if vae else folder.type), None, ""
    try:
        detected = detect_file(Path(full))
    except OSError as exc:
        return None, None, f"{full}: cannot read the file: {exc.strerror or exc}."
    if not detected.known:
        why = detected.problem or "its header does not say which kind of model it is"
        return None, detected, (f"{full}: {why}, so its type is unknown; not uploaded: pass its type with --type "
                                "(or `models upload --type <type> <file>`).")
    t = model_type(detected.kind)
    return (t if not folder.types or t in folder.types else None), detected, ""


def scan(folders: Sequence[SyncFolder]) -> Tuple[List[LocalModel], List[SyncItem]]:
    """Every model file in the folders and their subfolders (links followed, as the WebUI does; each file once)."""
    found: List[LocalModel] = []
    failures: List[SyncItem] = []
    files_seen: Set[str] = set()
    dirs_seen: Set[str] = set()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder.path, followlinks=True):
            real_dir = os.path.realpath(dirpath)
            if real_dir in dirs_seen:  # a link back up, or a folder given twice
                dirnames[:] = []
                continue
            dirs_seen.add(real_dir)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for file_name in sorted(filenames):
                if file_name.startswith(".") or not has_model_extension(file_name):
                    continue
                full = os.path.join(dirpath, file_name)
                type_id = folder.type.id if folder.type else AUTO
                try:
                    st, real = os.stat(full), os.path.realpath(full)
                except OSError as exc:
                    failures.append(_failed(full, type_id, f"{full}: cannot read the file: {exc.strerror or exc}."))
                    continue
                if not stat_kind.S_ISREG(st.st_mode) or st.st_size == 0 or real in files_seen:
                    continue  # empty: a failed copy, which the WebUI skips too
                files_seen.add(real)
                t, detected, why = _type_of(folder, full, file_name)
                if t is None:
                    failures += [_failed(full, type_id, why)] if why else []
                    continue
                try:
                    check_file_name(file_name, full)
                except Refused as exc:
                    failures.append(_failed(full, t.id, str(exc)))
                    continue
                found.append(LocalModel(t, full, real, os.path.relpath(full, folder.path), st, detected=detected,
                                        by_header=detected is not None))
    return found, failures


def hash_file(path: str, moved: Callable[[int], None], cancel: threading.Event) -> str:
    digest, buffer = hashlib.sha256(), bytearray(8 * MiB)
    with open(path, "rb") as f, memoryview(buffer) as view:
        while True:
            got = f.readinto(buffer)
            if not got:
                return digest.hexdigest()
            if cancel.is_set():
                raise Interrupted(f"{path}: stopped while computing its sha256.")
            digest.update(view[:got])
            moved(got)


def hash_all(models: List[LocalModel], cache: HashCache, report: Callable[[SyncProgress], None],
             cancel: threading.Event) -> List[SyncItem]:
    """Each model's sha256, from the cache or read once (then cached); returns the files that could not be read."""
    titles = {m.real: m.title for m in models}
    counts: Dict[Optional[str], int] = {}
    for title in titles.values():
        counts[title] = counts.get(title, 0) + 1
    for real, title in titles.items():  # two files one title (same stem in two subfolders): the WebUI's is unsure
        titles[real] = title if counts[title] == 1 else None
    todo = [m for m in models if not _cached(m, cache, titles[m.real])]
    progress = SyncProgress("hashing", files_total=len(todo), bytes_total=sum(m.stat.st_size for m in todo))
    failures: List[SyncItem] = []
    saved = time.monotonic()

    def moved(n: int) -> None:
        progress.bytes_done += n
        report(progress)

    try:
        for m in todo:
            progress.current = m.item
            started = progress.bytes_done
            try:
                sha = hash_file(m.real, moved, cancel)
                after = os.stat(m.real)
            except OSError as exc:
                failures.append(_failed(m.item, m.type.id, f"{m.item}: cannot read the file: {exc.strerror or exc}."))
            else:
                if (after.st_size, after.st_mtime) != (m.stat.st_size, m.stat.st_mtime):
                    failures.append(_failed(m.item, m.type.id, (
                        f"{m.item}: the file changed while it was read (still being written?); sync again once "
                        "it is complete.")))
                else:
                    m.sha256 = sha
                    cache.store(m.real, titles[m.real], m.stat, sha)
            progress.files_done += 1
            progress.bytes_done = started + m.stat.st_size
            report(progress)
            if time.monotonic() - saved > SAVE_EVERY:
                cache.save()
                saved = time.monotonic()
    finally:
        cache.save()
    return failures


def _cached(m: LocalModel, cache: HashCache, title: Optional[str]) -> bool:
    m.sha256 = cache.lookup(m.real, title, m.stat)
    return bool(m.sha256)
