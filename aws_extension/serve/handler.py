"""The one request handler behind both entry points (our HTTP server and AWS's prebuilt PyTorch container).

The engine (torch, diffusers: ~10 s to import, more on a cold disk) starts in a background thread, so /ping
answers at once while it loads; an invocation that arrives meanwhile waits for it. With a checkpoint to preload
(SD_SAGEMAKER_PRELOAD_CHECKPOINT), /ping answers 503 until it is loaded, so SageMaker sends no traffic before.
Every failure comes back as a status and a sentence naming what to fix; nothing takes the server down.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..core.errors import Interrupted, NotFound, UserError
from ..contract.request import BadRequest, parse_request

log = logging.getLogger(__name__)

DEFAULT_DIR = "/tmp/sd-webui-sagemaker"
START_TIMEOUT = 900.0  # an invocation waits this long for the engine (first start on a cold instance)
# on a real-time endpoint InvokeEndpoint gives up at 60 s: better a clear "still loading" before that (tests shorten it)
REALTIME_WAIT = float(os.environ.get("SD_SAGEMAKER_REALTIME_WAIT", "50"))


def default_cache_bytes(folder: Path) -> int:
    """SD_SAGEMAKER_CACHE_GB, else 80% of the disk space there (endpoints have one disk for everything)."""
    if os.environ.get("SD_SAGEMAKER_CACHE_GB"):
        return int(float(os.environ["SD_SAGEMAKER_CACHE_GB"]) * 1024 ** 3)
    folder.mkdir(parents=True, exist_ok=True)
    return int(shutil.disk_usage(folder).free * 0.8)


class Handler:
    def __init__(self, make_engine: Callable[[], object], preload: Optional[str] = None, realtime: bool = False):
        self.preload = preload  # an s3:// checkpoint loaded before /ping says healthy
        self.realtime = realtime  # a real-time endpoint: InvokeEndpoint's 60 s limit
        self._engine = None
        self._stage = "starting the engine"
        self._failure: Optional[str] = None
        self._ready = threading.Event()  # the engine started and the preload done (or either failed)
        self._closing = threading.Event()
        self._cancel = threading.Event()
        self._busy = threading.Condition()
        self._inflight = 0
        self.started_at = time.monotonic()
        threading.Thread(target=self._start, args=(make_engine,), name="engine-start", daemon=True).start()

    @classmethod
    def from_environment(cls, cache_dir: Optional[str] = None, cache_bytes: Optional[int] = None) -> "Handler":
        """Models from S3 with the instance's credentials; SD_SAGEMAKER_CACHE_DIR / _CACHE_GB size the disk cache."""
        root = Path(cache_dir or os.environ.get("SD_SAGEMAKER_CACHE_DIR") or DEFAULT_DIR)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from a model hub, ever

        def make_engine():
            from ..core.aws import Aws
            from ..core.config import Settings
            from .cache import ModelCache
            from .engine import Engine

            cache = ModelCache(Aws(Settings.resolve()), root / "models",
                               cache_bytes or default_cache_bytes(root / "models"))
            return Engine(cache, root)

        return cls(make_engine, preload=os.environ.get("SD_SAGEMAKER_PRELOAD_CHECKPOINT") or None,
                   realtime=os.environ.get("SD_SAGEMAKER_ENDPOINT_TYPE", "").lower() == "real-time")

    def _start(self, make_engine) -> None:
        try:
            self._engine = make_engine()
            log.info("engine ready in %.1f s", time.monotonic() - self.started_at)
        except BaseException as exc:  # noqa: B036 - reported on /ping and to every invocation, never raised here
            log.exception("the engine could not start: %s", exc)
            self._failure = f"The inference server could not start: {exc}"
            self._ready.set()
            return
        if self.preload:
            self._stage = f"preloading {self.preload}"
            log.info("preloading %s", self.preload)
            try:
                self._engine.preload(self.preload)
                log.info("preloaded %s, ready after %.1f s", self.preload, time.monotonic() - self.started_at)
            except BaseException as exc:  # noqa: B036 - reported on /ping, never raised here
                log.error("the checkpoint to preload could not be loaded: %s", exc)
                self._failure = f"The checkpoint to preload, {self.preload}, could not be loaded: {exc}"
        self._ready.set()

    def wait_healthy(self, timeout: Optional[float] = None) -> None:
        """Until the engine has started and the preload is done; raises with the reason when either failed.
        For hosts that answer /ping themselves (TorchServe in AWS's prebuilt image)."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"The inference server is still {self._stage} after {timeout} s.")
        if self._failure:
            raise RuntimeError(self._failure)

    # -- the SageMaker contract ---------------------------------------------------------------------------
    def ping(self) -> Tuple[int, dict]:
        if self._failure:
            return 500, {"status": "failed", "error": self._failure}
        if not self._ready.is_set():
            # with a preload, not healthy yet: SageMaker keeps the endpoint Creating and sends no traffic
            return (503 if self.preload else 200), {"status": "loading", "stage": self._stage}
        engine = self._engine
        return 200, {"status": "ready", "cache": engine.cache.stats(), "compile": engine.compile_stats()}

    def invoke(self, body: bytes, content_type: str = "application/json") -> Tuple[int, dict]:
        if self._closing.is_set():
            return 503, {"error": "The server is shutting down; send the request again."}
        with self._busy:
            self._inflight += 1
        try:
            return self._invoke(body, content_type)
        finally:
            with self._busy:
                self._inflight -= 1
                self._busy.notify_all()

    def _invoke(self, body: bytes, content_type: str) -> Tuple[int, dict]:
        if content_type and "json" not in content_type.lower():
            return 415, {"error": f"Content type {content_type!r} is not supported: send application/json."}
        try:
            data = json.loads(body or b"null")
        except ValueError as exc:  # also bad UTF-8
            return 400, {"error": f"The body is not valid JSON ({exc}).", "field": "body"}
        try:
            req = parse_request(data)
        except BadRequest as exc:
            return 400, {"error": str(exc), "field": exc.field}
        if not self._ready.wait(REALTIME_WAIT if self.realtime else START_TIMEOUT):
            if self.realtime:
                name = (self.preload or req.models.checkpoint).rsplit("/", 1)[-1]
                return 503, {"error": f"The endpoint is still loading the model {name} ({self._stage}, "
                                      f"{time.monotonic() - self.started_at:.0f} s so far); try again in a minute.",
                             "status": "loading"}
            return 503, {"error": "The inference server is still starting; try again in a minute."}
        if self._failure:
            return 500, {"error": self._failure}
        try:
            from .results import response

            generated = self._engine.generate(req, self._cancel)
            return 200, response(req, data.get("payload") or {}, generated)
        except BadRequest as exc:
            return 400, {"error": str(exc), "field": exc.field}
        except NotFound as exc:
            return 404, {"error": str(exc)}
        except Interrupted as exc:
            return 503, {"error": str(exc)}
        except UserError as exc:  # a model that cannot be fetched or loaded, a refused file
            return 422, {"error": str(exc)}
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                import torch

                torch.cuda.empty_cache()
                return 507, {"error": f"Out of GPU memory at {req.width}x{req.height} with batch_size "
                                      f"{req.batch_size}: lower the size or the batch."}
            log.exception("invocation failed")
            return 500, {"error": f"Generation failed: {type(exc).__name__}: {exc}"}

    def close(self, timeout: float = 25.0) -> bool:
        """Take no more work; let what runs finish, stopping it at the deadline. True when nothing is left."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        with self._busy:
            # most of the time to finish; the rest to stop at the next step and answer 503
            self._busy.wait_for(lambda: self._inflight == 0, timeout=max(0.0, timeout - 5))
            if self._inflight:
                log.warning("stopping %d running generation(s) to shut down", self._inflight)
                self._cancel.set()
            return self._busy.wait_for(lambda: self._inflight == 0, timeout=max(0.0, deadline - time.monotonic()))
