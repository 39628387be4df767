"""Fine-tuning datasets in S3: `datasets/<name>/<file>` plus a `dataset.json` manifest written last, so a
half-uploaded dataset is never listed. Only real images (opened by Pillow) and captions (`.txt`/`.caption`)
named after one of them, as fine-tuning tools pair them, are accepted; they are checked before any upload."""

from __future__ import annotations

import json
import re
import threading
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .aws import Aws, is_not_found, translate
from .compat import BaseModel
from .errors import ConfigError, Interrupted, NotFound, Refused, TransferError, UserError
from .models.catalog import now_iso

PREFIX = "datasets/"
MANIFEST = "dataset.json"
NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
# Trainers pick images by extension, so an image needs one of these and content Pillow reads as that kind.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
                 "GIF": "image/gif", "TIFF": "image/tiff", "MPO": "image/jpeg"}  # MPO: JPEG from some cameras
CAPTION_EXTENSIONS = (".txt", ".caption")
MAX_DESCRIPTION = 10_000
MAX_CAPTION = 1024 * 1024
WORKERS = 8

DatasetProgress = Callable[[int, int, str], None]


class DatasetFile(BaseModel):
    name: str
    size: int
    sha256: str
    kind: str = "image"  # image | caption


class Dataset(BaseModel):
    name: str
    description: str = ""
    created: str
    s3_uri: str
    files: List[DatasetFile] = []
    image_count: int = 0
    caption_count: int = 0
    total_size: int = 0

    @classmethod
    def from_manifest(cls, aws: Aws, name: str, manifest: dict) -> "Dataset":
        files = [DatasetFile.parse_obj(f) for f in manifest.get("files", [])]
        return cls(name=name, description=manifest.get("description", ""), created=manifest.get("created", ""),
                   s3_uri=aws.s3_uri(prefix(name)), files=files, total_size=sum(f.size for f in files),
                   image_count=sum(f.kind == "image" for f in files),
                   caption_count=sum(f.kind == "caption" for f in files))


def prefix(name: str) -> str:
    return f"{PREFIX}{name}/"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Refused(f"Dataset name '{name}' is not valid: use 1-64 letters, digits, '-', '_' or '.', not a leading '.'.")
    return name


@dataclass
class _Local:
    path: Path
    name: str
    kind: str
    content_type: str = "application/octet-stream"


def _expand(paths: List[str]) -> tuple:
    """Typed paths → files (a folder gives the files directly inside it), and the problems found."""
    files, problems = [], []
    for typed in filter(None, (str(raw).strip() for raw in paths or [])):
        path = Path(typed).expanduser()
        if path.is_dir():
            files.extend(p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{typed} (no such file)")
    return files, problems


def _check_image(path: Path) -> str:
    """The content type of a real image, or the reason it is not one."""
    try:  # Pillow is a dependency of the WebUI; a standalone install needs it too
        from PIL import Image
    except ImportError:
        raise ConfigError("Checking dataset images needs Pillow: pip install pillow.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: big photos are fine here
            with Image.open(path) as img:
                fmt = img.format
                img.verify()  # structure and checksums
            with Image.open(path) as img:
                img.load()  # verify() misses truncated JPEGs: decode it
    except Image.DecompressionBombError:
        raise ValueError("image too large to decode safely") from None
    except Exception:
        raise ValueError("not a readable image") from None
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"{fmt} images are not accepted")
    return IMAGE_FORMATS[fmt]


def check_files(name: str, paths: List[str]) -> List[_Local]:
    """Every file accepted, or ONE Refused naming every bad file; reads only local disk."""
    files, problems = _expand(paths)
    by_name: dict = {}
    for p in files:
        by_name.setdefault(p.name, []).append(p)
    items: List[_Local] = []
    for file_name, same in by_name.items():
        if len(same) > 1:
            problems.append(f"{file_name} (given {len(same)} times: {', '.join(map(str, same))})")
        elif any(ord(c) < 32 for c in file_name) or "\\" in file_name:
            problems.append(f"{file_name!r} (not a usable file name)")
        elif file_name.lower().endswith(IMAGE_EXTENSIONS):
            items.append(_Local(same[0], file_name, "image"))
        elif file_name.lower().endswith(CAPTION_EXTENSIONS):
            items.append(_Local(same[0], file_name, "caption", "text/plain; charset=utf-8"))
        else:
            problems.append(f"{file_name} (not an image or a caption)")
    # Pair by name: a caption of a refused image is not reported as an orphan too.
    image_stems = {Path(n).stem for n in by_name if n.lower().endswith(IMAGE_EXTENSIONS)}

    def check(item: _Local) -> Optional[str]:
        try:
            if item.kind == "image":
                item.content_type = _check_image(item.path)
            elif Path(item.name).stem not in image_stems:
                return f"{item.name} (caption without an image named {Path(item.name).stem}.*)"
            elif item.path.stat().st_size > MAX_CAPTION:
                return f"{item.name} (caption larger than {MAX_CAPTION // 1024} KiB)"
            else:
                item.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return f"{item.name} (caption is not UTF-8 text)"
        except OSError as exc:
            return f"{item.name} (cannot read: {exc.strerror or exc})"
        except ValueError as exc:
            return f"{item.name} ({exc})"
        return None

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="dataset-check") as pool:
        problems.extend(p for p in pool.map(check, items) if p)
    if problems:
        raise Refused(f"Dataset {name} not created, {len(problems)} file(s) refused: {'; '.join(problems)}.")
    if not items:
        raise Refused(f"Dataset {name} not created: no files given; add its images.")
    return sorted(items, key=lambda i: i.name)


def _exists(aws: Aws, name: str) -> bool:
    with translate(f"checking whether dataset {name} exists"):
        listed = aws.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix=prefix(name), MaxKeys=1)
    return bool(listed.get("KeyCount") or listed.get("Contents"))


def _read_manifest(aws: Aws, name: str) -> Optional[dict]:
    try:
        body = aws.client("s3").get_object(Bucket=aws.bucket, Key=prefix(name) + MANIFEST)["Body"].read()
    except Exception as exc:
        if is_not_found(exc):
            return None
        with translate(f"reading the manifest of dataset {name}"):
            raise
    try:
        manifest = json.loads(body)
        return manifest if isinstance(manifest, dict) else None
    except ValueError:  # hand-edited or foreign: treat as no manifest
        return None


def _remove_prefix(aws: Aws, name: str) -> int:
    """Delete every object and abort every open upload under the dataset's prefix."""
    s3, removed = aws.client("s3"), 0
    with translate(f"deleting dataset {name}"):
        # A LIST page holds at most 1,000 keys, which is also the most one delete_objects takes.
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix(name)):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                errors = s3.delete_objects(Bucket=aws.bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors")
                if errors:
                    first = errors[0]
                    raise UserError(f"Dataset {name}: could not delete {first.get('Key')} ({first.get('Code')}).")
                removed += len(keys)
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=aws.bucket, Prefix=prefix(name)):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=aws.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return removed


def _send(aws: Aws, name: str, item: _Local, stop: threading.Event) -> DatasetFile:
    from .models.transfer import Cancelled, ObjectWriter, describe_short, part_size_for, read_chunks

    size = item.path.stat().st_size
    part_size = part_size_for(size)
    # Images are small: one PUT with its sha256, which S3 checks; a huge file goes multipart.
    writer = ObjectWriter(aws, prefix(name) + item.name, item.name, cancel=stop, concurrency=2,
                          content_type=item.content_type)
    try:
        with item.path.open("rb") as f:
            sent = writer.write(read_chunks(f, part_size), size, part_size)
    except Interrupted as exc:  # the writer's "run it again to resume" does not hold: the dataset is removed
        why = "stopped" if isinstance(exc, Cancelled) else f"interrupted ({describe_short(exc.__cause__)})"
        raise TransferError(f"{item.name}: upload {why}") from exc
    except OSError as exc:
        raise TransferError(f"{item.name}: cannot read the file: {exc.strerror or exc}") from exc
    return DatasetFile(name=item.name, size=sent.size, sha256=sent.sha256, kind=item.kind)


def create_dataset(aws: Aws, name: str, paths: List[str], description: str = "",
                   progress: Optional[DatasetProgress] = None, cancel: Optional[threading.Event] = None) -> Dataset:
    """Check every file, upload them in parallel, then write the manifest; on any failure nothing is kept.

    `progress(done_files, total_files, file_name)` is called in the calling thread after each file is stored.
    Setting `cancel` stops the files not yet sent; the dataset is then removed like a failed one.
    """
    check_name(name)
    description = (description or "").strip()
    if len(description) > MAX_DESCRIPTION:
        raise Refused(f"Dataset {name}: the description is longer than {MAX_DESCRIPTION} characters.")
    if _exists(aws, name):  # a manifest, or leftovers of a creation that failed: either way taken
        raise Refused(f"A dataset named '{name}' already exists in {aws.s3_uri(PREFIX)}: choose another name.")
    items = check_files(name, paths)
    stop = threading.Event()  # a failure stops the files still queued, as the caller's cancel does
    stored: List[DatasetFile] = []
    try:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="dataset-upload") as pool:
            pending = {pool.submit(_send, aws, name, item, stop) for item in items}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        stored.append(fut.result())  # re-raises a file's failure
                        if progress:
                            progress(len(stored), len(items), stored[-1].name)
                    if cancel is not None and cancel.is_set():
                        raise TransferError("stopped before every file was sent")
            except BaseException:
                stop.set()
                for fut in pending:
                    fut.cancel()
                raise
        manifest = {"name": name, "description": description, "created": now_iso(),
                    "files": [f.dict() for f in sorted(stored, key=lambda f: f.name)]}
        with translate(f"writing the manifest of dataset {name}"):
            aws.client("s3").put_object(Bucket=aws.bucket, Key=prefix(name) + MANIFEST, ContentType="application/json",
                                        Body=json.dumps(manifest, indent=2).encode())
    except BaseException as exc:  # remove what was sent, then one sentence naming the file that failed
        try:
            _remove_prefix(aws, name)
            kept = "the files already sent were removed"
        except UserError as cleanup:
            kept = f"removing the files already sent failed too ({str(cleanup).rstrip('.')}): delete the dataset"
        if isinstance(exc, UserError):
            raise TransferError(f"Dataset {name} not created: {str(exc).rstrip('.')}; {kept}.") from exc
        raise  # a bug or Ctrl-C: as it was, after the cleanup
    return Dataset.from_manifest(aws, name, manifest)


def list_datasets(aws: Aws) -> List[Dataset]:
    """Every dataset with a manifest, newest first (one LIST per 1,000 datasets, one GET per dataset)."""
    names = []
    with translate(f"listing {aws.s3_uri(PREFIX)}"):
        paginator = aws.client("s3").get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=aws.bucket, Prefix=PREFIX, Delimiter="/"):
            names.extend(p["Prefix"][len(PREFIX):-1] for p in page.get("CommonPrefixes", []))
    names = [n for n in names if NAME_RE.match(n)]
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="dataset-list") as pool:
        manifests = list(pool.map(lambda n: _read_manifest(aws, n), names))
    # No manifest: being created, or a failed creation not cleaned up. Not listed.
    datasets = [_parse(aws, n, m) for n, m in zip(names, manifests) if m is not None]
    return sorted((d for d in datasets if d), key=lambda d: d.created, reverse=True)


def _parse(aws: Aws, name: str, manifest: dict) -> Optional[Dataset]:
    try:
        return Dataset.from_manifest(aws, name, manifest)
    except Exception:  # a manifest we cannot read: left out rather than failing the whole list
        return None


def show_dataset(aws: Aws, name: str) -> Dataset:
    check_name(name)
    manifest = _read_manifest(aws, name)
    if manifest is None:
        raise NotFound(f"No dataset named '{name}' in {aws.s3_uri(PREFIX)}.")
    dataset = _parse(aws, name, manifest)
    if dataset is None:
        raise UserError(f"Dataset {name}: its {MANIFEST} is not one this tool wrote.")
    return dataset


def delete_dataset(aws: Aws, name: str) -> int:
    """Delete every object under the dataset's prefix (a failed creation's leftovers too); returns how many."""
    check_name(name)
    if not _exists(aws, name):
        raise NotFound(f"No dataset named '{name}' in {aws.s3_uri(PREFIX)}.")
    return _remove_prefix(aws, name)


def read_file(aws: Aws, name: str, file_name: str) -> bytes:
    """One file of a dataset (previews are fetched by the server, so no presigned URL reaches the page)."""
    check_name(name)
    if not file_name or "/" in file_name or "\\" in file_name or file_name in (".", "..") or file_name == MANIFEST:
        raise Refused(f"Dataset {name}: '{file_name}' is not a file of the dataset.")
    try:
        return aws.client("s3").get_object(Bucket=aws.bucket, Key=prefix(name) + file_name)["Body"].read()
    except Exception as exc:
        if is_not_found(exc):
            raise NotFound(f"Dataset {name} has no file {file_name}.") from None
        with translate(f"reading {file_name} of dataset {name}"):
            raise
