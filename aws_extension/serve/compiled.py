"""torch.compile for the UNet on one GPU thread, without ever making a request wait for it; compiled code in S3.

Inductor's CUDA-graph trees (mode "reduce-overhead") live in thread-local state of the thread that first compiles
(pytorch/pytorch#123177), so one long-lived thread, the GpuWorker, runs every generation, every compile and every
UNet call. A pipeline call decides once, at its first UNet step, whether the compiled graph for its shapes is ready,
and keeps to that for every step (a switch midway would change the pixels for the same seed). A shape that is not
ready is compiled on the worker between requests, with a copy of that call's inputs. Compiler artifacts
(torch.compiler's portable cache, torch 2.7+) are saved to S3 keyed by GPU, library versions and compile mode, and
loaded when an instance starts, so an endpoint scaling out from zero does not pay the compile again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Dict, Optional, Set, Tuple

import torch

log = logging.getLogger(__name__)

PREFIX = "compile-cache/"


def cache_supported() -> bool:
    """torch.compiler's portable cache arrived in torch 2.7; AWS's prebuilt inference image has 2.6."""
    return all(hasattr(torch.compiler, f) for f in ("save_cache_artifacts", "load_cache_artifacts"))


class GpuWorker:
    """The one thread that touches the models: requests in order, warm-up compiles only when no request waits."""

    def __init__(self, name: str = "gpu"):
        self._changed = threading.Condition()
        self._now: deque = deque()  # (fn, future): requests
        self._idle: deque = deque()  # (fn, future): warm-ups
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def run(self, fn: Callable, *args, **kwargs):
        """fn's result (or exception) once the worker has run it; at once when already on the worker."""
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        # autograd's modes are per thread: the caller's go with the work
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def job():
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*args, **kwargs)
        future: Future = Future()
        with self._changed:
            self._now.append((job, future))
            self._changed.notify()
        return future.result()

    def when_idle(self, fn: Callable) -> Future:
        future: Future = Future()
        with self._changed:
            self._idle.append((fn, future))
            self._changed.notify()
        return future

    def drop_idle(self) -> int:
        """Forget the warm-ups not started yet (they hold a model and its inputs); how many there were."""
        with self._changed:
            dropped = list(self._idle)
            self._idle.clear()
        for _, future in dropped:
            future.cancel()
        return len(dropped)

    def _loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._now or self._idle)
                fn, future = (self._now or self._idle).popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: B036 - handed to the caller, the worker goes on
                    future.set_exception(exc)
            del fn, future  # a finished job must not keep a model alive while the worker waits


def _shape_key(args, kwargs) -> Tuple:
    """What a compiled graph is specialised on: every tensor's shape and dtype, and the other arguments."""
    def walk(value):
        if isinstance(value, torch.Tensor):
            return ("T", tuple(value.shape), str(value.dtype))
        if isinstance(value, dict):
            return tuple((k, walk(v)) for k, v in sorted(value.items()))
        if isinstance(value, (list, tuple)):
            return tuple(walk(v) for v in value)
        return value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return walk(args), walk(kwargs)


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


class CompiledModule:
    """Replaces module.forward: eager until the compiled graph for the call's shapes is warm, all on the worker."""

    def __init__(self, module: torch.nn.Module, worker: GpuWorker, mode: Optional[str] = "reduce-overhead",
                 backend="inductor", on_compiled: Optional[Callable[[float], None]] = None):
        self.module, self.worker = module, worker
        self.eager = module.forward
        self.compiled = torch.compile(self.eager, mode=mode, backend=backend, dynamic=False)
        self.on_compiled = on_compiled
        self.ready: Set[Tuple] = set()
        self.failed: Dict[Tuple, str] = {}
        self.pending: Dict[Tuple, Future] = {}
        self._plan: Optional[Dict[Tuple, bool]] = None  # the current pipeline call's choice per shape
        module.forward = self.forward

    @contextmanager
    def denoising(self):
        """One pipeline call: each shape is compiled or eager for all of its steps; new shapes warm up after it."""
        self._plan = {}
        try:
            yield
        finally:
            self._plan = None

    def forward(self, *args, **kwargs):
        return self.worker.run(self._forward, args, kwargs)

    def _forward(self, args, kwargs):
        key = _shape_key(args, kwargs)
        plan = self._plan if self._plan is not None else {}
        if key not in plan:
            plan[key] = key in self.ready
            if not plan[key] and key not in self.failed and key not in self.pending:
                inputs = (_detached(args), _detached(kwargs))
                self.pending[key] = self.worker.when_idle(lambda: self._warm(key, *inputs))
        if plan[key]:
            return self.compiled(*args, **kwargs)
        return self.eager(*args, **kwargs)

    def _warm(self, key, args, kwargs) -> None:
        started = time.monotonic()
        try:
            # the modes of a generation, so that its calls meet the same guards and never recompile
            with torch.inference_mode(), torch.no_grad():
                for _ in range(2):  # the second call records the CUDA graph; requests then only replay it
                    self.compiled(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        except Exception as exc:  # a graph that does not compile: that shape stays eager, nothing else changes
            log.warning("compiling for %s failed, staying eager: %s", key, exc)
            self.failed[key] = str(exc)
            return
        seconds = time.monotonic() - started
        self.ready.add(key)
        log.info("compiled graph ready after %.1f s", seconds)
        if self.on_compiled:
            self.on_compiled(seconds)

    def wait(self, timeout: Optional[float] = None) -> None:
        """Until the warm-ups asked for so far have run (not from the worker itself)."""
        for future in list(self.pending.values()):
            try:
                future.result(timeout)
            except Exception:  # cancelled by a checkpoint switch
                pass

    def restore(self) -> None:
        """The module's own forward back, and no more warm-ups (they hold the module and its inputs)."""
        self.module.forward = self.eager
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()


def cache_key(mode: str) -> str:
    """GPU model, library versions and mode: artifacts from anything else would not load (or be wrong)."""
    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    parts = [gpu, f"torch-{torch.__version__}", f"diffusers-{diffusers.__version__}", f"triton-{triton_version}",
             mode or "default"]
    return "/".join(re.sub(r"[^A-Za-z0-9._+-]+", "_", p) for p in parts)


class ArtifactStore:
    """torch.compiler's cache artifacts as S3 objects under compile-cache/<gpu>/<versions>/<mode>/."""

    def __init__(self, s3, bucket: str, key: str):
        self.s3, self.bucket, self.prefix = s3, bucket, f"{PREFIX}{key}/"
        self.saved: Set[str] = set()

    def load(self) -> int:
        """Everything saved for this GPU and these versions, into torch's caches; the number of objects loaded."""
        loaded = 0
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                data = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                try:
                    torch.compiler.load_cache_artifacts(data)
                    loaded += 1
                    self.saved.add(item["Key"])
                except Exception as exc:  # a stale or foreign file: compile as if it were not there
                    log.warning("ignoring compile cache %s: %s", item["Key"], exc)
        return loaded

    def save(self) -> Optional[str]:
        """This process's artifacts as one object named by its content; None when there is nothing new."""
        result = torch.compiler.save_cache_artifacts()
        if not result:
            return None
        data = result[0]
        key = f"{self.prefix}{hashlib.sha256(data).hexdigest()[:32]}.bin"
        if key not in self.saved:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
            self.saved.add(key)
        return key
