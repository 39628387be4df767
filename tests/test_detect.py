"""What a model file is, from its first bytes: every kind and base in both formats, headers that lie, and the
choice of type (Auto, a match, a mismatch, forced)."""

from __future__ import annotations

import io
import pickle
import struct

import pytest

from aws_extension.core.errors import Refused
from aws_extension.core.models.detect import Detected, chosen_type, decide, detect_file, detect_head
from aws_extension.core.models.headers import HEAD_LIMIT, grow_head, scan_pickles
from aws_extension.core.models.types import model_type
from model_headers import (KINDS, FakeTensor, safetensors_bytes, state_dict, torch_zip_bytes, webui_embedding,
                           webui_hypernetwork, write_safetensors, write_torch)

EXPECTED = {
    "sd1-checkpoint": ("checkpoint", "sd1", "an SD 1.x checkpoint"),
    "sd2-checkpoint": ("checkpoint", "sd2", "an SD 2.x checkpoint"),
    "sdxl-checkpoint": ("checkpoint", "sdxl", "an SDXL checkpoint"),
    "sd3-checkpoint": ("checkpoint", "sd3", "an SD3 checkpoint"),
    "flux-checkpoint": ("checkpoint", "flux", "a Flux checkpoint"),
    "sd1-lora": ("lora", "sd1", "a LoRA for SD 1.x"),
    "sd2-lora": ("lora", "sd2", "a LoRA for SD 2.x"),
    "sdxl-lora": ("lora", "sdxl", "a LoRA for SDXL"),
    "sdxl-lycoris": ("lora", "sdxl", "a LyCORIS for SDXL"),
    "flux-lora": ("lora", "flux", "a LoRA for Flux"),
    "sd1-embedding": ("embedding", "sd1", "a textual inversion for SD 1.x"),
    "sdxl-embedding": ("embedding", "sdxl", "a textual inversion for SDXL"),
    "vae": ("vae", "unknown", "a VAE"),
    "flux-vae": ("vae", "unknown", "a VAE for SD3 or Flux"),
    "sd1-controlnet": ("controlnet", "sd1", "a ControlNet for SD 1.x"),
    "sdxl-controlnet": ("controlnet", "sdxl", "a ControlNet for SDXL"),
}


def as_stream(name: str, data: bytes) -> Detected:
    """As a URL or the browser sees it: the first 64 KiB, grown to what the header needs, and the size."""
    f = io.BytesIO(data)
    return detect_head(name, grow_head(name, f.read(64 * 1024), f.read, len(data)), len(data))


def test_every_kind_is_in_the_table():
    assert set(EXPECTED) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_kind_and_base_from_a_safetensors_header(kind, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    data = write_safetensors(path, kind, size=200_000)
    found = detect_file(path)
    assert (found.kind, found.base, found.what) == EXPECTED[kind]
    assert as_stream(path.name, data) == found


@pytest.mark.parametrize("kind", ["sd1-checkpoint", "sd2-checkpoint", "sdxl-checkpoint", "sdxl-lora", "vae"])
@pytest.mark.parametrize("streamed", [True, False], ids=["torch-like", "sizes-first"])
def test_each_kind_from_a_ckpt_zip_listing_without_unpickling(kind, streamed, tmp_path, monkeypatch):
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    path = tmp_path / f"{kind}.ckpt"
    data = write_torch(path, {"state_dict": state_dict(kind), "global_step": 10}, streamed=streamed)
    found = detect_file(path)
    assert (found.kind, found.base, found.what) == EXPECTED[kind]
    assert as_stream(path.name, data) == found  # the first bytes alone: data.pkl is the zip's first entry


def test_tensor_shapes_come_out_of_the_pickle():
    shapes = scan_pickles(torch_zip_bytes({"a.weight": FakeTensor(3, 768), "b": FakeTensor(), "c": FakeTensor(5)},
                                          streamed=False)[30 + len("archive/data.pkl"):])
    assert {k: shapes[k] for k in ("a.weight", "b", "c")} == {"a.weight": (3, 768), "b": (), "c": (5,)}


def test_webui_pt_files_embedding_hypernetwork_and_a_legacy_pickle(tmp_path):
    write_torch(tmp_path / "emb.pt", webui_embedding(768))
    write_torch(tmp_path / "emb2.pt", webui_embedding(1024))
    write_torch(tmp_path / "hn.pt", webui_hypernetwork())
    (tmp_path / "learned_embeds.bin").write_bytes(torch_zip_bytes({"<cat-toy>": FakeTensor(768)}))
    assert detect_file(tmp_path / "emb.pt").what == "a textual inversion for SD 1.x"
    assert detect_file(tmp_path / "emb2.pt").what == "a textual inversion for SD 2.x"
    assert (detect_file(tmp_path / "hn.pt").kind, detect_file(tmp_path / "hn.pt").what) == \
        ("hypernetwork", "a hypernetwork")
    assert detect_file(tmp_path / "learned_embeds.bin").what == "a textual inversion for SD 1.x"
    # torch before 1.6: pickles one after another from the first byte (magic, version, info, the state dict)
    legacy = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    buf = io.BytesIO()
    from model_headers import _TorchPickler
    _TorchPickler(buf, protocol=2).dump(state_dict("sd2-checkpoint"))
    (tmp_path / "old.ckpt").write_bytes(legacy + buf.getvalue() + bytes(1000))
    assert detect_file(tmp_path / "old.ckpt").what == "an SD 2.x checkpoint"


def test_kohya_metadata_names_the_base_where_shapes_do_not(tmp_path):
    tensors = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (4, 8)}
    write_safetensors(tmp_path / "a.safetensors", tensors, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    write_safetensors(tmp_path / "b.safetensors", tensors)
    assert detect_file(tmp_path / "a.safetensors").what == "a LoRA for SDXL"
    assert (detect_file(tmp_path / "b.safetensors").base, detect_file(tmp_path / "b.safetensors").what) == \
        ("unknown", "a LoRA")


def header_file(path, header: bytes, claimed=None, body: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header) if claimed is None else claimed) + header + body)


@pytest.mark.parametrize("case, reason", [
    ("not-json", "its header is not JSON"),
    ("too-long", "its header claims 5,000,000 bytes but the whole file has"),
    ("huge", "far more than any model's"),
    ("cut", "it is cut short: its tensors need"),
    ("not-tensors", "does not describe the tensor 'x'"),
    ("tiny", "too short to be a .safetensors file"),
])
def test_a_safetensors_header_that_lies_is_no_model(case, reason, tmp_path):
    path = tmp_path / "x.safetensors"
    if case == "not-json":
        path.write_bytes(struct.pack("<Q", 20) + b"<html>not a header</html>" + bytes(100))
    elif case == "too-long":
        header_file(path, b"{}", claimed=5_000_000)
    elif case == "huge":
        header_file(path, b"{}", claimed=HEAD_LIMIT + 1, body=bytes(100))
    elif case == "cut":
        path.write_bytes(safetensors_bytes(KINDS["sd1-lora"])[:-100])
    elif case == "not-tensors":
        header_file(path, b'{"x": {"dtype": "F16"}}')
    else:
        path.write_bytes(b"abc")
    found = detect_file(path)
    assert not found.known and reason in found.problem, found
    assert as_stream(path.name, path.read_bytes()).problem == found.problem
    with pytest.raises(Refused) as refused:  # under Auto
        decide(found, None, "x.safetensors")
    assert str(refused.value).startswith(f"x.safetensors: {found.problem}") and "nothing was uploaded" in str(refused.value)
    assert decide(found, model_type("lora"), "x.safetensors") == model_type("lora")  # chosen: it goes as chosen


def test_a_ckpt_that_is_no_torch_file(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"hello, this is text")
    assert "not a PyTorch file" in detect_file(tmp_path / "x.ckpt").problem
    (tmp_path / "y.ckpt").write_bytes(b"PK\x03\x04" + bytes(60))  # a zip that is cut short
    assert "zip" in detect_file(tmp_path / "y.ckpt").problem


def test_auto_takes_the_kind_and_refuses_what_it_cannot_tell(tmp_path):
    assert chosen_type("Auto") is None and chosen_type("auto") is None and chosen_type(None) is None
    assert chosen_type("LoRA") == model_type("lora")
    write_safetensors(tmp_path / "s.safetensors", "sdxl-lora")
    assert decide(detect_file(tmp_path / "s.safetensors"), None, "s.safetensors") == model_type("lora")
    write_safetensors(tmp_path / "u.safetensors", {"weight": (4, 4)})
    unknown = detect_file(tmp_path / "u.safetensors")
    assert unknown.kind == "unknown" and not unknown.problem
    with pytest.raises(Refused, match=r"u.safetensors: cannot tell what kind of model this is; choose its type"):
        decide(unknown, None, "u.safetensors")
    assert decide(unknown, model_type("vae"), "u.safetensors") == model_type("vae")


def test_a_mismatch_is_refused_by_name_unless_forced(tmp_path):
    write_safetensors(tmp_path / "x.safetensors", "sdxl-lora")
    found = detect_file(tmp_path / "x.safetensors")
    with pytest.raises(Refused) as refused:
        decide(found, model_type("checkpoint"), "x.safetensors")
    assert str(refused.value).startswith("x.safetensors: this file is a LoRA for SDXL, not an SD Checkpoint; "
                                         "choose LoRA (or Auto)")
    assert decide(found, model_type("checkpoint"), "x.safetensors", force=True) == model_type("checkpoint")
    assert decide(found, model_type("lora"), "x.safetensors") == model_type("lora")
