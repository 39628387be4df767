"""Uploading model files from the machine's disk: allowed folders, skip identical, resume, record."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from ..aws import Aws
from ..compat import BaseModel
from ..errors import Interrupted, Refused, UserError
from .catalog import ModelRecord, now_iso, recorded_sha256, write_record
from .detect import AUTO, Detected, chosen_type, decide, detect_file
from .transfer import MiB, ObjectWriter, Progress, ProgressFn, part_size_for, read_chunks
from .types import ModelType, check_file_name, has_model_extension


class UploadResult(BaseModel):
    """One item of an upload batch (a path or a URL): what happened to it."""

    item: str
    type: str
    status: str  # uploaded | resumed | skipped | failed | interrupted
    name: Optional[str] = None
    key: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    parts_sent: int = 0
    parts_reused: int = 0
    error: Optional[str] = None
    detected: Optional[str] = None  # what the header said the file is: "a LoRA for SDXL"

    @property
    def ok(self) -> bool:
        return self.status in ("uploaded", "resumed", "skipped")

    @property
    def reason(self) -> str:
        """The error without the item it names first: lines read "item: failed: reason", not the item twice."""
        error = self.error or ""
        return error[len(self.item) + 2:] if error.startswith(f"{self.item}: ") else error


def failed(item: str, t: Optional[ModelType], exc: UserError) -> UploadResult:
    """t: None under Auto (the type was not known yet)."""
    status = "interrupted" if isinstance(exc, Interrupted) else "failed"
    return UploadResult(item=item, type=t.id if t else AUTO, status=status, error=str(exc))


def store_model(aws: Aws, t: ModelType, name: str, item: str, chunks: Iterable[bytes], total: Optional[int],
                part_size: int, source: str, description: Optional[dict] = None,
                progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                source_etag: Optional[str] = None, detected: Optional[Detected] = None) -> UploadResult:
    """Write the model and then its record; the record last, so a listed record means a whole model."""
    writer = ObjectWriter(aws, t.key(name), item, progress, cancel)
    sent = writer.write(chunks, total, part_size)
    known = detected is not None and detected.known
    write_record(aws, ModelRecord(
        type=t.id, name=name, key=sent.key, size=sent.size, sha256=sent.sha256, source=source,
        source_etag=source_etag, description=description, uploaded_at=now_iso(),
        kind=detected.kind if known else None, base=detected.base if known and detected.base != "unknown" else None,
    ))
    if progress:
        progress(Progress(item, sent.size, sent.size, "done"))
    return UploadResult(
        item=item, type=t.id, status="resumed" if sent.resumed else "uploaded", name=name, key=sent.key,
        size=sent.size, sha256=sent.sha256, parts_sent=sent.parts_sent, parts_reused=sent.parts_reused,
        detected=detected.what if known else None,
    )


# -- local paths ------------------------------------------------------------------------------------
def within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def expand_paths(paths: Iterable[str], allowed_roots: Sequence[str] = ()) -> List[Tuple[str, object]]:
    """Each typed path → model files, or the reason it is refused. Links and `..` are resolved first."""
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    out: List[Tuple[str, object]] = []
    for raw in paths:
        typed = raw.strip()
        if not typed:
            continue
        path = Path(typed).expanduser()
        if roots and not path.is_absolute():
            # a bare name means a file in the model folders, not in whatever folder the WebUI was started from
            path = next((root / path for root in roots if (root / path).exists()), roots[0] / path)
            if not path.exists():
                out.append((typed, Refused(f"{typed}: not found in the model folders "
                                           f"({', '.join(map(str, roots))}).")))
                continue
        path = path.resolve()
        if roots and not within(path, roots):
            out.append((typed, Refused(f"{typed}: outside the allowed model folders ({', '.join(map(str, roots))}).")))
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and has_model_extension(p.name))
            files = [p for p in files if not roots or within(p.resolve(), roots)]
            if not files:
                out.append((typed, Refused(f"{typed}: no model files directly inside this folder.")))
            out.extend((str(p), p.resolve()) for p in files)
        elif not path.is_file():
            out.append((typed, Refused(f"{typed}: no such file.")))
        else:
            try:
                check_file_name(path.name, typed)
                out.append((typed, path))
            except Refused as exc:
                out.append((typed, exc))
    return out


def sha256_file(path: Path, progress: Optional[ProgressFn] = None, item: str = "") -> str:
    digest, done, total = hashlib.sha256(), 0, path.stat().st_size
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 * MiB), b""):
            digest.update(block)
            done += len(block)
            if progress:
                progress(Progress(item, done, total, "checking"))
    return digest.hexdigest()


def already_there(aws: Aws, key: str, path: Path, size: int, progress: Optional[ProgressFn], item: str) -> Optional[str]:
    """The sha256 when the cloud already holds this very file under this key (same size, same sha256)."""
    recorded = recorded_sha256(aws, key, size)
    if not recorded:
        return None
    local = sha256_file(path, progress, item)
    return local if local == recorded else None


def upload_file(aws: Aws, t: Optional[ModelType], path: Path, item: Optional[str] = None,
                progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                force: bool = False) -> UploadResult:
    """t: the chosen type, None for Auto (the file's header decides); force: upload even if the header says the
    file is of another type."""
    item = item or str(path)
    name = check_file_name(path.name, item)
    try:
        size = path.stat().st_size
        if size == 0:  # as URL and browser uploads refuse it: no model is empty, it is a failed copy
            raise Refused(f"{item}: the file is empty; nothing was uploaded.")
        detected = detect_file(path)  # its header only, before anything is sent
        t = decide(detected, t, item, force)
        same = already_there(aws, t.key(name), path, size, progress, item)
        if same:
            if progress:
                progress(Progress(item, size, size, "skipped"))
            return UploadResult(item=item, type=t.id, status="skipped", name=name, key=t.key(name), size=size,
                                sha256=same)
        part_size = part_size_for(size)
        with path.open("rb") as f:
            return store_model(aws, t, name, item, read_chunks(f, part_size), size, part_size,
                               source=f"file:{path}", progress=progress, cancel=cancel, detected=detected)
    except OSError as exc:
        raise UserError(f"{item}: cannot read the file: {exc.strerror or exc}.") from exc


def upload_paths(aws: Aws, type_name: Optional[str], paths: Iterable[str], allowed_roots: Sequence[str] = (),
                 progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                 force: bool = False) -> List[UploadResult]:
    """Every path on its own: a refused or failed one does not stop the others. type_name "auto" (or None): each
    file's header says its type."""
    t = chosen_type(type_name)
    results = []
    for item, target in expand_paths(paths, allowed_roots):
        if cancel is not None and cancel.is_set():
            results.append(failed(item, t, Interrupted(f"{item}: not started (stopped).")))
            continue
        if isinstance(target, UserError):
            results.append(failed(item, t, target))
            continue
        try:
            results.append(upload_file(aws, t, target, item, progress, cancel, force))
        except UserError as exc:
            if progress:
                progress(Progress(item, state="interrupted" if isinstance(exc, Interrupted) else "failed", message=str(exc)))
            results.append(failed(item, t, exc))
    return results
