"""Sync's cloud side: which sha256s the cloud holds, per model key, and whether those models are still there.

One paginated LIST of the hash markers (`hashes/<sha256>/<folder>/<name>`) gives every sha256 the cloud holds. A
marker alone is not proof: a model deleted outside this tool (the S3 console) leaves its marker, and skipping a local
file for it would lose the file. So each key a local file would be skipped for is checked before it counts: one HEAD
per such key, or one LIST of the models when that is fewer requests (a second sync of many files). The check also
gives the model's size, and a model of another size than the local file is not that file (replaced outside the tool).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..aws import Aws
from .catalog import HASHES, MODELS, hash_key, head_model, read_record
from .types import ModelType, type_of_key

PAGE = 1000  # keys per LIST page
log = logging.getLogger(__name__)


class CloudIndex:
    """The cloud's models by sha256. A model key with more than one marker was replaced (the old marker stays until a
    lookup removes it): its record says which one is current."""

    def __init__(self, aws: Aws, markers: Sequence[Tuple[str, str]] = ()):
        self.aws = aws
        self.keys_of: Dict[str, List[str]] = {}
        self.shas_of: Dict[str, Set[str]] = {}
        self.sizes: Dict[str, Optional[int]] = {}  # keys checked: the model's size, None when it is gone
        self._confirmed: Dict[Tuple[str, str], bool] = {}
        for sha, key in markers:
            self.add(sha, key)

    @classmethod
    def load(cls, aws: Aws) -> "CloudIndex":
        markers = []
        for obj in aws.objects(HASHES):
            sha, _, rest = obj["Key"][len(HASHES):].partition("/")
            if len(sha) == 64 and rest:
                markers.append((sha, MODELS + rest))
        return cls(aws, markers)

    def add(self, sha: str, key: str) -> None:
        self.keys_of.setdefault(sha, []).append(key)
        self.shas_of.setdefault(key, set()).add(sha)

    def candidates(self, t: ModelType, sha: str) -> List[str]:
        """The keys of this type whose markers say this sha256 (unchecked)."""
        return [k for k in self.keys_of.get(sha, []) if type_of_key(k) == t and "/" not in k[len(t.prefix):]]

    def check(self, keys: Iterable[str]) -> None:
        """Learn whether these models exist, and their sizes, in as few requests as the index allows: one HEAD each,
        or one LIST (of their type's folder when they share one) when that is fewer requests."""
        keys = [k for k in dict.fromkeys(keys) if k not in self.sizes]
        if not keys:
            return
        types = {type_of_key(k) for k in keys}
        prefix = next(iter(types)).prefix if len(types) == 1 and None not in types else MODELS
        known = [k for k in self.shas_of if k.startswith(prefix)]
        if len(keys) <= max(1, -(-len(known) // PAGE)):
            with ThreadPoolExecutor(8) as pool:
                for key, head in zip(keys, pool.map(lambda k: head_model(self.aws, k), keys)):
                    self.sizes[key] = head["ContentLength"] if head else None
            return
        listed = {obj["Key"]: obj["Size"] for obj in self.aws.objects(prefix)}
        for key in known + keys:
            self.sizes[key] = listed.get(key)

    def present(self, key: str, size: Optional[int] = None) -> bool:
        """The model is there (checked first if it was not), of this size if one is given."""
        self.check([key])
        return self.sizes[key] is not None and (size is None or self.sizes[key] == size)

    def current(self, key: str) -> Optional[str]:
        """The sha256 of the model at this key by its one marker; None when unsure, or when it is known to be gone."""
        shas = self.shas_of.get(key, set())
        gone = key in self.sizes and self.sizes[key] is None
        return next(iter(shas)) if len(shas) == 1 and not gone else None

    def find(self, t: ModelType, sha: str, size: Optional[int] = None) -> Optional[str]:
        """The key of a model of this type with this sha256 that is still there (of this size), or None."""
        keys = self.candidates(t, sha)
        self.check(keys)
        for key in sorted(keys, key=lambda k: len(self.shas_of[k]) > 1):  # the unambiguous ones first
            if self.present(key, size) and (len(self.shas_of[key]) == 1 or self._confirm(key, sha)):
                return key
        return None

    def _confirm(self, key: str, sha: str) -> bool:
        if (key, sha) not in self._confirmed:
            record = read_record(self.aws, key)
            self._confirmed[(key, sha)] = bool(record and (record.sha256 or "").lower() == sha)
        return self._confirmed[(key, sha)]

    def stale(self) -> List[str]:
        """The markers of the models checked and found gone."""
        return sorted(hash_key(sha, key) for key, size in self.sizes.items() if size is None
                      for sha in self.shas_of.get(key, ()))

    def remove_stale(self) -> None:
        """Delete the stale markers, so no later lookup by hash (a pasted infotext) finds a model that is gone. Best
        effort: they are never trusted anyway. Before any upload: one may write the same marker again."""
        stale = self.stale()
        for i in range(0, len(stale), PAGE):
            try:
                self.aws.client("s3").delete_objects(Bucket=self.aws.bucket, Delete={
                    "Objects": [{"Key": k} for k in stale[i:i + PAGE]], "Quiet": True})
            except Exception as exc:  # noqa: BLE001 - the sync goes on without it
                log.warning("Amazon SageMaker: could not remove %d stale hash marker(s): %s", len(stale[i:i + PAGE]),
                            exc)
        for key in [k for k, size in self.sizes.items() if size is None]:
            for sha in self.shas_of.pop(key, ()):
                self.keys_of[sha] = [k for k in self.keys_of.get(sha, []) if k != key]
