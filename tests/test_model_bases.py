"""Generate offers only the VAEs, LoRAs and embeddings that fit the chosen checkpoint's base, as the records say
(what each file's header told at upload); a model whose base is not known is always offered. The bases of a whole
folder cost a few LISTs, not a GET per model, once each record's base is marked."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from aws_extension.core.models.catalog import (ModelRecord, base_marker, delete_model, list_models_with_bases, record_key,
                                               write_record)
from aws_extension.core.models.lookup import (Extra, add_to_prompt, checkpoint_base, fitting, generate_models,
                                              remove_from_prompt)
from aws_extension.core.models.types import model_type
from aws_extension.core.models.uploads import upload_paths
from model_headers import write_safetensors

MANY = 2_500


def keys(aws, prefix: str) -> list:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def upload(aws, tmp_path, kind: str, name: str, seed: int = 1) -> str:
    """A tiny model of `kind` (model_headers.KINDS) uploaded under Auto: its header says what it is."""
    path = tmp_path / name
    write_safetensors(path, kind, seed=seed)
    [result] = upload_paths(aws, "auto", [str(path)])
    assert result.ok, result.error
    return result.key


def labels(extras) -> list:
    return [e.label for e in extras]


def test_generate_lists_what_fits_the_chosen_checkpoint(aws, tmp_path):
    for kind, name in (("sd1-checkpoint", "sd15.safetensors"), ("sdxl-checkpoint", "xl-base.safetensors"),
                       ("sd1-lora", "detail.safetensors"), ("sdxl-lora", "xl-style.safetensors"),
                       ("sdxl-lycoris", "xl-loha.safetensors"), ("sd1-embedding", "bad-hands.safetensors"),
                       ("sdxl-embedding", "xl-hands.safetensors"), ("vae", "clear.safetensors")):
        upload(aws, tmp_path, kind, name)
    s3 = aws.client("s3")
    # a LoRA whose record was written before records said a base, and one with no record at all (another tool)
    old = model_type("lora").key("old.safetensors")
    s3.put_object(Bucket=aws.bucket, Key=old, Body=b"x" * 10)
    write_record(aws, ModelRecord(type="lora", name="old.safetensors", key=old, size=10))
    s3.put_object(Bucket=aws.bucket, Key=model_type("lora").key("bare.pt"), Body=b"x" * 10)
    # a VAE whose record says SDXL (a header does not tell; a record may)
    xl_vae = model_type("vae").key("xl-vae.safetensors")
    s3.put_object(Bucket=aws.bucket, Key=xl_vae, Body=b"x" * 10)
    write_record(aws, ModelRecord(type="vae", name="xl-vae.safetensors", key=xl_vae, size=10, kind="vae", base="sdxl"))

    models = generate_models(aws)
    assert models.checkpoints == ["sd15.safetensors", "xl-base.safetensors"]
    assert checkpoint_base(aws, "sd15.safetensors") == "sd1" and checkpoint_base(aws, "xl-base.safetensors") == "sdxl"

    sd1 = fitting(models, "sd1")
    assert labels(sd1.extras) == ["bare (LoRA)", "detail (LoRA)", "old (LoRA)", "bad-hands (embedding)"]
    assert sd1.vaes == ["None", "clear.safetensors"]
    assert sd1.hidden == "2 LoRAs for SDXL, 1 embedding for SDXL, 1 VAE for SDXL hidden: the checkpoint is SD 1.x."

    xl = fitting(models, "sdxl")
    assert labels(xl.extras) == ["bare (LoRA)", "old (LoRA)", "xl-loha (LoRA)", "xl-style (LoRA)",
                                 "xl-hands (embedding)"]
    assert xl.vaes == ["None", "clear.safetensors", "xl-vae.safetensors"]
    assert xl.hidden == "1 LoRA for SD 1.x, 1 embedding for SD 1.x hidden: the checkpoint is SDXL."

    # a checkpoint whose record says no base (or none chosen): everything is offered, nothing said hidden
    everything = fitting(models, checkpoint_base(aws, "no-such.safetensors"))
    assert len(everything.extras) == 7 and len(everything.vaes) == 3 and everything.hidden == ""
    assert [e.tag for e in sd1.extras] == ["<lora:bare:1>", "<lora:detail:1>", "<lora:old:1>", "bad-hands"]


def seed_loras(bucket: str, count: int, unmarked: int) -> list:
    """`count` LoRAs (a third for SDXL, a third for SD 1.x, a third unknown), straight into the emulator's S3
    (through HTTP it would take minutes), their records written five minutes ago; all but the first `unmarked` with
    the markers a listing since then has left. Their bases, in order."""
    from moto.s3.models import s3_backends

    from aws_extension.local.emulator import ACCOUNT_ID

    backend = s3_backends[ACCOUNT_ID]["aws"]
    earlier = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5)
    bases = []
    for i in range(count):
        name = f"lora-{i:05d}.safetensors"
        key = model_type("lora").key(name)
        bases.append(("sdxl", "sd1", None)[i % 3])
        backend.put_object(bucket, key, b"x" * 10).last_modified = earlier
        record = ModelRecord(type="lora", name=name, key=key, size=10, kind="lora", base=bases[-1])
        backend.put_object(bucket, record_key(key), record.json().encode()).last_modified = earlier
        if i >= unmarked:
            backend.put_object(bucket, base_marker(key, bases[-1]), b"")
    return bases


def test_the_bases_of_many_models_cost_a_few_lists_once_marked(proxy, aws):
    """A record not marked yet (written before markers existed) is read once, when a listing first needs its base;
    from then on the bases of MANY LoRAs come from three LISTs per 1,000 (the models, their records, the markers)."""
    bases = seed_loras(aws.bucket, MANY, unmarked=100)
    proxy.reset_counts()
    first = list_models_with_bases(aws, "lora")
    assert [m.base for m in first] == bases
    record_gets = [p for m, p, q in proxy.requests if m == "GET" and "/records/" in p]
    assert sorted(record_gets) == [f"/{aws.bucket}/records/Lora/lora-{i:05d}.safetensors.json" for i in range(100)]
    assert len(keys(aws, "bases/Lora/")) == MANY

    proxy.reset_counts()
    again = list_models_with_bases(aws, "lora")
    assert [m.base for m in again] == bases
    listed = sorted(q.get("prefix") for m, _, q in proxy.requests if m == "GET" and q.get("list-type") == "2")
    assert listed == sorted(["bases/Lora/", "models/Lora/", "records/Lora/"] * math.ceil(MANY / 1000))
    assert len(proxy.requests) == len(listed), "no GET of a record, no write"


def test_a_replaced_model_lists_with_its_new_base_and_a_deleted_one_leaves_no_marker(aws, tmp_path):
    key = upload(aws, tmp_path, "sd1-lora", "style.safetensors")
    [listed] = list_models_with_bases(aws, "lora")
    assert listed.base == "sd1"
    (tmp_path / "style.safetensors").unlink()
    upload(aws, tmp_path, "sdxl-lora", "style.safetensors", seed=2)  # the same name, now an SDXL LoRA
    [listed] = list_models_with_bases(aws, "lora")
    assert listed.base == "sdxl"
    assert keys(aws, "bases/") == ["bases/Lora/sdxl/style.safetensors"], "the older marker is removed"
    delete_model(aws, "lora", "style.safetensors")
    assert keys(aws, "bases/") == [] and keys(aws, "models/") == []
    assert key == "models/Lora/style.safetensors"


def test_picking_writes_the_tag_into_the_prompt_and_unpicking_takes_it_out():
    lora, embedding = Extra("lora", "detail", "sd1"), Extra("embedding", "bad-hands", "sd1")
    prompt = add_to_prompt("a cat", lora)
    assert prompt == "a cat <lora:detail:1>"
    prompt = add_to_prompt(prompt, embedding)
    assert prompt == "a cat <lora:detail:1> bad-hands"
    assert add_to_prompt(prompt, lora) == prompt, "already there: not twice"
    assert add_to_prompt("", lora) == "<lora:detail:1>" and add_to_prompt("a cat, ", lora) == "a cat, <lora:detail:1>"
    assert remove_from_prompt(prompt, lora) == "a cat bad-hands"
    assert remove_from_prompt("<lora:detail:0.4> a cat", lora) == "a cat", "at any weight the user gave it"
    assert remove_from_prompt("a cat, bad-hands, smile", embedding) == "a cat, smile", "with its separator"
    assert remove_from_prompt("bad-hands, a cat", embedding) == "a cat"
    # another embedding whose name is part of this one's is left alone
    assert remove_from_prompt("a cat bad-hands", Extra("embedding", "bad")) == "a cat bad-hands"
