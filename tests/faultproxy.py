"""A loopback HTTP proxy in front of the emulator's S3 that fails or cuts chosen requests, and counts them.

Point boto3 at it with AWS_ENDPOINT_URL_S3; rules decide per request whether to pass it on, answer an
error status, or drop the connection halfway through the body (a network cut).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional
from urllib.parse import parse_qs, urlsplit

# A rule gets (method, path, query) and returns None (pass), an int (that HTTP status), s3_error(...)
# (that status with S3's error code and message), "cut", or ("delay", seconds): wait that long, then pass
# it on (a slow or distant S3).
Rule = Callable[[str, str, dict], Optional[object]]

ERROR_BODY = b"""<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>"""
CODES = {500: b"InternalError", 503: b"SlowDown", 403: b"AccessDenied", 400: b"BadRequest"}


class FaultProxy:
    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.rules: List[Rule] = []
        self.parts_passed: Counter = Counter()  # part number -> times it reached S3
        self.parts_failed: Counter = Counter()
        self.requests: List[tuple] = []  # (method, path, query) of every request, in arrival order
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                proxy.requests.append((self.command, url.path, query))
                part = int(query["partNumber"]) if self.command == "PUT" and "partNumber" in query else None
                length = int(self.headers.get("Content-Length") or 0)
                action = next((a for a in (rule(self.command, url.path, query) for rule in proxy.rules) if a), None)
                if part:
                    with proxy._lock:
                        proxy.in_flight += 1
                        proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    if isinstance(action, tuple) and action and action[0] == "delay":
                        time.sleep(float(action[1]))
                        action = None
                    if action == "cut":
                        self.rfile.read(length // 2)
                        proxy._count(part, failed=True)
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    body = self.rfile.read(length) if length else b""
                    if isinstance(action, int):
                        action = s3_error(action, CODES.get(action, b"Error").decode())
                    if isinstance(action, tuple) and action and action[0] == "error":
                        _, status, code, message = action
                        proxy._count(part, failed=True)
                        payload = ERROR_BODY % (code.encode(), message.encode())
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(payload)))
                        if self.headers.get("Origin"):  # as S3 answers a browser, so the page can read the error
                            self.send_header("Access-Control-Allow-Origin", self.headers["Origin"])
                            self.send_header("Access-Control-Expose-Headers", "ETag, x-amz-checksum-crc32")
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    self._forward(body)
                    proxy._count(part)
                finally:
                    if part:
                        with proxy._lock:
                            proxy.in_flight -= 1

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # a HEAD answer carries the object's length, not the (empty) body's
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            # OPTIONS: a browser's CORS preflight before its PUTs, answered by S3 (the bucket's CORS) as is
            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, part: Optional[int], failed: bool = False) -> None:
        if part:
            with self._lock:
                (self.parts_failed if failed else self.parts_passed)[part] += 1

    def reset_counts(self) -> None:
        self.parts_passed.clear()
        self.parts_failed.clear()
        self.requests.clear()
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def s3_error(status: int, code: str, message: str = "injected by the test proxy") -> tuple:
    """An action: answer as S3 does when it refuses a request (the request body is read first)."""
    return ("error", status, code, message)


def fail_part(numbers, action, times: Optional[int] = None) -> Rule:
    """Fail part uploads with these numbers: always, or only the first `times` attempts of each."""
    seen: Counter = Counter()

    def rule(method: str, path: str, query: dict):
        if method == "PUT" and "partNumber" in query and int(query["partNumber"]) in numbers:
            n = int(query["partNumber"])
            seen[n] += 1
            if times is None or seen[n] <= times:
                return action
        return None

    return rule


def delay_parts(seconds: float) -> Rule:
    """Every part upload waits `seconds` before it reaches S3, as over a long link."""

    def rule(method: str, path: str, query: dict):
        if method == "PUT" and "partNumber" in query:
            return ("delay", seconds)
        return None

    return rule
