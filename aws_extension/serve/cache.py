"""Models from S3 on the endpoint's disk: parallel ranged GETs, checked against the record, LRU-bounded.

An entry is one (bucket, key, ETag): a re-uploaded model is a new entry. Each lives in its own folder
under the root and keeps the model's file name, because loaders look at the extension. The index is a
JSON file written atomically, so a restarted server finds what it already has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from ..core.aws import Aws, describe, is_not_found, split_s3_uri, translate
from ..core.errors import NotFound, Refused, TransferError
from ..core.models.catalog import read_record

log = logging.getLogger(__name__)

MiB = 1024 * 1024
INDEX = "index.json"
TEMP = ".tmp-"  # anything named so in the root is a leftover of a crash
ATTEMPTS = 4  # per range, on top of boto's own retries
CHUNK = MiB  # a range is streamed to disk in chunks so memory stays small


def parse_s3_uri(uri: str) -> Tuple[str, str]:
    bucket, key = split_s3_uri(uri)
    if not bucket or key.endswith("/"):
        raise Refused(f"Not an S3 model location: {uri!r}; expected s3://bucket/key.")
    return bucket, key


def explain(exc: BaseException) -> str:
    try:
        return str(describe(exc))
    except BaseException:  # not a boto failure (a cut stream, a disk error): its own words
        return f"{type(exc).__name__}: {exc}"


class ModelCache:
    def __init__(self, aws: Aws, root: Path, max_bytes: int, part_size: int = 16 * MiB, concurrency: int = 8):
        self.aws, self.root, self.max_bytes = aws, Path(root), max_bytes
        self.part_size, self.concurrency = part_size, max(1, concurrency)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards entries, pins, counters and the index file
        self._fetching: Dict[str, threading.Lock] = {}  # one download per entry at a time
        self._pins: Dict[str, int] = {}
        self.hits = self.misses = 0
        self._entries: Dict[str, dict] = self._load()
        self._clock = max((e["used"] for e in self._entries.values()), default=0)

    # -- public ---------------------------------------------------------------------------------------
    def fetch(self, s3_uri: str) -> Path:
        return self._fetch(s3_uri, pin=False)

    @contextlib.contextmanager
    def using(self, s3_uri: str) -> Iterator[Path]:
        """Fetch and keep the model on disk (never evicted) while the block runs."""
        path = self._fetch(s3_uri, pin=True)
        try:
            yield path
        finally:
            self.unpin(path)

    def pin(self, path: Path) -> None:
        with self._lock:
            eid = Path(path).parent.name
            if eid not in self._entries:
                raise NotFound(f"{path} is not in the model cache at {self.root}.")
            self._pins[eid] = self._pins.get(eid, 0) + 1

    def unpin(self, path: Path) -> None:
        with self._lock:
            eid = Path(path).parent.name
            if self._pins.get(eid, 0) <= 1:
                self._pins.pop(eid, None)
            else:
                self._pins[eid] -= 1

    def sha256(self, path: Path) -> str:
        """The sha256 of a cached model file, computed once when it was fetched."""
        with self._lock:
            entry = self._entries.get(Path(path).parent.name)
            if entry is None:
                raise NotFound(f"{path} is not in the model cache at {self.root}.")
            return entry["sha256"]

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": sum(e["size"] for e in self._entries.values()),
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}

    # -- fetching -------------------------------------------------------------------------------------
    def _fetch(self, uri: str, pin: bool) -> Path:
        bucket, key = parse_s3_uri(uri)
        s3 = self.aws.client("s3")
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if is_not_found(exc):
                raise NotFound(f"No model at {uri}.") from None
            with translate(f"reading {uri}"):
                raise
        etag = head["ETag"]
        eid = hashlib.sha256(f"{bucket}\n{key}\n{etag}".encode()).hexdigest()[:32]
        with self._lock:
            entry_lock = self._fetching.setdefault(eid, threading.Lock())
        with entry_lock:  # a second caller of the same model waits here, then finds it cached
            with self._lock:
                entry = self._entries.get(eid)
                if entry and (self.root / eid / entry["name"]).is_file():  # deleted by hand: fetch again
                    self.hits += 1
                    return self._take(eid, pin)
                self.misses += 1
            name = key.rsplit("/", 1)[-1]
            size = head["ContentLength"]
            temp = self.root / f"{TEMP}{eid}-{uuid.uuid4().hex}"
            try:
                self._download(uri, bucket, key, etag, size, temp)
                sha256 = self._verify(uri, bucket, key, size, temp)
                (self.root / eid).mkdir(exist_ok=True)
                os.replace(temp, self.root / eid / name)
            finally:
                temp.unlink(missing_ok=True)
            with self._lock:
                self._entries[eid] = {"bucket": bucket, "key": key, "etag": etag, "name": name, "size": size,
                                      "sha256": sha256, "used": 0}
                path = self._take(eid, pin)
                self._evict(keep=eid, uri=uri)
                return path

    def _take(self, eid: str, pin: bool) -> Path:
        """Mark most recently used (and pin) under the lock, so eviction cannot slip in between."""
        self._clock += 1
        entry = self._entries[eid]
        entry["used"] = self._clock
        if pin:
            self._pins[eid] = self._pins.get(eid, 0) + 1
        self._save()
        return self.root / eid / entry["name"]

    def _download(self, uri: str, bucket: str, key: str, etag: str, size: int, temp: Path) -> None:
        s3 = self.aws.client("s3")
        failed = threading.Event()  # the first range that gives up stops the others from starting

        def get_range(start: int) -> None:
            end = min(start + self.part_size, size) - 1
            for attempt in range(1, ATTEMPTS + 1):
                if failed.is_set():
                    return
                try:
                    # IfMatch: a model re-uploaded mid-download must not mix two versions in one file
                    body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}", IfMatch=etag)["Body"]
                    offset = start
                    while chunk := body.read(CHUNK):
                        os.pwrite(fd, chunk, offset)
                        offset += len(chunk)
                    if offset != end + 1:
                        raise ConnectionError(f"short read: {offset - start} of {end + 1 - start} bytes")
                    return
                except Exception as exc:
                    what = explain(exc)
                    if attempt == ATTEMPTS or "PreconditionFailed" in what:
                        failed.set()
                        raise TransferError(f"Could not download {uri}: bytes {start}-{end} failed "
                                            f"after {attempt} attempts ({what}).") from exc
                    log.warning("retrying bytes %d-%d of %s: %s", start, end, uri, what)
                    time.sleep(0.2 * attempt)  # a busy S3 (503 SlowDown) needs a moment, not a burst

        fd = os.open(temp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            with ThreadPoolExecutor(self.concurrency) as pool:
                futures = [pool.submit(get_range, start) for start in range(0, size, self.part_size)]
            for future in futures:
                future.result()  # raises the first failure
            os.fsync(fd)
        finally:
            os.close(fd)

    def _verify(self, uri: str, bucket: str, key: str, size: int, temp: Path) -> str:
        """The file's sha256 (the WebUI's model hash comes from it), checked against the record if there is one."""
        if temp.stat().st_size != size:
            raise TransferError(f"Download of {uri} is {temp.stat().st_size} bytes, expected {size}.")
        expected = self._record_sha256(uri, bucket, key)
        digest = hashlib.sha256()
        with open(temp, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
        if expected and digest.hexdigest() != expected.lower():
            raise TransferError(f"Download of {uri} is corrupt: its sha256 does not match its record.")
        return digest.hexdigest()

    def _record_sha256(self, uri: str, bucket: str, key: str) -> Optional[str]:
        # read from the model's own bucket (not aws.bucket): endpoints may load models from any bucket; a model
        # without a record (or with a hand-edited or foreign one) is taken as it is
        record = read_record(self.aws, key, bucket=bucket)
        return record.sha256 if record else None

    # -- size bound and index -------------------------------------------------------------------------
    def _evict(self, keep: str, uri: str) -> None:
        total = sum(e["size"] for e in self._entries.values())
        for eid in sorted(self._entries, key=lambda k: self._entries[k]["used"]):
            if total <= self.max_bytes:
                break
            if eid == keep or self._pins.get(eid):
                continue
            entry = self._entries.pop(eid)
            total -= entry["size"]
            (self.root / eid / entry["name"]).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.root / eid).rmdir()
            log.info("evicted s3://%s/%s (%d bytes) from the model cache", entry["bucket"], entry["key"], entry["size"])
        if total > self.max_bytes:
            log.warning("model cache at %s is too small: %d bytes in use (with %s) for a limit of %d; "
                        "the models in use stay", self.root, total, uri, self.max_bytes)
        self._save()

    def _save(self) -> None:
        temp = self.root / f"{TEMP}index-{uuid.uuid4().hex}"
        temp.write_text(json.dumps(self._entries, indent=1))
        os.replace(temp, self.root / INDEX)  # atomic: a crash leaves the old index or the new one

    def _load(self) -> Dict[str, dict]:
        try:
            entries = json.loads((self.root / INDEX).read_text())
        except (OSError, ValueError):
            entries = {}
        # keep only entries whose file is whole; everything else in the root is a crash's leftover
        entries = {eid: e for eid, e in entries.items() if isinstance(e, dict) and e.get("sha256") and
                   (self.root / eid / str(e.get("name"))).is_file() and
                   (self.root / eid / e["name"]).stat().st_size == e.get("size")}
        for item in self.root.iterdir():
            if item.name.startswith(TEMP):
                item.unlink(missing_ok=True)
            elif item.is_dir() and item.name not in entries and len(item.name) == 32:  # an entry folder
                for child in item.iterdir():
                    child.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    item.rmdir()
        return entries
