"""Uploading models from download URLs: each body streamed straight into S3, never to disk nor whole in memory.

Every address a URL (or a redirect) resolves to is checked, and the connection goes to the checked address
itself (no second DNS lookup), so a URL cannot reach a cloud metadata service nor, unless allowed, the
machine's own network. URLs are shown redacted everywhere: query strings and user:password can carry tokens.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import List, Optional, Union
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from botocore.httpsession import get_cert_path  # the CA bundle boto3 itself trusts
from urllib3 import exceptions as ue

from ..aws import Aws
from ..errors import Interrupted, Refused, TransferError, UserError
from .catalog import same_source
from .detect import chosen_type, decide, detect_head
from .headers import grow_head
from .url_safety import redact_url, resolve_host
from .transfer import READ_PIECE, Progress, ProgressFn, check_upload_size, part_size_for, read_chunks
from .types import ModelType, check_file_name
from .uploads import UploadResult, failed, store_model

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_RESUMES = 3  # reconnects in a row without getting a byte
PEEK = 64 * 1024  # enough to tell an HTML page from a model file
TIMEOUT = urllib3.Timeout(connect=15, read=60)
REDIRECTS = (301, 302, 303, 307, 308)
# -- inputs --------------------------------------------------------------------------------------------
def split_urls(urls: Union[str, List[str]]) -> List[str]:
    """The tab's comma-separated text (newlines too), or a list as it is."""
    if isinstance(urls, str):
        urls = re.split(r"[,\n]", urls)
    return [u.strip() for u in urls if u and u.strip()]


def parse_description(description) -> Optional[dict]:
    if description is None or (isinstance(description, str) and not description.strip()):
        return None
    value = description
    if isinstance(description, (str, bytes)):
        try:
            value = json.loads(description)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise Refused('Models Description must be a JSON object, for example {"author": "me", "notes": "..."}.')
    return value


def name_from(headers, url: str) -> str:
    """Content-Disposition's filename* then filename, else the last segment of the URL's path."""
    cd, name = headers.get("Content-Disposition", ""), ""
    star = re.search(r"filename\*\s*=\s*([\w!#$%&+^`{}~-]*)'[^']*'([^;\s]+)", cd, re.I)
    plain = re.search(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', cd, re.I)
    if star:
        try:
            name = unquote(star.group(2), encoding=star.group(1) or "utf-8", errors="replace")
        except LookupError:  # an unknown charset name
            name = unquote(star.group(2), errors="replace")
    elif plain:
        name = re.sub(r"\\(.)", r"\1", plain.group(1)) if plain.group(1) is not None else plain.group(2)
        try:  # http.client reads headers as latin-1; servers often send raw UTF-8
            name = name.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    if not name:
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.split(r"[\\/]", name)[-1]  # a path in the header: its last part only
    return re.sub(r'[\x00-\x1f\x7f<>:"|?*]', "_", name).strip().lstrip(".").rstrip(". ")


def looks_html(first: bytes) -> bool:
    return first.lstrip(b"\xef\xbb\xbf \t\r\n")[:15].lower().startswith((b"<!doctype html", b"<html"))


WHY = ((ue.NewConnectionError, "cannot connect"), (ue.SSLError, "the TLS certificate check failed"),
       (ue.TimeoutError, "timed out"), ((ue.ProtocolError, ConnectionError), "connection broken"))


def _why(exc: BaseException) -> str:
    """A short cause, not the library's text: that can hold the request line, query included."""
    return next((why for kind, why in WHY if isinstance(exc, kind)), type(exc).__name__)


# -- one download --------------------------------------------------------------------------------------
class _Download:
    """GET requests for one URL, each to an address that passed the check; the body read as one stream."""

    def __init__(self, url: str, item: str, allow_private: bool, cancel: Optional[threading.Event]):
        self.url, self.item, self.allow_private = url, item, allow_private
        self.cancel = cancel or threading.Event()
        self.origin = urlsplit(url)[:2]
        self.pool = self.resp = None
        self.total: Optional[int] = None
        self.got, self.pending, self.validator, self.resumable = 0, b"", "", False

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted(f"{self.item}: download stopped.")

    def _pools(self, url: str) -> list:
        """One connection pool per checked address of the URL's host (tried in order, like any client)."""
        try:
            parts = urlsplit(url)
            host, https = parts.hostname, parts.scheme.lower() == "https"
            port = parts.port or (443 if https else 80)
        except ValueError:
            raise Refused(f"{self.item}: not a valid URL.") from None
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise Refused(f"{self.item}: only http:// and https:// URLs with a host can be downloaded.")
        addresses = resolve_host(host, port, self.allow_private, self.item)
        try:
            name = host.encode("idna").decode("ascii")
        except UnicodeError:
            name = host
        shown = f"[{name}]" if ":" in name else name
        pools = []
        for ip in addresses:
            if https:  # the certificate is checked against the URL's host name, not the address
                pool = urllib3.HTTPSConnectionPool(ip, port, timeout=TIMEOUT, retries=False, cert_reqs="CERT_REQUIRED",
                                                   ca_certs=get_cert_path(True), server_hostname=name,
                                                   assert_hostname=name)
            else:
                pool = urllib3.HTTPConnectionPool(ip, port, timeout=TIMEOUT, retries=False)
            pool.host_header = shown if port == (443 if https else 80) else f"{shown}:{port}"
            pools.append(pool)
        return pools

    def _get(self, url: str, extra: Optional[dict] = None):
        parts = urlsplit(url)
        headers = {"Host": self.pool.host_header, "User-Agent": "sd-webui-sagemaker", "Accept-Encoding": "identity",
                   **(extra or {})}
        # user:password in the URL goes as basic auth to that origin only, never across a redirect
        if parts.username is not None and parts[:2] == self.origin:
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers.update(urllib3.util.make_headers(basic_auth=auth))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self.pool.urlopen("GET", target, headers=headers, redirect=False, retries=False,
                                 preload_content=False, assert_same_host=False)

    def open(self):
        """The final response, after redirects that are each checked again."""
        for _ in range(MAX_REDIRECTS + 1):
            self.check_cancel()
            self.close()
            pools = self._pools(self.url)
            for number, self.pool in enumerate(pools, start=1):
                try:
                    self.resp = self._get(self.url)
                    break
                except ue.ConnectTimeoutError as exc:  # (NewConnectionError too): the next address may answer
                    self.pool.close()
                    if number == len(pools):
                        raise TransferError(f"{self.item}: download failed ({_why(exc)}).") from None
                except (ue.HTTPError, OSError) as exc:
                    # from None: the library's exception text can hold the query
                    raise TransferError(f"{self.item}: download failed ({_why(exc)}).") from None
            location = self.resp.headers.get("Location")
            if self.resp.status not in REDIRECTS or not location:
                return self.resp
            self.url = urljoin(self.url, location.strip())
        raise TransferError(f"{self.item}: more than {MAX_REDIRECTS} redirects.")

    def start_body(self, total: Optional[int], encoded: bool) -> None:
        headers, self.total = self.resp.headers, total
        etag = headers.get("ETag", "")
        self.validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified", "")
        # If-Range makes a changed file come back whole (200) rather than splice two versions;
        # ranges count encoded bytes while we read decoded ones
        self.resumable = headers.get("Accept-Ranges", "").lower() == "bytes" and bool(self.validator) and not encoded

    def read(self, n: int) -> bytes:
        pieces, want = [], n
        if self.pending:
            pieces.append(self.pending[:n])
            want, self.pending = n - len(pieces[0]), self.pending[n:]
        while want > 0:
            piece = self._read_some(want)
            if not piece:
                break
            pieces.append(piece)
            want -= len(piece)
        return b"".join(pieces)

    def readinto(self, view: memoryview) -> int:
        """Into a part's own buffer, a piece at a time: the network library copies what it returns."""
        if self.pending:
            n = min(len(view), len(self.pending))
            view[:n], self.pending = self.pending[:n], self.pending[n:]
            return n
        data = self._read_some(min(len(view), READ_PIECE))
        view[:len(data)] = data
        return len(data)

    def _read_some(self, n: int) -> bytes:
        failures = 0
        while True:
            self.check_cancel()
            try:
                if self.resp is None:
                    raise ConnectionError("reconnect failed")
                # read1 where there is one (urllib3 2): what has arrived, so bytes received before a cut are
                # counted and kept rather than dropped with a half-filled read(n)
                data = self.resp.read1(n) if hasattr(self.resp, "read1") else self.resp.read(n)
                short = not data and self.total is not None and self.got < self.total
                problem = "the connection closed early" if short else ""
            except (ue.HTTPError, OSError) as exc:
                data, problem = b"", _why(exc)
            if not problem:
                self.got += len(data)
                return data
            failures += 1
            self._resume(problem, failures)

    def _resume(self, problem: str, failures: int) -> None:
        size = f"{self.got:,}" + (f" of {self.total:,}" if self.total else "")
        broke = f"{self.item}: the download broke after {size} bytes ({problem})"
        if not self.resumable:
            raise TransferError(f"{broke} and the server does not allow resuming "
                                "(no Accept-Ranges with an ETag or Last-Modified); try again.")
        if failures > MAX_RESUMES:
            raise TransferError(f"{broke}; {MAX_RESUMES} reconnects failed, try again later.")
        if self.resp is not None:
            self.resp.close()
        time.sleep(0.5 * (failures - 1))
        try:  # same checked address, same final URL
            self.resp = self._get(self.url, {"Range": f"bytes={self.got}-", "If-Range": self.validator})
        except (ue.HTTPError, OSError):
            self.resp = None  # the next read fails and counts as another try
            return
        start = re.match(r"bytes\s+(\d+)-", self.resp.headers.get("Content-Range", ""))
        if self.resp.status == 206 and start and int(start.group(1)) == self.got:
            return
        if self.resp.status == 200:
            raise TransferError(f"{self.item}: the file changed on the server during the download; try again.")
        raise TransferError(f"{broke} and resuming it failed (HTTP {self.resp.status}); try again.")

    def close(self) -> None:
        for thing in (self.resp, self.pool):
            if thing is not None:
                thing.close()
        self.resp = self.pool = None


def upload_url(aws: Aws, t: Optional[ModelType], url: str, description: Optional[dict] = None,
               allow_private: bool = False, progress: Optional[ProgressFn] = None,
               cancel: Optional[threading.Event] = None, force: bool = False) -> UploadResult:
    """One URL into S3 as t's model (None: Auto, as its header says); raises UserError with the redacted URL in
    the message.

    The type is checked from the body's first bytes, before anything is written: a .safetensors header is at the
    start, and so is a torch .ckpt/.pt's data.pkl (torch.save writes that zip entry first, its end marked by the
    pickle's STOP and the data descriptor). No Range request for the zip's listing at the end: a zip whose first
    entry is not data.pkl (another writer) is of unknown kind, refused under Auto and uploaded as chosen otherwise.
    """
    item = redact_url(url)
    down = _Download(url, item, allow_private, cancel)
    try:
        resp = down.open()
        if not 200 <= resp.status < 300:
            raise TransferError(f"{item}: the server answered HTTP {resp.status} {resp.reason or ''}".rstrip() + ".")
        html = f"{item}: returned an HTML page, not a model file: use the direct download link."
        if resp.headers.get("Content-Type", "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
            raise Refused(html)
        name = name_from(resp.headers, down.url)
        check_file_name(name, f"{item} (file name '{name}')")  # before a byte is sent
        length = resp.headers.get("Content-Length", "")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        total = int(length) if length.isdigit() and not encoded else None
        # before a byte is read or written: the parts (and so the memory) a claimed size would need
        check_upload_size(total, item, "the server says the file is")
        etag = resp.headers.get("ETag", "")
        strong = etag if etag and not etag.startswith("W/") and not encoded else None

        def skipped(t: ModelType) -> Optional[UploadResult]:
            same = same_source(aws, t.key(name), item, strong, total) if strong and total is not None else None
            if same is None:  # the server vouches it is the same file (strong ETag, size): nothing to send again
                return None
            if progress:
                progress(Progress(item, total, total, "skipped"))
            return UploadResult(item=item, type=t.id, status="skipped", name=name, key=same.key, size=total,
                                sha256=same.sha256)

        done = skipped(t) if t is not None else None  # before a byte of the body is read
        if done:
            return done
        down.start_body(total, encoded)
        first = down.read(PEEK)
        if not first:
            raise Refused(f"{item}: the server sent an empty file; nothing was uploaded.")
        if looks_html(first):
            raise Refused(html)
        first = grow_head(name, first, down.read, total)
        detected = detect_head(name, first, total)
        chosen, t = t, decide(detected, t, item, force)
        done = skipped(t) if chosen is None else None  # under Auto the folder, and so the key, is known only now
        if done:
            return done
        down.pending = first
        part_size = part_size_for(total)
        if progress:
            progress(Progress(item, 0, total))
        # a generator: the writer reads the next part from the network while earlier parts upload
        return store_model(aws, t, name, item, read_chunks(down, part_size), total, part_size, source=item,
                           description=description, progress=progress, cancel=cancel, source_etag=strong,
                           detected=detected)
    finally:
        down.close()


def upload_urls(aws: Aws, type_name: Optional[str], urls: Union[str, List[str]], description=None,
                allow_private: Optional[bool] = None, progress: Optional[ProgressFn] = None,
                cancel: Optional[threading.Event] = None, force: bool = False) -> List[UploadResult]:
    """Every URL on its own: a refused or failed one does not stop the others. type_name "auto" (or None): each
    file's header says its type."""
    t = chosen_type(type_name)
    described = parse_description(description)  # before any download
    if allow_private is None:
        allow_private = bool(aws.settings.allow_private_urls)
    results = []
    for url in split_urls(urls):
        item = redact_url(url)
        if cancel is not None and cancel.is_set():
            results.append(failed(item, t, Interrupted(f"{item}: not started (stopped).")))
            continue
        try:
            results.append(upload_url(aws, t, url, described, allow_private, progress, cancel, force))
            continue
        except UserError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - one line for this URL; the library's text may hold the query
            log.warning("%s: unexpected %s", item, type(exc).__name__)
            error = TransferError(f"{item}: download failed ({_why(exc)}).")
        if progress:
            state = "interrupted" if isinstance(error, Interrupted) else "failed"
            progress(Progress(item, state=state, message=str(error)))
        results.append(failed(item, t, error))
    return results
