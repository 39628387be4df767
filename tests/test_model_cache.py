"""The endpoint's model cache: ranged parallel GETs, record checks, LRU bound, one download, restarts."""

from __future__ import annotations

import json
import os
import threading

import pytest

from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.core.errors import NotFound, Refused, TransferError
from aws_extension.core.models.catalog import record_key
from aws_extension.core.models.uploads import upload_paths
from aws_extension.serve.cache import ModelCache

MiB = 1024 * 1024


@pytest.fixture
def s3aws(proxy) -> Aws:
    """S3 through the fault proxy; boto does not retry, so the cache's own retries are what is tested."""
    aws = Aws(Settings.resolve(concurrency=4, max_attempts=1))
    setup(aws)
    return aws


@pytest.fixture
def gets(proxy):
    """The model GETs that reached the proxy (records excluded), as a list of paths."""
    seen = []
    lock = threading.Lock()

    def rule(method, path, query):
        if method == "GET" and "/models/" in path and not path.endswith(".json"):
            with lock:
                seen.append(path)
        return None

    proxy.rules.append(rule)
    return seen


def put_model(aws: Aws, tmp_path, name: str, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    (tmp_path / name).write_bytes(data)
    [result] = upload_paths(aws, "checkpoint", [str(tmp_path / name)])
    assert result.ok, result.error
    return f"s3://{aws.bucket}/{result.key}", data


def cache(aws: Aws, root, max_bytes: int = 100 * MiB) -> ModelCache:
    return ModelCache(aws, root, max_bytes, part_size=1 * MiB, concurrency=4)


def test_ranged_download_is_identical_and_second_fetch_is_a_hit(s3aws, gets, tmp_path):
    uri, data = put_model(s3aws, tmp_path, "a.safetensors", 3 * MiB + 5)
    c = cache(s3aws, tmp_path / "cache")
    path = c.fetch(uri)
    assert path.name == "a.safetensors" and path.read_bytes() == data
    assert len(gets) == 4  # four ranges of at most 1 MiB
    assert c.fetch(uri) == path
    assert len(gets) == 4
    assert c.stats() == {"entries": 1, "bytes": len(data), "max_bytes": 100 * MiB, "hits": 1, "misses": 1}


def test_sha256_mismatch_leaves_nothing(s3aws, tmp_path):
    uri, _ = put_model(s3aws, tmp_path, "bad.safetensors", 2 * MiB)
    key = uri.split("/", 3)[3]
    s3 = s3aws.client("s3")
    record = json.loads(s3.get_object(Bucket=s3aws.bucket, Key=record_key(key))["Body"].read())
    record["sha256"] = "0" * 64
    s3.put_object(Bucket=s3aws.bucket, Key=record_key(key), Body=json.dumps(record).encode())
    root = tmp_path / "cache"
    c = cache(s3aws, root)
    with pytest.raises(TransferError, match="sha256 does not match its record") as err:
        c.fetch(uri)
    assert uri in str(err.value)
    assert [p.name for p in root.iterdir() if p.name != "index.json"] == []
    assert c.stats()["entries"] == 0


def test_least_recently_used_is_evicted_but_not_a_pinned_one(s3aws, tmp_path):
    a, _ = put_model(s3aws, tmp_path, "a.safetensors", MiB)
    b, _ = put_model(s3aws, tmp_path, "b.safetensors", MiB)
    d, _ = put_model(s3aws, tmp_path, "c.safetensors", MiB)
    c = cache(s3aws, tmp_path / "cache", max_bytes=2 * MiB)
    pa, pb = c.fetch(a), c.fetch(b)
    c.fetch(a)  # A used again: B is now the least recent
    pc = c.fetch(d)
    assert pa.exists() and pc.exists() and not pb.exists() and not pb.parent.exists()
    assert c.stats()["entries"] == 2 and c.stats()["bytes"] == 2 * MiB
    # A is the least recent now, but in use: C goes instead when B comes back
    with c.using(a) as held:
        c.fetch(d)
        c.fetch(b)
        assert held.exists() and not pc.exists()
    assert c.stats()["bytes"] == 2 * MiB


def test_model_larger_than_the_cache_is_still_fetched(s3aws, tmp_path, caplog):
    uri, data = put_model(s3aws, tmp_path, "big.safetensors", 2 * MiB)
    c = cache(s3aws, tmp_path / "cache", max_bytes=MiB)
    assert c.fetch(uri).read_bytes() == data
    assert "too small" in caplog.text


def test_reupload_missing_and_foreign_uris(s3aws, gets, tmp_path):
    uri, _ = put_model(s3aws, tmp_path, "m.safetensors", MiB)
    c = cache(s3aws, tmp_path / "cache")
    first = c.fetch(uri)
    _, new = put_model(s3aws, tmp_path, "m.safetensors", MiB)  # new bytes, new ETag
    second = c.fetch(uri)
    assert second != first and second.read_bytes() == new and len(gets) == 2
    missing = f"s3://{s3aws.bucket}/models/Stable-diffusion/none.safetensors"
    with pytest.raises(NotFound, match=missing):
        c.fetch(missing)
    for bad in ("https://example.com/m.safetensors", "s3://bucket-only", "/tmp/m.safetensors"):
        with pytest.raises(Refused, match="s3://bucket/key"):
            c.fetch(bad)


def test_two_threads_download_once(s3aws, gets, tmp_path):
    uri, data = put_model(s3aws, tmp_path, "t.safetensors", 2 * MiB)
    c = cache(s3aws, tmp_path / "cache")
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(c.fetch(uri))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].read_bytes() == data
    assert len(gets) == 2  # two ranges, once
    assert c.stats()["hits"] == 1 and c.stats()["misses"] == 1


def test_restart_finds_entries_and_removes_leftovers(s3aws, gets, tmp_path):
    uri, data = put_model(s3aws, tmp_path, "r.safetensors", MiB)
    root = tmp_path / "cache"
    path = cache(s3aws, root).fetch(uri)
    (root / ".tmp-crashed-download").write_bytes(b"half")
    (root / ("f" * 32)).mkdir()  # an entry folder the index never got
    before = len(gets)
    again = cache(s3aws, root)
    assert again.stats()["entries"] == 1
    assert again.fetch(uri) == path and path.read_bytes() == data and len(gets) == before
    assert sorted(p.name for p in root.iterdir()) == sorted(["index.json", path.parent.name])


def test_failed_range_is_retried(s3aws, proxy, tmp_path):
    uri, data = put_model(s3aws, tmp_path, "f.safetensors", 3 * MiB)
    failures = []

    def fail_first_get(method, path, query):
        if method == "GET" and path.endswith("/f.safetensors") and not failures:
            failures.append(path)
            return 500
        return None

    proxy.rules.append(fail_first_get)
    c = cache(s3aws, tmp_path / "cache")
    assert c.fetch(uri).read_bytes() == data and failures


def test_range_failing_every_time_leaves_nothing(s3aws, proxy, tmp_path):
    uri, _ = put_model(s3aws, tmp_path, "g.safetensors", 2 * MiB)
    proxy.rules.append(lambda method, path, query: 503 if method == "GET" and path.endswith("/g.safetensors") else None)
    root = tmp_path / "cache"
    with pytest.raises(TransferError, match=uri):
        cache(s3aws, root).fetch(uri)
    assert [p.name for p in root.iterdir() if p.name != "index.json"] == []
