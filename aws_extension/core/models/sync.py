"""Sync: upload every model file of the local model folders that the cloud does not have yet.

Matched by content: one paginated LIST of the hash markers (`hashes/<sha256>/<folder>/<name>`) gives every sha256 the
cloud holds, per type. A local file whose sha256 the cloud holds for its type is skipped without a byte sent, under
whatever name the cloud has it. Local sha256s come from a hash cache (ours, and the WebUI's own), so a second sync
reads no file again. The rest goes up through the engine of every upload (parallel parts, resume, record, marker).

Names: the cloud keeps one flat name per type (`models/Lora/x.safetensors`) while the WebUI's folders often have
subfolders. Two files of one type with the same name and different contents would take the same cloud name: sync
refuses them, naming the other, rather than let one replace the other (a rename uploads both).
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_kind
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..aws import Aws, translate
from ..errors import Interrupted, Refused, UserError
from ..text import Pace, count_text, size_text
from .catalog import HASHES, MODELS, read_record, recorded_sha256
from .detect import article, detect_file
from .hashcache import HashCache, JsonHashCache, Layered, TitleCache, webui_title
from .transfer import MiB, Progress, part_size_for, read_chunks
from .types import MODEL_TYPES, ModelType, check_file_name, has_model_extension, model_type, type_of_key
from .uploads import UploadResult, store_model

# The WebUI takes these beside its checkpoints as VAEs (sd_vae), not as checkpoints.
VAE_BESIDE_CHECKPOINTS = (".vae.pt", ".vae.ckpt", ".vae.safetensors")
SAVE_EVERY = 5.0  # seconds between hash cache writes while hashing: a stopped first sync keeps what it hashed


@dataclass(frozen=True)
class SyncFolder:
    type: ModelType
    path: Path


@dataclass
class LocalModel:
    type: ModelType
    item: str  # the path as found in its folder: what messages name
    real: str  # resolved: the hash cache's key, and how one file reached twice is seen once
    relative: str  # inside its type's folder: the WebUI's cache title comes from it
    stat: os.stat_result
    sha256: Optional[str] = None

    @property
    def name(self) -> str:
        return os.path.basename(self.item)

    @property
    def key(self) -> str:
        return self.type.key(self.name)


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
    """The type folders inside each given folder (see folder_types), only of the types named if any; a folder of none
    of these layouts takes the type named when exactly one is."""
    wanted = [model_type(n) for n in type_names]
    folders: List[SyncFolder] = []
    failures: List[SyncItem] = []
    for raw in dirs:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            failures.append(SyncItem(item=raw, type="", status="failed", error=f"{raw}: no such folder."))
            continue
        found = folder_types(path) or ([(wanted[0], path)] if len(set(wanted)) == 1 else [])
        if not found:
            failures.append(SyncItem(item=raw, type="", status="failed", error=(
                f"{raw}: neither a WebUI folder (models/Stable-diffusion, models/Lora, embeddings...), a models folder "
                "(Stable-diffusion, Lora, VAE...) nor one type's folder, so the type of its files is unknown: name "
                "the type (one --type) or upload them by type.")))
        folders += [SyncFolder(t, p) for t, p in found if not wanted or t in wanted]
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
                try:
                    st, real = os.stat(full), os.path.realpath(full)
                except OSError as exc:
                    failures.append(SyncItem(item=full, type=folder.type.id, status="failed",
                                             error=f"{full}: cannot read the file: {exc.strerror or exc}."))
                    continue
                if not stat_kind.S_ISREG(st.st_mode) or st.st_size == 0 or real in files_seen:
                    continue  # empty: a failed copy, which the WebUI skips too
                files_seen.add(real)
                t = folder.type
                if t.id == "checkpoint" and file_name.lower().endswith(VAE_BESIDE_CHECKPOINTS):
                    t = model_type("vae")
                try:
                    check_file_name(file_name, full)
                except Refused as exc:
                    failures.append(SyncItem(item=full, type=t.id, status="failed", error=str(exc)))
                    continue
                found.append(LocalModel(t, full, real, os.path.relpath(full, folder.path), st))
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


def _hash_all(models: List[LocalModel], cache: HashCache, report, cancel: threading.Event) -> List[SyncItem]:
    """Each model's sha256, from the cache or read once (then cached); returns the files that could not be read."""
    titles = {m.real: webui_title(m.type, m.relative) for m in models}
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
                failures.append(SyncItem(item=m.item, type=m.type.id, status="failed",
                                         error=f"{m.item}: cannot read the file: {exc.strerror or exc}."))
            else:
                if (after.st_size, after.st_mtime) != (m.stat.st_size, m.stat.st_mtime):
                    failures.append(SyncItem(item=m.item, type=m.type.id, status="failed", error=(
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


# -- what the cloud has ----------------------------------------------------------------------------------------
class CloudIndex:
    """The cloud's models by sha256, from one paginated LIST of the hash markers. A model key with more than one
    marker was replaced (the old marker stays until a lookup removes it): its record says which one is current."""

    def __init__(self, aws: Aws, markers: Sequence[Tuple[str, str]] = ()):
        self.aws = aws
        self.keys_of: Dict[str, List[str]] = {}
        self.shas_of: Dict[str, Set[str]] = {}
        self._confirmed: Dict[Tuple[str, str], bool] = {}
        for sha, key in markers:
            self.add(sha, key)

    @classmethod
    def load(cls, aws: Aws) -> "CloudIndex":
        markers = []
        with translate(f"listing {aws.s3_uri(HASHES)}"):
            for page in aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=HASHES):
                for obj in page.get("Contents", []):
                    sha, _, rest = obj["Key"][len(HASHES):].partition("/")
                    if len(sha) == 64 and rest:
                        markers.append((sha, MODELS + rest))
        return cls(aws, markers)

    def add(self, sha: str, key: str) -> None:
        self.keys_of.setdefault(sha, []).append(key)
        self.shas_of.setdefault(key, set()).add(sha)

    def current(self, key: str) -> Optional[str]:
        shas = self.shas_of.get(key, set())
        return next(iter(shas)) if len(shas) == 1 else None

    def find(self, t: ModelType, sha: str) -> Optional[str]:
        """The key of a model of this type with this sha256, or None."""
        keys = [k for k in self.keys_of.get(sha, []) if type_of_key(k) == t and "/" not in k[len(t.prefix):]]
        for key in sorted(keys, key=lambda k: len(self.shas_of[k]) > 1):  # the unambiguous ones first
            if len(self.shas_of[key]) == 1 or self._confirm(key, sha):
                return key
        return None

    def _confirm(self, key: str, sha: str) -> bool:
        if (key, sha) not in self._confirmed:
            record = read_record(self.aws, key)
            self._confirmed[(key, sha)] = bool(record and (record.sha256 or "").lower() == sha)
        return self._confirmed[(key, sha)]


# -- the sync --------------------------------------------------------------------------------------------------
def _item(m: LocalModel, status: str, key: Optional[str] = None, note: str = "", error: Optional[str] = None) -> SyncItem:
    return SyncItem(item=m.item, type=m.type.id, status=status, name=m.name, key=key or m.key, size=m.stat.st_size,
                    sha256=m.sha256, note=note, error=error)


def _plan(aws: Aws, models: List[LocalModel], index: CloudIndex) -> Dict[str, SyncItem]:
    """Each hashed model: skipped (the cloud has its sha256 for its type), refused (a name clash), or to-upload."""
    by_name: Dict[Tuple[str, str], List[LocalModel]] = {}
    for m in models:
        by_name.setdefault((m.type.id, m.name), []).append(m)
    planned: Dict[Tuple[str, str], LocalModel] = {}
    plan: Dict[str, SyncItem] = {}
    for m in models:
        where = index.find(m.type, m.sha256)
        if where:
            plan[m.real] = _item(m, "skipped", where, "" if where == m.key else f"already in the cloud as {where}")
        elif (m.type.id, m.sha256) in planned:
            first = planned[(m.type.id, m.sha256)]
            plan[m.real] = _item(m, "skipped", first.key, f"the same file as {first.item}, which this sync uploads")
        elif any(o.sha256 != m.sha256 for o in by_name[(m.type.id, m.name)]):
            others = ", ".join(o.item for o in by_name[(m.type.id, m.name)] if o.sha256 != m.sha256)
            plan[m.real] = _item(m, "failed", error=(
                f"{m.item}: {others} has the same name with other contents, and the cloud keeps one file per name "
                f"({aws.s3_uri(m.key)}): rename one of them to upload both; this one was not uploaded."))
        else:
            current = index.current(m.key)
            note = "replaces the cloud's other file of this name" if current and current != m.sha256 else ""
            plan[m.real] = _item(m, "to-upload", note=note)
            planned[(m.type.id, m.sha256)] = m
    # a record written before hash markers existed has none yet: its size and sha256 still say it is this file
    unmarked = [m for m in models if plan[m.real].status == "to-upload" and not index.shas_of.get(m.key)]
    with ThreadPoolExecutor(8) as pool:
        for m, recorded in zip(unmarked, pool.map(lambda m: recorded_sha256(aws, m.key, m.stat.st_size), unmarked)):
            if recorded == m.sha256:
                plan[m.real] = _item(m, "skipped")
    return plan


def _upload(aws: Aws, m: LocalModel, note: str, progress: Callable[[Progress], None],
            cancel: threading.Event) -> SyncItem:
    part_size = part_size_for(m.stat.st_size)
    detected = detect_file(Path(m.real))  # its header only: the folder says the type, the file may say otherwise
    if detected.known and detected.kind != m.type.id:
        return _item(m, "failed", error=(
            f"{m.item}: this file is {detected.what}, not {article(m.type.label)}, though it is in the "
            f"{m.type.label} folder: move it to the {model_type(detected.kind).label} folder, or upload it with "
            f"`models upload --type {m.type.id} --force`; nothing was uploaded."))
    try:
        with open(m.real, "rb") as f:
            sent = store_model(aws, m.type, m.name, m.item, read_chunks(f, part_size), m.stat.st_size, part_size,
                               source=f"file:{m.real}", progress=progress, cancel=cancel, detected=detected)
    except OSError as exc:
        return _item(m, "failed", error=f"{m.item}: cannot read the file: {exc.strerror or exc}.")
    except UserError as exc:
        return _item(m, "interrupted" if isinstance(exc, Interrupted) else "failed", error=str(exc))
    return SyncItem(**{**sent.dict(), "note": note})


def sync_models(aws: Aws, folders: Sequence[SyncFolder], dry_run: bool = False, cache: Optional[HashCache] = None,
                progress: Optional[Callable[[SyncProgress], None]] = None,
                cancel: Optional[threading.Event] = None) -> List[SyncItem]:
    """Upload what the cloud lacks of the folders' model files (dry_run: only say what would go); one item per file."""
    report = progress or (lambda p: None)
    cancel = cancel or threading.Event()
    models, failures = scan(folders)
    report(SyncProgress("listing", files_total=len(models)))
    index = CloudIndex.load(aws)  # before any hashing: a bucket that cannot be read fails the sync at once
    try:
        failures += _hash_all(models, cache or JsonHashCache(), report, cancel)
    except Interrupted:
        return failures + [_item(m, "interrupted", error=f"{m.item}: not uploaded (stopped).") for m in models]
    hashed = [m for m in models if m.sha256]
    plan = _plan(aws, hashed, index)
    if dry_run:
        return failures + [plan[m.real] for m in hashed]
    todo = [m for m in hashed if plan[m.real].status == "to-upload"]
    overall = SyncProgress("uploading", files_total=len(todo), bytes_total=sum(m.stat.st_size for m in todo))
    for m in todo:
        if cancel.is_set():
            plan[m.real] = _item(m, "interrupted", error=f"{m.item}: not started (stopped).")
            continue
        finished, overall.current = overall.bytes_done, m.item

        def moved(p: Progress, finished=finished) -> None:
            overall.bytes_done = finished + p.done
            report(overall)

        plan[m.real] = _upload(aws, m, plan[m.real].note, moved, cancel)
        overall.files_done += 1
        overall.bytes_done = finished + m.stat.st_size
        report(overall)
    return failures + [plan[m.real] for m in hashed]


# -- words -----------------------------------------------------------------------------------------------------
def progress_text(p: SyncProgress, pace: Pace) -> str:
    """"uploading 2 of 5 files, 1.2 GB of 4.0 GB (30%), 45.0 MB/s, 1 min 2 s left: <file>"."""
    if p.phase == "listing":
        return f"listing the cloud's models ({count_text(p.files_total, 'model file')} here)"
    pct = f" ({100 * p.bytes_done // p.bytes_total}%)" if p.bytes_total else ""
    moving = pace.text(p.phase, p.bytes_done, p.bytes_total)
    return (f"{p.phase} {p.files_done} of {count_text(p.files_total, 'file')}, {size_text(p.bytes_done)} of "
            f"{size_text(p.bytes_total)}{pct}" + (f", {moving}" if moving else "") + (f": {p.current}" if p.current else ""))


def item_line(i: SyncItem, aws: Aws) -> str:
    note = f"; {i.note}" if i.note else ""
    if i.status == "to-upload":
        return f"to upload: {i.item} -> {aws.s3_uri(i.key)} ({size_text(i.size)}{note})"
    if i.status == "skipped":
        return f"already there: {i.item} = {aws.s3_uri(i.key)} ({size_text(i.size)}{note})"
    if i.ok:
        return f"{i.status}: {i.item} -> {aws.s3_uri(i.key)} ({size_text(i.size)}, sha256 {i.sha256}{note})"
    return f"{i.item}: {i.status}: {i.reason}"


def summary(items: Sequence[SyncItem], dry_run: bool) -> str:
    def total(status: Sequence[str]) -> Tuple[int, str]:
        chosen = [i for i in items if i.status in status]
        return len(chosen), size_text(sum(i.size or 0 for i in chosen))

    sent, sent_size = total(("to-upload",) if dry_run else ("uploaded", "resumed"))
    there, there_size = total(("skipped",))
    bad = sum(not i.ok for i in items)
    verb = "Would upload" if dry_run else "Uploaded"
    return (f"{verb} {count_text(sent, 'file')} ({sent_size}); {there} already in the cloud ({there_size})"
            + (f"; {bad} not uploaded (see above)." if bad else "."))
