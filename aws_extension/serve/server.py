"""`python -m aws_extension serve`: the SageMaker container contract over the standard library's HTTP server.

GET /ping and POST /invocations on port 8080 (SageMaker's), each request on its own thread, so a ping is
answered while a generation runs or the engine loads. SIGTERM (SageMaker's stop, 30 s before SIGKILL): new
invocations get 503, the running one finishes or is stopped, and the process exits within the deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .handler import Handler

log = logging.getLogger(__name__)

MAX_BODY = 1100 * 1024 * 1024  # async invocations carry up to 1 GB from S3
# SageMaker kills 30 s after SIGTERM; tests shorten it
SHUTDOWN_SECONDS = float(os.environ.get("SD_SAGEMAKER_SHUTDOWN_SECONDS", "25"))


class Answering:
    """Requests between being read and answered: the process may exit only once their answers are out."""

    def __init__(self):
        self.count = 0
        self.changed = threading.Condition()

    def __enter__(self):
        with self.changed:
            self.count += 1

    def __exit__(self, *exc):
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count == 0, timeout)


def request_handler(handler: Handler, answering: Answering):
    class Endpoint(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "sd-webui-sagemaker"
        timeout = 120  # an idle keep-alive connection is closed after this

        def _answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - the http.server naming
            if self.path.split("?")[0] == "/ping":
                self._answer(*handler.ping())
            else:
                self._answer(404, {"error": f"No such path {self.path}: use GET /ping or POST /invocations."})

        def do_POST(self):  # noqa: N802
            if self.path.split("?")[0] != "/invocations":
                self._answer(404, {"error": f"No such path {self.path}: use GET /ping or POST /invocations."})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                self._answer(413, {"error": f"The request body is {length} bytes; the limit is {MAX_BODY}."})
                return
            with answering:
                body = self.rfile.read(length)
                self._answer(*handler.invoke(body, self.headers.get("Content-Type") or "application/json"))

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

    return Endpoint


def serve(host: str, port: int, handler: Handler, announce=print) -> int:
    answering = Answering()
    httpd = ThreadingHTTPServer((host, port), request_handler(handler, answering))
    httpd.daemon_threads = True
    stopped = threading.Event()

    def stop(signum, frame):
        if stopped.is_set():
            return
        stopped.set()
        log.info("signal %s: finishing in-flight work, then exiting", signum)

        def drain():
            clean = handler.close(SHUTDOWN_SECONDS)
            answering.wait_idle(2.0)  # the last answers on their way out
            log.info("in-flight work %s", "finished" if clean else "stopped at the deadline")
            httpd.shutdown()

        threading.Thread(target=drain, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announce(f"Inference server listening on http://{host}:{httpd.server_address[1]} (GET /ping, POST /invocations)")
    sys.stdout.flush()
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
    return 0


def main(host: str, port: int, cache_dir: Optional[str], cache_gb: Optional[float]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "s3transfer"):  # their debug lines can carry signed URLs
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = Handler.from_environment(cache_dir, int(cache_gb * 1024 ** 3) if cache_gb else None)
    if os.environ.get("SD_SAGEMAKER_PARENT_PID"):
        threading.Thread(target=exit_with_parent, args=(int(os.environ["SD_SAGEMAKER_PARENT_PID"]),),
                         name="parent-watch", daemon=True).start()
    return serve(host, port, handler)


def exit_with_parent(pid: int) -> None:
    """A local endpoint's server stops (as on SIGTERM) when the emulator that started it is gone, even if killed."""
    while os.getppid() == pid:
        time.sleep(1.0)
    log.info("the process that started this server is gone: shutting down")
    os.kill(os.getpid(), signal.SIGTERM)
