"""Many cloud models: a listing reads only models, a pasted hash and a Generate cost a few requests whatever the
number of models (counted through the proxy in front of the emulator's S3), and records an older version kept
beside the models move out once."""

from __future__ import annotations

import hashlib
import math

import pytest

from aws_extension import cli
from aws_extension.core.errors import Refused
from aws_extension.core.models.types import model_type
from aws_extension.core.models.lookup import find_checkpoint_by_hash, resolve_models
from aws_extension.core.models.catalog import (ModelRecord, delete_model, hash_key, legacy_record_key, list_models,
                                          record_key, write_record)
from many_models import name_of, seed_checkpoints, sha256_of

MANY = 2_500


def s3_requests(proxy) -> list:
    return [(method, path, query) for method, path, query in proxy.requests]


def lists(proxy) -> list:
    return [q.get("prefix", "") for m, _, q in proxy.requests if m == "GET" and q.get("list-type") == "2"]


def keys(aws, prefix: str) -> list:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_a_listing_of_many_models_reads_one_page_per_thousand_models(proxy, aws):
    seed_checkpoints(aws.bucket, MANY)
    proxy.reset_counts()
    models = list_models(aws, "checkpoint")
    assert len(models) == MANY and models[0].name == name_of(0)
    assert len(lists(proxy)) == math.ceil(MANY / 1000), "the records must not share the models' listing"
    assert len(proxy.requests) == len(lists(proxy))


def test_a_pasted_model_hash_is_found_with_two_requests(proxy, aws):
    seed_checkpoints(aws.bucket, MANY)
    proxy.reset_counts()
    assert find_checkpoint_by_hash(aws, sha256_of(1234)[:10]) == name_of(1234)  # the WebUI's "Model hash"
    assert len(proxy.requests) <= 2, s3_requests(proxy)  # a LIST of its markers, the record that confirms it
    assert find_checkpoint_by_hash(aws, sha256_of(7)[:16].upper()) == name_of(7)  # a longer prefix, any case
    proxy.reset_counts()
    assert find_checkpoint_by_hash(aws, "0123456789") is None
    assert len(proxy.requests) == 1


def test_generate_with_exact_names_reads_no_folder_listing(proxy, aws):
    seed_checkpoints(aws.bucket, MANY)
    s3 = aws.client("s3")
    for key in ("models/VAE/clear.safetensors", "models/Lora/detail.safetensors", "models/embeddings/bad-hands.pt"):
        s3.put_object(Bucket=aws.bucket, Key=key, Body=b"x" * 10)
    proxy.reset_counts()
    models = resolve_models(aws, name_of(2001), "clear.safetensors", ["a cat <lora:detail:0.6>"], ["bad-hands"])
    assert models == {
        "checkpoint": f"s3://{aws.bucket}/models/Stable-diffusion/{name_of(2001)}",
        "vae": f"s3://{aws.bucket}/models/VAE/clear.safetensors",
        "lora": [f"s3://{aws.bucket}/models/Lora/detail.safetensors"],
        "embeddings": [f"s3://{aws.bucket}/models/embeddings/bad-hands.pt"],
    }
    assert len(proxy.requests) <= 5, s3_requests(proxy)
    assert "models/Stable-diffusion/" not in lists(proxy)
    # the infotext's forms cost no more: a name without extension, a WebUI title, a short hash
    for wanted in (name_of(2001).rsplit(".", 1)[0], f"{name_of(2001)} [{sha256_of(2001)[:10]}]",
                   sha256_of(2001)[:10]):
        proxy.reset_counts()
        assert resolve_models(aws, wanted, None, [""])["checkpoint"].endswith(name_of(2001)), wanted
        assert len(proxy.requests) <= 3, (wanted, s3_requests(proxy))


def test_a_missing_model_still_says_what_is_there(aws):
    seed_checkpoints(aws.bucket, 3)
    with pytest.raises(Exception) as refused:
        resolve_models(aws, "model-99999", None, ["a cat"])
    assert "model-99999" in str(refused.value) and name_of(0) in str(refused.value)


def test_records_an_older_version_kept_beside_the_models_move_out_once(proxy, aws, capsys):
    seed_checkpoints(aws.bucket, 5, legacy=True)
    assert len(keys(aws, "models/")) == 10 and not keys(aws, "records/")
    # the user's first listing, on the CLI as typed
    assert cli.main(["models", "list", "--type", "checkpoint"]) == 0
    listed = capsys.readouterr().out
    assert all(name_of(i) in listed for i in range(5))
    assert sorted(keys(aws, "models/")) == [f"models/Stable-diffusion/{name_of(i)}" for i in range(5)]
    assert len(keys(aws, "records/")) == 5 and len(keys(aws, "hashes/")) == 5
    assert find_checkpoint_by_hash(aws, sha256_of(3)[:10]) == name_of(3)
    proxy.reset_counts()
    list_models(aws)
    assert [m for m, _, _ in proxy.requests] == ["GET"], "moved once: the next listing is one LIST"


def test_a_replaced_model_is_not_found_by_its_old_hash(aws):
    key = "models/Stable-diffusion/v1.safetensors"
    old, new = hashlib.sha256(b"old").hexdigest(), hashlib.sha256(b"new").hexdigest()
    aws.client("s3").put_object(Bucket=aws.bucket, Key=key, Body=b"new")
    write_record(aws, ModelRecord(type="checkpoint", name="v1.safetensors", key=key, size=3, sha256=old))
    write_record(aws, ModelRecord(type="checkpoint", name="v1.safetensors", key=key, size=3, sha256=new))
    assert find_checkpoint_by_hash(aws, old[:10]) is None
    assert hash_key(old, key) not in keys(aws, "hashes/"), "the stale marker is removed when met"
    assert find_checkpoint_by_hash(aws, new[:10]) == "v1.safetensors"


def test_a_deleted_model_leaves_no_record_or_marker(aws):
    seed_checkpoints(aws.bucket, 2)
    key = "models/Stable-diffusion/" + name_of(1)
    aws.client("s3").put_object(Bucket=aws.bucket, Key=legacy_record_key(key), Body=b"{}")
    delete_model(aws, "checkpoint", name_of(1))
    assert record_key(key) not in keys(aws, "records/") and hash_key(sha256_of(1), key) not in keys(aws, "hashes/")
    assert keys(aws, "models/") == ["models/Stable-diffusion/" + name_of(0)]
    assert find_checkpoint_by_hash(aws, sha256_of(1)[:10]) is None


def test_a_lora_or_embedding_for_another_base_is_refused_before_anything_is_invoked(proxy, aws):
    """Records that say the bases (what the headers told at upload): a mix is refused by name, at one GET per
    model named; models whose records say nothing of a base go through."""
    seed_checkpoints(aws.bucket, 3)
    s3 = aws.client("s3")

    def put(type_id: str, name: str, kind=None, base=None):
        key = model_type(type_id).key(name)
        s3.put_object(Bucket=aws.bucket, Key=key, Body=b"x" * 10)
        write_record(aws, ModelRecord(type=type_id, name=name, key=key, size=10, kind=kind, base=base))

    put("checkpoint", "sd15.safetensors", "checkpoint", "sd1")
    put("lora", "xl-style.safetensors", "lora", "sdxl")
    put("lora", "detail.safetensors", "lora", "sd1")
    put("lora", "old.safetensors")  # uploaded before records said a base
    put("embedding", "xl-hands.safetensors", "embedding", "sdxl")
    proxy.reset_counts()
    models = resolve_models(aws, "sd15.safetensors", None, ["a cat <lora:detail:0.6> <lora:old:1>"], ["bad"])
    assert [m.rsplit("/", 1)[-1] for m in models["lora"]] == ["detail.safetensors", "old.safetensors"]
    assert len(proxy.requests) == 7, s3_requests(proxy)  # HEAD, 2 LISTs of stems, the embeddings' LIST, 3 records
    with pytest.raises(Refused) as refused:
        resolve_models(aws, "sd15", None, ["a cat <lora:xl-style:1> <lora:detail:1>, xl-hands"])
    assert str(refused.value) == ("The checkpoint sd15.safetensors is SD 1.x, but LoRA xl-style.safetensors is for "
                                  "SDXL; embedding xl-hands.safetensors is for SDXL: they do not work together. "
                                  "Choose a checkpoint for the same base, or leave those out of the prompt.")
    # a checkpoint whose record says no base: nothing more is read, nothing refused
    proxy.reset_counts()
    resolve_models(aws, name_of(1), None, ["<lora:xl-style:1>"])
    assert len(proxy.requests) == 3, s3_requests(proxy)  # its HEAD, the LoRA's LIST, its record
