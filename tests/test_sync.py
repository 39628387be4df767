"""Sync: every local model file the cloud lacks goes up, the rest is skipped by sha256 without a byte sent or a file
read again; name clashes refused; an interrupted sync resumes; dry runs; the CLI as typed; the WebUI's own cache."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.core.models import localmodels
from aws_extension.core.models.hashcache import JsonHashCache, TitleCache, webui_title
from aws_extension.core.models.localmodels import folders_from_dirs, standalone_cache
from aws_extension.core.models.sync import summary, sync_models
from aws_extension.core.models.transfer import MiB
from aws_extension.core.models.types import model_type
from aws_extension.core.models.uploads import upload_paths
from faultproxy import fail_part
from test_cli import cli
from test_webui_glue import started as webui_started, webui  # noqa: F401 - the stand-in WebUI's fixtures

WRITES = ("PUT", "POST", "DELETE")


@pytest.fixture(autouse=True)
def hash_cache_file(tmp_path, monkeypatch):
    """Our hash cache in the test's folder, never the user's ~/.cache."""
    path = tmp_path / "hash-cache.json"
    monkeypatch.setenv("SD_SAGEMAKER_HASH_CACHE", str(path))
    return path


@pytest.fixture
def hashed(monkeypatch):
    """The files whose bytes sync read to compute a sha256, in order."""
    seen = []
    real = localmodels.hash_file

    def counting(path, moved, cancel):
        seen.append(os.path.basename(path))
        return real(path, moved, cancel)

    monkeypatch.setattr(localmodels, "hash_file", counting)
    return seen


@pytest.fixture
def s3aws(proxy) -> Aws:
    aws = Aws(Settings.resolve(concurrency=3, max_attempts=2))
    setup(aws)
    return aws


def put(path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def webui_tree(root):
    """A WebUI folder: models in subfolders, a VAE beside the checkpoints, things that are not models."""
    return {
        "base.safetensors": put(root / "models/Stable-diffusion/base.safetensors", b"checkpoint" * 1000),
        "base.vae.pt": put(root / "models/Stable-diffusion/base.vae.pt", b"vae" * 500),
        "a.safetensors": put(root / "models/Lora/a.safetensors", b"lora a" * 300),
        "b.safetensors": put(root / "models/Lora/styles/b.safetensors", b"lora b" * 300),
        "e.pt": put(root / "embeddings/e.pt", b"embedding" * 50),
        "notes": put(root / "models/Lora/notes.txt", b"not a model"),
        "empty": put(root / "models/Lora/empty.safetensors", b""),
    }


def keys(aws, prefix: str) -> list:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def run(aws, *dirs, **kwargs):
    folders, failures = folders_from_dirs([str(d) for d in dirs], kwargs.pop("types", ()))
    return failures + sync_models(aws, folders, cache=standalone_cache([str(d) for d in dirs]), **kwargs)


def by_name(items) -> dict:
    return {i.name: i for i in items}


def writes(proxy) -> list:
    return [r for r in proxy.requests if r[0] in WRITES]


def test_sync_uploads_what_the_cloud_lacks_then_sends_and_reads_nothing(s3aws, proxy, tmp_path, hashed,
                                                                       hash_cache_file):
    root = tmp_path / "webui"
    sums = webui_tree(root)
    [before] = upload_paths(s3aws, "lora", [str(root / "models/Lora/a.safetensors")])
    assert before.status == "uploaded"
    seen = []
    items = by_name(run(s3aws, root, progress=seen.append))
    assert set(items) == {"base.safetensors", "base.vae.pt", "a.safetensors", "b.safetensors", "e.pt"}
    assert items["a.safetensors"].status == "skipped"
    assert {n: i.status for n, i in items.items() if n != "a.safetensors"} == dict.fromkeys(
        ["base.safetensors", "base.vae.pt", "b.safetensors", "e.pt"], "uploaded")
    assert all(i.sha256 == sums[n] for n, i in items.items())
    assert keys(s3aws, "models/") == ["models/Lora/a.safetensors", "models/Lora/b.safetensors",
                                      "models/Stable-diffusion/base.safetensors", "models/VAE/base.vae.pt",
                                      "models/embeddings/e.pt"]  # flat names; the VAE beside the checkpoint is a VAE
    assert sorted(hashed) == sorted(items)
    phases = [p.phase for p in seen]
    assert phases[0] == "listing" and "hashing" in phases and phases[-1] == "uploading"
    last = seen[-1]
    assert (last.files_done, last.files_total) == (4, 4) and last.bytes_done == last.bytes_total > 0
    cached = json.loads(hash_cache_file.read_text())["files"]
    assert {v["sha256"] for v in cached.values()} == {sums[n] for n in items}
    assert summary(list(items.values()), False) == "Uploaded 4 files (13.8 KB); 1 already in the cloud (1.8 KB)."

    # the second sync: one LIST of the markers and one of the models (still there?), no file read, no write, the
    # cache file untouched
    proxy.requests.clear()
    hashed.clear()
    stamp = hash_cache_file.stat().st_mtime_ns
    again = run(s3aws, root)
    assert [i.status for i in again] == ["skipped"] * 5
    assert hashed == []
    assert [(m, q.get("prefix")) for m, _, q in proxy.requests] == [("GET", "hashes/"), ("GET", "models/")]
    assert hash_cache_file.stat().st_mtime_ns == stamp


def test_the_same_contents_under_another_name_is_not_sent_again(s3aws, proxy, tmp_path):
    lora = tmp_path / "Lora"
    put(lora / "x.safetensors", b"same" * 1000)
    assert [r.status for r in upload_paths(s3aws, "lora", [str(lora / "x.safetensors")])] == ["uploaded"]
    (lora / "x.safetensors").rename(lora / "renamed.safetensors")
    put(lora / "copy" / "again.safetensors", b"same" * 1000)
    put(tmp_path / "VAE" / "x.safetensors", b"same" * 1000)  # another type: the endpoint looks under VAE/
    proxy.requests.clear()
    items = by_name(run(s3aws, lora, tmp_path / "VAE"))
    assert items["renamed.safetensors"].status == items["again.safetensors"].status == "skipped"
    assert items["renamed.safetensors"].note == "already in the cloud as models/Lora/x.safetensors"
    assert items["x.safetensors"].status == "uploaded" and items["x.safetensors"].key == "models/VAE/x.safetensors"
    assert writes(proxy) and all("/models/VAE/" in p or "/records/VAE/" in p or "/hashes/" in p for _, p, _ in writes(proxy))


def test_two_files_one_cloud_name_are_refused_naming_both(s3aws, tmp_path):
    lora = tmp_path / "Lora"
    put(lora / "x.safetensors", b"one" * 100)
    put(lora / "styles" / "x.safetensors", b"two" * 100)
    put(lora / "twin" / "y.safetensors", b"twin" * 100)
    put(lora / "y.safetensors", b"twin" * 100)  # the same file twice: one upload, the other skipped
    items = run(s3aws, lora)
    failed = [i for i in items if i.status == "failed"]
    assert sorted(i.item for i in failed) == [str(lora / "styles" / "x.safetensors"), str(lora / "x.safetensors")]
    for i in failed:
        other = ({str(lora / "x.safetensors"), str(lora / "styles" / "x.safetensors")} - {i.item}).pop()
        assert other in i.reason and "models/Lora/x.safetensors" in i.reason and "rename one" in i.reason
    ys = sorted((i.status, i.item) for i in items if i.name == "y.safetensors")
    assert [s for s, _ in ys] == ["skipped", "uploaded"]
    assert keys(s3aws, "models/") == ["models/Lora/y.safetensors"]

    # once one of them is in the cloud, only the other is refused: it would replace it
    [r] = upload_paths(s3aws, "lora", [str(lora / "x.safetensors")])
    statuses = {i.item: i.status for i in run(s3aws, lora)}
    assert statuses[str(lora / "x.safetensors")] == "skipped"
    assert statuses[str(lora / "styles" / "x.safetensors")] == "failed"


def test_dry_run_lists_and_uploads_nothing(s3aws, proxy, tmp_path, hashed):
    root = tmp_path / "webui"
    webui_tree(root)
    upload_paths(s3aws, "embedding", [str(root / "embeddings/e.pt")])
    put(root / "models/Lora/a.safetensors", b"changed a" * 300)
    upload_paths(s3aws, "lora", [str(tmp_path / "webui/models/Lora/a.safetensors")])
    put(root / "models/Lora/a.safetensors", b"lora a" * 300)  # the cloud holds another a.safetensors
    proxy.requests.clear()
    items = by_name(run(s3aws, root, dry_run=True))
    assert {n: i.status for n, i in items.items()} == {
        "base.safetensors": "to-upload", "base.vae.pt": "to-upload", "a.safetensors": "to-upload",
        "b.safetensors": "to-upload", "e.pt": "skipped"}
    assert items["a.safetensors"].note == "replaces the cloud's other file of this name"
    assert writes(proxy) == []
    assert summary(list(items.values()), True) == "Would upload 4 files (15.1 KB); 1 already in the cloud (450 bytes)."
    # what it hashed is kept: the real sync reads nothing again
    hashed.clear()
    assert sorted(i.status for i in run(s3aws, root)) == ["skipped"] + ["uploaded"] * 4
    assert hashed == []


def test_an_interrupted_sync_resumes_sending_only_what_is_missing(s3aws, proxy, tmp_path):
    lora = tmp_path / "Lora"
    big = os.urandom(2 * 8 * MiB + 4321)
    put(lora / "big.safetensors", big)
    put(lora / "small.safetensors", b"small" * 100)
    proxy.rules = [fail_part({3}, "cut")]  # the network goes down for good during the big file
    first = by_name(run(s3aws, lora))
    assert first["big.safetensors"].status == "interrupted" and first["small.safetensors"].status == "uploaded"
    assert "run it again to resume" in first["big.safetensors"].error

    proxy.rules = []
    proxy.requests.clear()
    second = by_name(run(s3aws, lora))
    assert second["small.safetensors"].status == "skipped"
    assert second["big.safetensors"].status == "resumed" and second["big.safetensors"].parts_reused == 2
    assert not [p for _, p, _ in writes(proxy) if "small" in p]
    body = s3aws.client("s3").get_object(Bucket=s3aws.bucket, Key="models/Lora/big.safetensors")["Body"].read()
    assert body == big

    # stopped (Ctrl-C, the tab's stop) after the first upload: the rest is not started, and goes next time
    for n in range(3):
        put(lora / f"more-{n}.safetensors", f"more {n}".encode() * 100)
    cancel = threading.Event()
    stopped = by_name(run(s3aws, lora, cancel=cancel,
                          progress=lambda p: p.phase == "uploading" and p.files_done == 1 and cancel.set()))
    assert sorted(i.status for n, i in stopped.items() if n.startswith("more")) == ["interrupted", "interrupted",
                                                                                   "uploaded"]
    assert all("not started (stopped)" in i.error for i in stopped.values() if i.status == "interrupted")
    assert sorted(i.status for i in run(s3aws, lora)) == ["skipped"] * 3 + ["uploaded"] * 2


def test_a_replaced_models_old_marker_is_not_taken_for_it(s3aws, tmp_path):
    lora = tmp_path / "Lora"
    put(lora / "x.safetensors", b"old" * 100)
    upload_paths(s3aws, "lora", [str(lora / "x.safetensors")])
    put(tmp_path / "new" / "x.safetensors", b"new" * 100)
    upload_paths(s3aws, "lora", [str(tmp_path / "new" / "x.safetensors")])  # replaces it: two markers for one key
    [item] = run(s3aws, lora, dry_run=True)
    assert item.status == "to-upload"  # its record says the cloud's x.safetensors is the new one


def test_folders_a_webui_root_a_models_folder_a_type_folder_or_a_type_named(tmp_path):
    root = tmp_path / "webui"
    webui_tree(root)
    put(tmp_path / "flat" / "m.safetensors", b"m")
    put(tmp_path / "mine" / "lora" / "l.pt", b"l")  # case-insensitive folder names
    put(tmp_path / "checkpoints" / "VAE" / "c.ckpt", b"c")  # named for its type, whatever its subfolders
    folders, failures = folders_from_dirs([str(root), str(root / "models"), str(root / "models/Lora"),
                                           str(tmp_path / "mine"), str(tmp_path / "checkpoints"),
                                           str(tmp_path / "flat"), str(tmp_path / "nope")])
    got = [(f.type.id if f.type else "by header", str(f.path.relative_to(tmp_path))) for f in folders]
    assert got == [("checkpoint", "webui/models/Stable-diffusion"), ("embedding", "webui/embeddings"),
                   ("lora", "webui/models/Lora"), ("checkpoint", "webui/models/Stable-diffusion"),
                   ("lora", "webui/models/Lora"), ("lora", "webui/models/Lora"), ("lora", "mine/lora"),
                   ("checkpoint", "checkpoints"), ("by header", "flat")]
    assert [f.item for f in failures] == [str(tmp_path / "nope")] and "no such folder" in failures[0].error
    folders, failures = folders_from_dirs([str(tmp_path / "flat"), str(root)], ["vae"])
    assert [(f.type.id, f.path.name) for f in folders] == [("vae", "flat")] and not failures
    folders, _ = folders_from_dirs([str(root)], ["lora", "embedding"])
    assert [f.type.id for f in folders] == ["embedding", "lora"]
    # each file once, however often its folder is named
    found, _ = localmodels.scan(folders_from_dirs([str(root), str(root / "models")])[0])
    assert sorted(m.name for m in found) == ["a.safetensors", "b.safetensors", "base.safetensors", "base.vae.pt",
                                             "e.pt"]


def test_a_webui_roots_cache_json_spares_reading_and_is_left_as_it_is(aws, tmp_path, hashed):
    root = tmp_path / "webui"
    sums = webui_tree(root)
    put(root / "models/Stable-diffusion/sub/deep.ckpt", b"deep" * 100)
    ckpt = root / "models/Stable-diffusion"
    entries = {  # as the WebUI 1.x writes them: title, mtime (os.path.getmtime), sha256
        "checkpoint/base.safetensors": {"mtime": os.path.getmtime(ckpt / "base.safetensors"),
                                        "sha256": sums["base.safetensors"]},
        f"checkpoint/sub{os.sep}deep.ckpt": {"mtime": os.path.getmtime(ckpt / "sub/deep.ckpt"),
                                             "sha256": hashlib.sha256(b"deep" * 100).hexdigest()},
        "textual_inversion/e": {"mtime": os.path.getmtime(root / "embeddings/e.pt") - 10, "sha256": "0" * 64},  # stale
    }
    (root / "cache.json").write_text(json.dumps({"hashes": entries, "safetensors-metadata": {}}))
    before = (root / "cache.json").read_bytes()
    items = by_name(run(aws, root))
    assert sorted(hashed) == ["a.safetensors", "b.safetensors", "base.vae.pt", "e.pt"]
    assert items["e.pt"].sha256 == sums["e.pt"] and items["deep.ckpt"].status == "uploaded"
    assert (root / "cache.json").read_bytes() == before  # a running WebUI owns that file


def test_webui_titles():
    assert webui_title(model_type("checkpoint"), f"sub{os.sep}m.safetensors") == f"checkpoint/sub{os.sep}m.safetensors"
    assert webui_title(model_type("embedding"), "sub/e.pt") == "textual_inversion/e"
    assert webui_title(model_type("hypernetwork"), "h.pt") == "hypernet/h"
    assert webui_title(model_type("lora"), "l.pt") == "lora/l"
    assert webui_title(model_type("lora"), "l.safetensors") is None  # the WebUI keeps kohya's hash for those
    assert webui_title(model_type("vae"), "v.pt") is None


def test_our_cache_is_written_whole_and_merged_with_another_writer(tmp_path):
    file = tmp_path / "c" / "hashes.json"
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    one, two = JsonHashCache(file), JsonHashCache(file)
    one.store(str(a), None, a.stat(), "a" * 64)
    two.store(str(b), None, b.stat(), "b" * 64)
    one.save()
    two.save()
    assert sorted(json.loads(file.read_text())["files"]) == [str(a), str(b)]
    assert [p.name for p in file.parent.iterdir()] == ["hashes.json"]  # no temporary file left
    fresh = JsonHashCache(file)
    assert fresh.lookup(str(a), None, a.stat()) == "a" * 64
    os.utime(a, (1, 1))
    assert fresh.lookup(str(a), None, a.stat()) is None  # touched: read again
    file.write_text("{not json")
    assert JsonHashCache(file).lookup(str(b), None, b.stat()) is None  # broken: hash again, never fail


def test_cli_sync_as_typed(aws_env, tmp_path):
    env = {**aws_env, "SD_SAGEMAKER_HASH_CACHE": str(tmp_path / "hashes.json")}
    cli(env, "setup", check_rc=0)
    root = tmp_path / "webui"
    webui_tree(root)
    dry = cli(env, "models", "sync", "--models-dir", str(root), "--dry-run", check_rc=0)
    assert f"to upload: {root / 'models/Lora/styles/b.safetensors'} -> s3://" in dry.stdout
    assert dry.stdout.strip().endswith("Would upload 5 files (15.6 KB); 0 already in the cloud (0 bytes).")
    assert json.loads(cli(env, "--json", "models", "list", check_rc=0).stdout) == []

    only = json.loads(cli(env, "--json", "models", "sync", "--models-dir", str(root), "--type", "lora",
                          check_rc=0).stdout)
    assert sorted((i["name"], i["status"]) for i in only) == [("a.safetensors", "uploaded"),
                                                              ("b.safetensors", "uploaded")]
    out = cli(env, "models", "sync", "--models-dir", str(root), check_rc=0).stdout
    assert out.count("uploaded: ") == 3 and "Uploaded 3 files" in out and "2 already in the cloud" in out
    stamp = (tmp_path / "hashes.json").stat().st_mtime_ns
    again = cli(env, "models", "sync", "--models-dir", str(root), check_rc=0)
    assert again.stdout.strip() == "Uploaded 0 files (0 bytes); 5 already in the cloud (15.6 KB)."
    assert (tmp_path / "hashes.json").stat().st_mtime_ns == stamp

    put(tmp_path / "flat" / "m.safetensors", b"m")  # a folder of no WebUI layout: the header must say the type
    bad = cli(env, "models", "sync", "--models-dir", str(tmp_path / "flat"), check_rc=1)
    assert bad.stderr.startswith(f"error: {tmp_path / 'flat' / 'm.safetensors'}: it is too short to be a .safetensors "
                                 "file, so its type is unknown; not uploaded: pass its type with --type")
    assert "Uploaded 0 files (0 bytes); 0 already in the cloud (0 bytes); 1 not uploaded" in bad.stdout


def test_in_the_webui_sync_walks_its_folders_and_shares_its_hash_cache(request, aws, tmp_path, hashed):
    started = request.getfixturevalue("webui_started")
    from modules import cache as webui_cache

    models, data = started.models, started.data
    ckpt = tmp_path / "ckpt"
    sums = {"m.safetensors": put(ckpt / "sub" / "m.safetensors", b"m" * 100),
            "v.pt": put(models / "VAE" / "v.pt", b"v" * 100),
            "e.pt": put(data / "embeddings" / "e.pt", b"e" * 100)}
    started.shared.cmd_opts = started.parser.parse_args(["--ckpt-dir", str(ckpt)])
    assert started.ctx.sync_folders() == [("checkpoint", str(ckpt)), ("vae", str(models / "VAE")),
                                          ("embedding", str(data / "embeddings"))]
    from aws_extension.ui.sync import result_text, sync_plan

    folders, failures, cache = sync_plan(started.ctx)
    items = sync_models(aws, folders, cache=cache)
    assert sorted(i.status for i in items) == ["uploaded"] * 3 and not failures
    assert "Uploaded 3 files" in result_text(items, False, aws)
    section = webui_cache.cache("hashes")  # what the WebUI shows as model hashes now, without hashing
    assert section[f"checkpoint/sub{os.sep}m.safetensors"]["sha256"] == sums["m.safetensors"]
    assert section["textual_inversion/e"]["sha256"] == sums["e.pt"]
    assert webui_cache.dumps >= 1 and json.loads((data / "cache.json").read_text())["hashes"] == section

    hashed.clear()
    section.clear()  # only the WebUI's cache knows these files now: nothing is read again
    (tmp_path / "hash-cache.json").unlink()
    section.update({f"checkpoint/sub{os.sep}m.safetensors": {"mtime": os.path.getmtime(ckpt / "sub/m.safetensors"),
                                                             "sha256": sums["m.safetensors"]}})
    folders, _, cache = sync_plan(started.ctx)
    assert isinstance(cache.caches[1], TitleCache)
    assert sorted(i.status for i in sync_models(aws, folders, cache=cache)) == ["skipped"] * 3
    assert sorted(hashed) == ["e.pt", "v.pt"]


def test_sync_all_in_the_tab(tab, aws, tmp_path):
    """Chromium: the Sync all button of "from WebUI" on the standalone tab (its model folder: tmp_path/models)."""
    from test_ui_tab import wait_idle, wait_value

    models = tmp_path / "models"
    put(models / "Lora" / "styles" / "x.safetensors", b"x" * 3000)
    put(models / "Stable-diffusion" / "y.safetensors", b"y" * 5000)
    tab.locator("#sagemaker-sync-dry-run input").check()
    tab.click("#sagemaker-sync-all")
    text = wait_value(tab, "sagemaker-sync-result", "Would upload 2 files (8.0 KB)")
    assert f"to upload: {models / 'Lora/styles/x.safetensors'} -> s3://{aws.bucket}/models/Lora/x.safetensors" in text
    assert keys(aws, "models/") == []
    wait_idle(tab)
    tab.locator("#sagemaker-sync-dry-run input").uncheck()
    tab.click("#sagemaker-sync-all")
    wait_value(tab, "sagemaker-sync-result", "Uploaded 2 files (8.0 KB); 0 already in the cloud")
    assert keys(aws, "models/") == ["models/Lora/x.safetensors", "models/Stable-diffusion/y.safetensors"]
    wait_idle(tab)
    tab.click("#sagemaker-sync-all")
    assert wait_value(tab, "sagemaker-sync-result", "Uploaded 0 files").endswith("2 already in the cloud (8.0 KB).")
    wait_idle(tab)


def test_a_file_in_the_wrong_folder_is_refused_and_the_rest_keep_what_they_are(s3aws, tmp_path):
    from aws_extension.core.models.catalog import read_record
    from model_headers import write_safetensors

    root = tmp_path / "webui"
    (root / "models/Stable-diffusion").mkdir(parents=True)
    (root / "models/Lora").mkdir(parents=True)
    write_safetensors(root / "models/Stable-diffusion/style.safetensors", "sdxl-lora")
    write_safetensors(root / "models/Lora/detail.safetensors", "sd1-lora")
    [dry] = [i for i in run(s3aws, root, dry_run=True) if i.name == "style.safetensors"]
    assert dry.status == "failed" and "this file is a LoRA for SDXL" in dry.error  # a dry run says so too
    items = by_name(run(s3aws, root))
    wrong = items["style.safetensors"]
    assert wrong.status == "failed"
    assert "this file is a LoRA for SDXL, not an SD Checkpoint, though it is in the SD Checkpoint folder" in wrong.error
    assert keys(s3aws, "models/") == ["models/Lora/detail.safetensors"]  # nothing of the misplaced file
    record = read_record(s3aws, "models/Lora/detail.safetensors")
    assert (record.kind, record.base) == ("lora", "sd1")  # what its header said, kept as uploads keep it


def test_a_folder_of_mixed_files_goes_up_by_what_each_header_says(s3aws, proxy, tmp_path):
    """A Downloads folder (no WebUI layout, no --type): each file goes to its type's folder by its header; a file
    whose header says nothing is named, with what to do, and not sent."""
    from aws_extension.core.models.catalog import read_record
    from model_headers import webui_embedding, write_safetensors, write_torch

    flat = tmp_path / "Downloads"
    (flat / "new").mkdir(parents=True)
    write_safetensors(flat / "base.safetensors", "sdxl-checkpoint")
    write_safetensors(flat / "detail.safetensors", "sd1-lora")
    write_safetensors(flat / "new" / "ae.safetensors", "vae")
    write_torch(flat / "emb.pt", webui_embedding())
    write_safetensors(flat / "mystery.safetensors", {"foo.weight": (4, 4)})
    put(flat / "broken.ckpt", b"not a model" * 10)
    unknown = {str(flat / "mystery.safetensors"): "its header does not say which kind of model it is",
               str(flat / "broken.ckpt"): "it is not a PyTorch file"}

    def check_unknown(items):
        bad = {i.item: i.error for i in items if not i.ok}
        assert sorted(bad) == sorted(unknown)
        for item, error in bad.items():
            assert error.startswith(f"{item}: {unknown[item]}") and "pass its type with --type" in error

    proxy.requests.clear()
    dry = run(s3aws, flat, dry_run=True)
    check_unknown(dry)
    planned = {i.name: (i.status, i.key, i.note) for i in dry if i.ok}
    assert planned == {
        "base.safetensors": ("to-upload", "models/Stable-diffusion/base.safetensors", "an SDXL checkpoint, by its header"),
        "detail.safetensors": ("to-upload", "models/Lora/detail.safetensors", "a LoRA for SD 1.x, by its header"),
        "ae.safetensors": ("to-upload", "models/VAE/ae.safetensors", "a VAE, by its header"),
        "emb.pt": ("to-upload", "models/embeddings/emb.pt", "a textual inversion for SD 1.x, by its header")}
    assert writes(proxy) == []
    assert summary(dry, True).startswith("Would upload 4 files") and summary(dry, True).endswith("2 not uploaded "
                                                                                                 "(see above).")

    items = run(s3aws, flat)
    check_unknown(items)
    assert sorted(i.status for i in items if i.ok) == ["uploaded"] * 4
    assert keys(s3aws, "models/") == ["models/Lora/detail.safetensors", "models/Stable-diffusion/base.safetensors",
                                      "models/VAE/ae.safetensors", "models/embeddings/emb.pt"]
    assert (read_record(s3aws, "models/Lora/detail.safetensors").kind,
            read_record(s3aws, "models/Lora/detail.safetensors").base) == ("lora", "sd1")
    again = run(s3aws, flat)
    assert sorted(i.status for i in again) == ["failed"] * 2 + ["skipped"] * 4

    # several --type: only those, still by each header; one --type: the folder is that type, as before
    write_safetensors(flat / "more.safetensors", "sdxl-lora")
    write_safetensors(flat / "xl.safetensors", "sd2-checkpoint")
    some = run(s3aws, flat, types=["lora", "vae"], dry_run=True)
    assert sorted((i.name, i.status) for i in some if i.ok) == [
        ("ae.safetensors", "skipped"), ("detail.safetensors", "skipped"), ("more.safetensors", "to-upload")]
    check_unknown(some)
    typed = by_name(run(s3aws, flat, types=["lora"], dry_run=True))
    assert typed["mystery.safetensors"].status == "to-upload"  # the user said what it is
    assert typed["mystery.safetensors"].key == "models/Lora/mystery.safetensors"
    assert typed["xl.safetensors"].status == "failed"  # and it says it is not: refused, before anything is sent
    assert "this file is an SD 2.x checkpoint, not a LoRA" in typed["xl.safetensors"].error
    assert typed["detail.safetensors"].status == "skipped" and typed["more.safetensors"].status == "to-upload"


def test_a_model_deleted_outside_the_tool_is_uploaded_again(s3aws, proxy, tmp_path):
    """Someone deletes a model in the S3 console: its hash marker stays, and must not make sync skip the file."""
    s3 = s3aws.client("s3")
    lora = tmp_path / "Lora"
    sha = put(lora / "x.safetensors", b"x" * 1000)
    assert [i.status for i in run(s3aws, lora)] == ["uploaded"]
    s3.delete_object(Bucket=s3aws.bucket, Key="models/Lora/x.safetensors")
    assert keys(s3aws, f"hashes/{sha}/") == [f"hashes/{sha}/Lora/x.safetensors"]  # the marker outlives it

    proxy.requests.clear()
    [dry] = run(s3aws, lora, dry_run=True)
    assert (dry.status, dry.key, dry.note) == ("to-upload", "models/Lora/x.safetensors", "")
    assert [(m, q.get("prefix") or p.split("/", 2)[2]) for m, p, q in proxy.requests] == [
        ("GET", "hashes/"), ("HEAD", "models/Lora/x.safetensors")]  # one check for the one match
    proxy.requests.clear()
    [item] = run(s3aws, lora)
    assert item.status == "uploaded"
    assert s3.get_object(Bucket=s3aws.bucket, Key="models/Lora/x.safetensors")["Body"].read() == b"x" * 1000
    assert keys(s3aws, f"hashes/{sha}/") == [f"hashes/{sha}/Lora/x.safetensors"]
    assert [i.status for i in run(s3aws, lora)] == ["skipped"]

    # deleted, and renamed here since: it goes up under its new name, and the marker of the old one goes
    (lora / "x.safetensors").rename(lora / "y.safetensors")
    s3.delete_object(Bucket=s3aws.bucket, Key="models/Lora/x.safetensors")
    [item] = run(s3aws, lora)
    assert (item.status, item.key) == ("uploaded", "models/Lora/y.safetensors")
    assert keys(s3aws, f"hashes/{sha}/") == [f"hashes/{sha}/Lora/y.safetensors"]

    # replaced in the console by another file of the same name: not this file, whatever its marker says
    s3.put_object(Bucket=s3aws.bucket, Key="models/Lora/y.safetensors", Body=b"something else")
    [dry] = run(s3aws, lora, dry_run=True)
    assert dry.status == "to-upload"

    # many files (more checks than one LIST of the models): one LIST, and each deleted one goes up again
    for n in range(4):
        put(lora / f"m{n}.safetensors", f"m{n}".encode() * 100)
    assert sorted(i.status for i in run(s3aws, lora)) == ["uploaded"] * 5  # y too: the console's is not it
    for n in (1, 3):
        s3.delete_object(Bucket=s3aws.bucket, Key=f"models/Lora/m{n}.safetensors")
    proxy.requests.clear()
    items = by_name(run(s3aws, lora))
    assert {n: i.status for n, i in items.items()} == {"y.safetensors": "skipped", "m0.safetensors": "skipped",
                                                        "m1.safetensors": "uploaded", "m2.safetensors": "skipped",
                                                        "m3.safetensors": "uploaded"}
    reads = [(m, q.get("prefix")) for m, p, q in proxy.requests if m in ("GET", "HEAD") and "uploadId" not in q]
    assert reads[:2] == [("GET", "hashes/"), ("GET", "models/Lora/")] and all(m != "HEAD" for m, _ in reads)
