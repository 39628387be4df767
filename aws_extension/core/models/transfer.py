"""The multipart engine: a stream of bytes into one S3 object.

Parts go up in parallel while the next ones are read, each read straight into its own buffer; at most
BUFFER_BUDGET of parts (never fewer than one, of at most MAX_BUFFERED_PART) are held at once, whatever the
size a source claims. The sha256 of the whole object is computed on the way; every part carries its CRC32,
which S3 checks (a part S3 finds altered on arrival is sent once more), and the completed object's
composite checksum is compared with ours. An upload cut off by the network or the user stays open in S3
and the next attempt resumes it (parts already there whose size and CRC32 match are not sent again); any
other failure aborts it so nothing half-written is left.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import botocore.exceptions as bex

from ..aws import Aws, describe, error_code
from ..errors import Interrupted, Refused, TransferError, UserError
from .catalog import record_key

MiB = 1024 * 1024
MIN_PART = 8 * MiB  # S3's minimum is 5 MiB; 8 MiB is boto3's default and a good request size
MAX_PARTS = 10_000
# Parts are held whole in memory (each carries its CRC32 up front, and a retry sends it again), so a part
# may not grow with the size a server claims: 512 MiB parts still give 5.37 TB, beyond S3's 5 TB objects.
MAX_BUFFERED_PART = 512 * MiB
MAX_UPLOAD = MAX_PARTS * MAX_BUFFERED_PART
BUFFER_BUDGET = 256 * MiB  # parts in flight plus the one being read; one part when a single part is larger
READ_PIECE = MiB  # a network read's own transient copy
# S3 computed another checksum than the one sent with the bytes: they changed on the way.
CORRUPTED = ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest")


@dataclass
class Progress:
    """What a surface shows for one item: bytes done of total (None while unknown)."""

    item: str
    done: int = 0
    total: Optional[int] = None
    state: str = "uploading"  # checking | uploading | done | skipped | failed | interrupted
    message: str = ""


ProgressFn = Callable[[Progress], None]


def part_size_for(total: Optional[int]) -> int:
    """The smallest MiB-aligned part size that keeps a known size under 10,000 parts."""
    if not total:
        return 16 * MiB
    needed = -(-total // MAX_PARTS)
    return max(MIN_PART, -(-needed // MiB) * MiB)


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def composite_crc32(part_checksums: List[str]) -> str:
    """S3's checksum of a multipart object: CRC32 over the parts' CRC32 digests, then '-<parts>'."""
    joined = b"".join(base64.b64decode(c) for c in part_checksums)
    return f"{crc32_b64(joined)}-{len(part_checksums)}"


def parts_held(part_size: int, concurrency: int) -> int:
    """How many parts may be in memory at once: the ones uploading plus the one being read."""
    return max(1, min(concurrency + 1, BUFFER_BUDGET // part_size))


def check_upload_size(total: Optional[int], item: str, size_is: str = "the file is") -> None:
    """Refuse, before anything is written, a size that cannot go up in 10,000 parts we are willing to hold."""
    if total is not None and total > MAX_UPLOAD:
        raise Refused(f"{item}: {size_is} {total:,} bytes, more than one upload can hold ({MAX_UPLOAD:,} bytes: "
                      f"{MAX_PARTS:,} parts of {MAX_BUFFERED_PART // MiB} MiB; an S3 object holds about 5 TB); "
                      "nothing was uploaded.")


def _read_into(stream, view: memoryview) -> int:
    data = stream.read(len(view))
    view[:len(data)] = data
    return len(data)


def read_chunks(stream, part_size: int) -> Iterator[bytearray]:
    """Parts of `part_size` bytes (the last may be shorter), each read in place into its own buffer: no
    concatenation, so the memory a part takes is its size, not a multiple of it."""
    readinto = getattr(stream, "readinto", None) or (lambda view: _read_into(stream, view))
    while True:
        part, filled = bytearray(part_size), 0
        with memoryview(part) as view:
            # A stream may return short reads (sockets do): fill the part so every part but the last is full size.
            while filled < part_size:
                with view[filled:] as rest:
                    got = readinto(rest)
                if not got:
                    break
                filled += got
        if not filled:
            return
        del part[filled:]
        yield part
        del part  # before the next part is allocated: the consumer holds this one as long as it needs it


def is_interruption(exc: BaseException) -> bool:
    """Worth resuming later: the network, a busy server, or the user stopping it."""
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return True
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
                        bex.ConnectTimeoutError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, bex.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error_code(exc) in ("SlowDown", "RequestTimeout", "InternalError")
    return False


@dataclass
class SentObject:
    key: str
    size: int
    sha256: str
    parts_sent: int = 0
    parts_reused: int = 0
    resumed: bool = False


@dataclass
class _Remote:
    upload_id: str
    parts: Dict[int, dict] = field(default_factory=dict)


class Cancelled(Interrupted):
    pass


class ObjectWriter:
    """Writes one S3 object from chunks of `part_size` bytes (the last may be shorter)."""

    def __init__(self, aws: Aws, key: str, item: str, progress: Optional[ProgressFn] = None,
                 cancel: Optional[threading.Event] = None, concurrency: Optional[int] = None,
                 content_type: str = "application/octet-stream"):
        self.aws = aws
        self.s3 = aws.client("s3")
        self.key = key
        self.item = item
        self.progress = progress or (lambda p: None)
        self.cancel = cancel or threading.Event()
        self.concurrency = max(1, concurrency or aws.settings.concurrency)
        self.content_type = content_type
        self._stop = threading.Event()  # our own: a failed part stops the others, not the caller's batch

    # -- public -------------------------------------------------------------------------------------
    def write(self, chunks: Iterable[bytes], total: Optional[int], part_size: int) -> SentObject:
        """Send every chunk; returns what was written. Raises Interrupted (resumable) or TransferError."""
        check_upload_size(total, self.item)
        if part_size > MAX_BUFFERED_PART:
            raise Refused(f"{self.item}: parts of {part_size // MiB} MiB are larger than the "
                          f"{MAX_BUFFERED_PART // MiB} MiB held in memory; nothing was uploaded.")
        chunks = iter(chunks)
        # a list, not locals: this frame must not keep parts alive for the whole upload
        head = [next(chunks, b"")]
        if len(head[0]) >= part_size and (total is None or total <= part_size):
            head.append(next(chunks, None))  # one part by the size (or no size): look whether more follows
        if len(head[0]) < part_size or head[-1] is None:
            return self._put_single(head[0])
        remote = self._find_open_upload() or self._create_upload()
        try:
            return self._send_parts(remote, _prepend(head, chunks), total, part_size)
        except BaseException as exc:
            if is_interruption(exc):
                raise self._interrupted(exc) from exc
            self._abort(remote.upload_id)
            raise self._failed(exc) from exc

    # -- single request for small objects -----------------------------------------------------------
    def _put_single(self, body: bytes) -> SentObject:
        self._check_cancel()
        digest = hashlib.sha256(body)
        try:
            # S3 verifies the sha256 of a single PUT itself.
            self._checked("the file", lambda: self.s3.put_object(
                Bucket=self.aws.bucket, Key=self.key, Body=body, ContentType=self.content_type,
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            ))
        except BaseException as exc:
            raise (self._interrupted(exc) if is_interruption(exc) else self._failed(exc)) from exc
        self.progress(Progress(self.item, len(body), len(body)))
        return SentObject(self.key, len(body), digest.hexdigest(), parts_sent=1)

    # -- multipart ----------------------------------------------------------------------------------
    def _find_open_upload(self) -> Optional[_Remote]:
        """The newest open upload of this key, with its parts; older duplicates are aborted."""
        try:
            uploads = [
                u for page in self.s3.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.aws.bucket, Prefix=self.key)
                for u in page.get("Uploads", []) if u["Key"] == self.key
            ]
        except BaseException as exc:
            raise describe(exc, f"looking for an interrupted upload of {self.key}") from exc
        if not uploads:
            return None
        uploads.sort(key=lambda u: u["Initiated"])
        for stale in uploads[:-1]:
            self._abort(stale["UploadId"])
        remote = _Remote(uploads[-1]["UploadId"])
        try:
            for page in self.s3.get_paginator("list_parts").paginate(
                    Bucket=self.aws.bucket, Key=self.key, UploadId=remote.upload_id):
                for part in page.get("Parts", []):
                    remote.parts[part["PartNumber"]] = part
        except BaseException as exc:
            if error_code(exc) == "NoSuchUpload":  # aborted meanwhile (lifecycle rule, cleanup)
                return None
            raise describe(exc, f"listing the parts of an interrupted upload of {self.key}") from exc
        return remote

    def _create_upload(self) -> _Remote:
        try:
            created = self.s3.create_multipart_upload(
                Bucket=self.aws.bucket, Key=self.key, ContentType=self.content_type, ChecksumAlgorithm="CRC32")
        except BaseException as exc:
            raise describe(exc, f"starting the upload of {self.key}") from exc
        return _Remote(created["UploadId"])

    def _send_parts(self, remote: _Remote, chunks: Iterator[bytes], total: Optional[int], part_size: int) -> SentObject:
        sha = hashlib.sha256()
        done_parts: Dict[int, dict] = {}
        pending: Dict[Future, int] = {}
        size = sent = reused = 0
        done_bytes = 0
        lock = threading.Lock()

        def upload(number: int, body: bytes, checksum: str) -> dict:
            self._check_cancel()
            resp = self._checked(f"part {number}", lambda: self.s3.upload_part(
                Bucket=self.aws.bucket, Key=self.key, UploadId=remote.upload_id, PartNumber=number,
                Body=body, ChecksumCRC32=checksum,
            ))
            return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumCRC32": checksum, "Size": len(body)}

        def settle(futures) -> None:
            nonlocal done_bytes
            for fut in futures:
                pending.pop(fut)
                part = fut.result()  # re-raises the part's failure
                with lock:
                    done_parts[part["PartNumber"]] = part
                    done_bytes += part["Size"]
                self.progress(Progress(self.item, done_bytes, total))

        def drain(most: int) -> None:
            while len(pending) > most:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                settle(finished)

        held = parts_held(part_size, self.concurrency)
        slots = max(1, held - 1)  # parts uploading at once: the rest of what is held is the part being read
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
            try:
                number = 0
                for chunk in chunks:  # not enumerate(): its reused result tuple would keep the last part alive
                    number += 1
                    if number > MAX_PARTS:
                        raise TransferError(f"{self.item}: larger than S3's 10,000 parts of {part_size // MiB} MiB.")
                    self._check_cancel()
                    sha.update(chunk)
                    size += len(chunk)
                    checksum = crc32_b64(chunk)
                    old = remote.parts.get(number)
                    if old and same_part(old, chunk, checksum):
                        done_parts[number] = {**old, "ChecksumCRC32": checksum}
                        done_bytes += len(chunk)
                        reused += 1
                        self.progress(Progress(self.item, done_bytes, total))
                        del chunk
                        continue
                    drain(slots - 1)  # a free slot
                    pending[pool.submit(upload, number, chunk, checksum)] = number
                    sent += 1
                    del chunk
                    drain(held - 1)  # room for the part read next: with one part held, none stays in flight
                settle(list(wait(pending).done))
            except BaseException:
                self._stop.set()  # stop queued parts quickly
                for fut in pending:
                    fut.cancel()
                raise
        if total is not None and size != total:
            raise TransferError(f"{self.item}: expected {total} bytes but read {size}: the source changed or was cut short.")
        parts = [done_parts[n] for n in sorted(done_parts)]
        completed = self.s3.complete_multipart_upload(
            Bucket=self.aws.bucket, Key=self.key, UploadId=remote.upload_id,
            MultipartUpload={"Parts": [
                {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumCRC32": p["ChecksumCRC32"]} for p in parts
            ]},
        )
        verify_completed(self.aws, self.key, self.item, completed, size, [p["ChecksumCRC32"] for p in parts])
        return SentObject(self.key, size, sha.hexdigest(), parts_sent=sent, parts_reused=reused,
                          resumed=bool(remote.parts))

    def _checked(self, what: str, send: Callable[[], dict]) -> dict:
        """One request, sent once more when S3 says the bytes arrived altered; twice is not chance."""
        try:
            return send()
        except bex.ClientError as exc:
            if error_code(exc) not in CORRUPTED:
                raise
        self._check_cancel()
        try:
            return send()
        except bex.ClientError as exc:
            code = error_code(exc)
            if code not in CORRUPTED:
                raise
            raise TransferError(f"{self.item}: {what} arrived corrupted at S3 twice ({code}): the network or a "
                                "proxy on the way is altering data; nothing was kept, try again.") from exc

    # -- endings ------------------------------------------------------------------------------------
    def _abort(self, upload_id: str) -> None:
        try:
            self.s3.abort_multipart_upload(Bucket=self.aws.bucket, Key=self.key, UploadId=upload_id)
        except Exception:  # already gone; the bucket's lifecycle rule is the backstop
            pass

    def _check_cancel(self) -> None:
        if self._stop.is_set() or self.cancel.is_set():
            raise Cancelled(f"{self.item}: upload stopped.")

    def _interrupted(self, exc: BaseException) -> Interrupted:
        why = "stopped" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else f"interrupted ({describe_short(exc)})"
        return Interrupted(f"{self.item}: upload {why}; run it again to resume (sent parts are kept for a day).")

    def _failed(self, exc: BaseException) -> TransferError:
        if isinstance(exc, UserError):
            return exc if isinstance(exc, TransferError) else TransferError(str(exc))
        if isinstance(exc, (bex.BotoCoreError, bex.ClientError)):
            return TransferError(f"{self.item}: {describe(exc, 'uploading')}")
        if isinstance(exc, OSError):
            return TransferError(f"{self.item}: cannot read the source: {exc.strerror or exc}.")
        raise exc


def verify_completed(aws: Aws, key: str, item: str, completed: dict, size: int, checksums: List[str]) -> None:
    """The object S3 assembled must be the bytes sent: the composite CRC32 of the parts (where S3 returns one)
    and the size. Otherwise the object and its record (which would describe an older file) are removed."""
    problem = ""
    remote = completed.get("ChecksumCRC32")
    if remote and "-" in remote and remote != composite_crc32(checksums):
        problem = f"checksum {remote} != {composite_crc32(checksums)}"
    else:
        got = aws.client("s3").head_object(Bucket=aws.bucket, Key=key)["ContentLength"]
        if got != size:
            problem = f"{got} bytes arrived, the source has {size}"
    if problem:
        stale = [{"Key": key}, {"Key": record_key(key)}]
        aws.client("s3").delete_objects(Bucket=aws.bucket, Delete={"Objects": stale, "Quiet": True})
        raise TransferError(f"{item}: the uploaded object does not match the source ({problem}); it was removed.")


def same_part(remote: dict, chunk: bytes, checksum: str) -> bool:
    """A part already in S3 holds these bytes: by its CRC32 where S3 lists one, else by its MD5 ETag."""
    if remote["Size"] != len(chunk):
        return False
    if remote.get("ChecksumCRC32"):
        return remote["ChecksumCRC32"] == checksum
    return remote.get("ETag", "").strip('"') == hashlib.md5(chunk).hexdigest()


def describe_short(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        return error_code(exc) or "server error"
    return type(exc).__name__


def _prepend(head: List[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    while head:  # popped, so that a part sent is not still referenced here
        yield head.pop(0)
    yield from rest
