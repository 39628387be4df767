"""Remembered sha256 of local model files, so that a second sync over hundreds of GB reads nothing again.

Two kinds, tried in turn (`Layered`):
- `JsonHashCache`, our own: a JSON file keyed by the file's absolute path, with its size and mtime; written atomically
  (a temporary file beside it, then a rename) and merged with what another process wrote meanwhile.
- `TitleCache`, the WebUI's own: the "hashes" section of its `cache.json` (data dir), keyed by the title the WebUI
  gives a file ("checkpoint/<path in the checkpoint folder>", "textual_inversion/<stem>", ...) with
  {"mtime": <os.path.getmtime>, "sha256": <hex>}. Inside the WebUI the live section (modules.cache) is read and
  written, so the WebUI gains the hashes we compute; outside, a WebUI root's cache.json is only read (a running WebUI
  keeps it in memory and would overwrite our writes).

An entry counts only when the file's mtime (and, in ours, size) equals the recorded one: a stricter rule than the
WebUI's (mtime not newer), which can cost a re-hash but never a wrong hash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, List, MutableMapping, Optional, Sequence

from .types import ModelType

CACHE_ENV = "SD_SAGEMAKER_HASH_CACHE"  # default ~/.cache/sd-webui-sagemaker/hashes.json
log = logging.getLogger(__name__)


def default_cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sd-webui-sagemaker" / "hashes.json")


def webui_title(t: ModelType, relative: str) -> Optional[str]:
    """The key the WebUI (A1111 1.x) files a model's full-file sha256 under, from its path inside its type's folder;
    None where the WebUI keeps none (VAE, ControlNet; LoRA .safetensors, which it hashes the kohya way)."""
    stem = os.path.splitext(os.path.basename(relative))[0]
    if t.id == "checkpoint":
        return "checkpoint/" + relative
    if t.id == "embedding":
        return "textual_inversion/" + stem
    if t.id == "hypernetwork":
        return "hypernet/" + stem
    if t.id == "lora" and not relative.lower().endswith(".safetensors"):
        return "lora/" + stem
    return None


class HashCache:
    """lookup/store one file's sha256; save() makes what was stored durable."""

    def lookup(self, path: str, title: Optional[str], stat: os.stat_result) -> Optional[str]:
        raise NotImplementedError

    def store(self, path: str, title: Optional[str], stat: os.stat_result, sha256: str) -> None:
        raise NotImplementedError

    def save(self) -> None:
        pass


class JsonHashCache(HashCache):
    def __init__(self, file: Optional[Path] = None):
        self.file = Path(file) if file else default_cache_file()
        self._entries: Optional[dict] = None
        self._dirty: dict = {}
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            files = data.get("files") if isinstance(data, dict) else None
            return files if isinstance(files, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable or hand-broken: hash again rather than fail the sync
            log.warning("Amazon SageMaker: ignoring the hash cache %s: %s", self.file, exc)
            return {}

    def lookup(self, path, title, stat):
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            entry = self._entries.get(path)
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            sha = entry.get("sha256")
            return sha if isinstance(sha, str) and len(sha) == 64 else None
        return None

    def store(self, path, title, stat, sha256):
        entry = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": sha256}
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            self._entries[path] = self._dirty[path] = entry

    def save(self) -> None:
        """Ours merged into the file as it is now (another sync may have written it), then renamed into place."""
        with self._lock:
            if not self._dirty:
                return
            merged = {**self._read(), **self._dirty}
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=self.file.name + ".", suffix=".tmp", dir=self.file.parent)
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump({"version": 1, "files": merged}, f, indent=1, sort_keys=True)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.file)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except OSError as exc:  # the sync itself is done; only the next one will hash again
                log.warning("Amazon SageMaker: could not write the hash cache %s: %s", self.file, exc)
                return
            self._entries = merged
            self._dirty.clear()


class TitleCache(HashCache):
    """The WebUI's "hashes" section: `section` is its live dict (with `save` its dump and `lock` its lock), or one read
    from a cache.json file (read-only: save is None)."""

    def __init__(self, section: MutableMapping, save: Optional[Callable[[], None]] = None, lock=None):
        self.section = section
        self._save = save
        self._lock = lock or nullcontext()
        self._changed = False

    @classmethod
    def from_file(cls, file: Path) -> Optional["TitleCache"]:
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        section = data.get("hashes") if isinstance(data, dict) else None
        return cls(section) if isinstance(section, dict) else None

    def lookup(self, path, title, stat):
        if not title:
            return None
        with self._lock:
            entry = self.section.get(title)
        if isinstance(entry, dict) and entry.get("mtime") == stat.st_mtime:
            sha = entry.get("sha256")
            return sha if isinstance(sha, str) and len(sha) == 64 else None
        return None

    def store(self, path, title, stat, sha256):
        if not title or self._save is None:
            return
        with self._lock:
            self.section[title] = {"mtime": stat.st_mtime, "sha256": sha256}
        self._changed = True

    def save(self) -> None:
        if self._changed and self._save is not None:
            self._changed = False
            self._save()


class Layered(HashCache):
    """The first cache that knows the file answers; a new hash goes into all of them."""

    def __init__(self, caches: Sequence[HashCache]):
        self.caches: List[HashCache] = list(caches)

    def lookup(self, path, title, stat):
        return next((sha for sha in (c.lookup(path, title, stat) for c in self.caches) if sha), None)

    def store(self, path, title, stat, sha256):
        for c in self.caches:
            c.store(path, title, stat, sha256)

    def save(self) -> None:
        for c in self.caches:
            c.save()
