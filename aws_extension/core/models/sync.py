"""Sync: upload every model file of the local model folders that the cloud does not have yet.

Matched by content: a local file whose sha256 the cloud holds for its type is skipped without a byte sent, under
whatever name the cloud has it (cloudindex.py: one LIST of the hash markers, then a check that those models are still
there). Local sha256s come from hash caches, so a second sync reads no file again (localmodels.py). The rest goes up
through the engine of every upload (parallel parts, resume, record, marker).

Names: the cloud keeps one flat name per type (`models/Lora/x.safetensors`) while the WebUI's folders often have
subfolders. Two files of one type with the same name and different contents would take the same cloud name: sync
refuses them, naming the other, rather than let one replace the other (a rename uploads both).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..aws import Aws
from ..errors import Interrupted, UserError
from ..text import Pace, count_text, size_text
from .catalog import recorded_sha256
from .cloudindex import CloudIndex
from .detect import article, detect_file
from .hashcache import HashCache, JsonHashCache
from .localmodels import LocalModel, SyncFolder, SyncItem, SyncProgress, hash_all, scan
from .transfer import Progress, part_size_for, read_chunks
from .types import model_type
from .uploads import store_model


# -- the sync --------------------------------------------------------------------------------------------------
def _item(m: LocalModel, status: str, key: Optional[str] = None, note: str = "", error: Optional[str] = None) -> SyncItem:
    """A file of a mixed folder says what its header said: that is why it goes to that type's folder."""
    said = m.detected.what if m.by_header and m.detected else None
    note = "; ".join(filter(None, [said and f"{said}, by its header", note]))
    return SyncItem(item=m.item, type=m.type.id, status=status, name=m.name, key=key or m.key, size=m.stat.st_size,
                    sha256=m.sha256, note=note, error=error, detected=said)


def _plan(aws: Aws, models: List[LocalModel], index: CloudIndex) -> Dict[str, SyncItem]:
    """Each hashed model: skipped (the cloud has its sha256 for its type), refused (a name clash), or to-upload."""
    by_name: Dict[Tuple[str, str], List[LocalModel]] = {}
    for m in models:
        by_name.setdefault((m.type.id, m.name), []).append(m)
    planned: Dict[Tuple[str, str], LocalModel] = {}
    plan: Dict[str, SyncItem] = {}
    # whether the models the markers point to are still there: all at once, in the fewest requests
    index.check(k for m in models for k in index.candidates(m.type, m.sha256)
                + ([m.key] if index.current(m.key) not in (None, m.sha256) else []))
    for m in models:
        where = index.find(m.type, m.sha256, m.stat.st_size)
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
        elif refused := _wrong_type(m):
            plan[m.real] = refused
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


def _wrong_type(m: LocalModel) -> Optional[SyncItem]:
    """The refusal of a file whose header says another type than its folder, read before the plan says it goes (so a
    dry run says so too); the header only, as uploads read it."""
    try:
        m.detected = m.detected or detect_file(Path(m.real))
    except OSError as exc:
        return _item(m, "failed", error=f"{m.item}: cannot read the file: {exc.strerror or exc}.")
    if not m.detected.known or m.detected.kind == m.type.id:
        return None
    return _item(m, "failed", error=(
        f"{m.item}: this file is {m.detected.what}, not {article(m.type.label)}, though it is in the {m.type.label} "
        f"folder: move it to the {model_type(m.detected.kind).label} folder, or upload it with "
        f"`models upload --type {m.type.id} --force`; nothing was uploaded."))


def _upload(aws: Aws, m: LocalModel, note: str, progress: Callable[[Progress], None],
            cancel: threading.Event) -> SyncItem:
    part_size = part_size_for(m.stat.st_size)
    try:
        with open(m.real, "rb") as f:
            sent = store_model(aws, m.type, m.name, m.item, read_chunks(f, part_size), m.stat.st_size, part_size,
                               source=f"file:{m.real}", progress=progress, cancel=cancel, detected=m.detected)
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
        failures += hash_all(models, cache or JsonHashCache(), report, cancel)
    except Interrupted:
        return failures + [_item(m, "interrupted", error=f"{m.item}: not uploaded (stopped).") for m in models]
    hashed = [m for m in models if m.sha256]
    plan = _plan(aws, hashed, index)
    if dry_run:
        return failures + [plan[m.real] for m in hashed]
    index.remove_stale()
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
