"""torch.compile for the UNet without ever making a request wait for it, and compiled code kept in S3.

The first call with a new input shape starts compiling in a background thread with a copy of that call's
inputs and is answered eagerly; once the graph for the shape is ready, calls of that shape use it. Compiler
artifacts (torch.compiler's portable cache: Inductor code, autotuning results) are saved to S3 keyed by GPU,
library versions and compile mode, and loaded when an instance starts, so an endpoint scaling out from zero
does not pay the compile again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from typing import Callable, Dict, Optional, Set, Tuple

import torch

log = logging.getLogger(__name__)

PREFIX = "compile-cache/"


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
    """Replaces module.forward: eager until the compiled graph for the call's shapes is warm."""

    def __init__(self, module: torch.nn.Module, mode: Optional[str] = "reduce-overhead", backend: str = "inductor",
                 on_compiled: Optional[Callable[[float], None]] = None):
        self.module = module
        self.eager = module.forward
        self.compiled = torch.compile(self.eager, mode=mode, backend=backend, dynamic=False)
        self.on_compiled = on_compiled
        self.ready: Set[Tuple] = set()
        self.started: Set[Tuple] = set()
        self.failed: Dict[Tuple, str] = {}
        self.lock = threading.Lock()
        self.threads = []
        module.forward = self.forward

    def forward(self, *args, **kwargs):
        key = _shape_key(args, kwargs)
        if key in self.ready:
            return self.compiled(*args, **kwargs)
        with self.lock:
            start = key not in self.started
            self.started.add(key)
        if start:
            thread = threading.Thread(target=self._warm, args=(key, _detached(args), _detached(kwargs)),
                                      name="compile", daemon=True)
            self.threads.append(thread)
            thread.start()
        return self.eager(*args, **kwargs)

    def _warm(self, key, args, kwargs) -> None:
        started = time.monotonic()
        try:
            with torch.inference_mode():
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
        for thread in list(self.threads):
            thread.join(timeout)

    def restore(self) -> None:
        self.module.forward = self.eager


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
