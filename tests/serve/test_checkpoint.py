"""Loading WebUI checkpoints offline: detection, bit-exact weights, old layouts, refusals, real-size configs, VAEs."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import socket
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import (AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline,  # noqa: E402
                       UNet2DConditionModel)
from safetensors.torch import load_file, save_file  # noqa: E402

import tiny_models as tm  # noqa: E402
from aws_extension.core.errors import UserError  # noqa: E402
from aws_extension.serve import checkpoint as ck  # noqa: E402
from aws_extension.serve.checkpoint import LoadError, config_dir, detect, load_pipeline, load_vae  # noqa: E402

F32 = torch.float32


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Every socket connection fails and is recorded; a test that tried one fails even if a library hid the error."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", lambda self, *a, **k: refuse(*a))
        mp.setattr(socket.socket, "connect_ex", lambda self, *a, **k: refuse(*a))
        mp.setattr(socket, "getaddrinfo", refuse)
        yield attempts
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny files and the diffusers models each was written from."""
    d = tmp_path_factory.mktemp("tiny")
    made = {}
    for name, make, seed, extra in [("sd1.safetensors", tm.make_sd1, 0, {}), ("sdxl.safetensors", tm.make_sdxl, 5, {}),
                                    ("sd1.ckpt", tm.make_sd1, 6, {}),
                                    ("sd1-old-clip.safetensors", tm.make_sd1, 7, {"old_clip_keys": True}),
                                    ("sd1-ema-old-clip.ckpt", tm.make_sd1, 8, {"old_clip_keys": True, "ema": True})]:
        assert make(d / name, seed=seed, **extra) == d / name
        made[name] = tm.build("sdxl" if name.startswith("sdxl") else "sd1", seed)
    return d, made


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("configs")


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def public(config) -> dict:
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def image(pipe, prompt="a cat"):
    out = pipe(prompt, num_inference_steps=2, height=64, width=64, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images[0]


# ---------------------------------------------------------------- tiny files through the real path

def test_detects_sd1_and_sdxl_from_tiny_files(tiny):
    d, _ = tiny
    assert detect(d / "sd1.safetensors").kind == "sd1"
    assert detect(d / "sd1.ckpt").kind == "sd1"
    xl = detect(d / "sdxl.safetensors")
    assert xl.kind == "sdxl" and xl.text_encoder_2.layers == 10 and xl.addition_time_embed_dim == 8
    assert detect(load_file(str(d / "sdxl.safetensors"))) == xl  # a state dict gives the same answer as the file


def test_safetensors_detection_reads_only_the_header(tiny, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("tensor data read")

    monkeypatch.setattr(ck, "load_file", no_data)
    monkeypatch.setattr(torch, "load", no_data)
    assert detect(tiny[0] / "sdxl.safetensors").kind == "sdxl"


@pytest.mark.parametrize("name", ["sd1.safetensors", "sdxl.safetensors", "sd1.ckpt", "sd1-old-clip.safetensors",
                                  "sd1-ema-old-clip.ckpt"])
def test_loaded_weights_equal_the_models_the_file_was_built_from(tiny, root, name):
    d, made = tiny
    pipe, arch = load_pipeline(d / name, device="cpu", dtype=F32, config_root=root)
    models = made[name]
    if name.startswith("sdxl"):  # chosen by the detected kind: the SD1 class would load this file without error
        assert type(pipe) is StableDiffusionXLPipeline and arch.kind == "sdxl"
    else:
        assert type(pipe) is StableDiffusionPipeline and arch.kind == "sd1"
        assert pipe.safety_checker is None
    for part, model in models.items():
        loaded = getattr(pipe, part)
        assert same(loaded, model), part
        if part in ("unet", "vae"):  # the config read from shapes is the one the model was built with
            assert public(loaded.config) == public(model.config), part
    te = pipe.text_encoder.config
    assert (te.hidden_size, te.num_attention_heads, te.num_hidden_layers) == (32, 4, 3)
    if name in ("sd1.safetensors", "sdxl.safetensors"):
        img = image(pipe)
        assert img.shape == (64, 64, 3) and np.isfinite(img).all() and img.std() > 0


@pytest.mark.parametrize("name", ["sd1.safetensors", "sdxl.safetensors"])
def test_config_folder_serves_diffusers_own_from_single_file(tiny, root, name):
    d, made = tiny
    cls = StableDiffusionXLPipeline if name.startswith("sdxl") else StableDiffusionPipeline
    folder = config_dir(detect(d / name), root)
    pipe = cls.from_single_file(str(d / name), config=str(folder), local_files_only=True, torch_dtype=F32)
    assert same(pipe.unet, made[name]["unet"]) and same(pipe.vae, made[name]["vae"])


def test_config_dir_is_written_once_per_architecture(tiny, root):
    d, _ = tiny
    sd1, xl = detect(d / "sd1.safetensors"), detect(d / "sdxl.safetensors")
    folder = config_dir(sd1, root)
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert config_dir(sd1, root) == folder and (folder / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert config_dir(xl, root) != folder
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".tmp")]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    xl_folder = config_dir(xl, root)
    assert json.loads((xl_folder / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"] == "!"
    assert json.loads((xl_folder / "vae" / "config.json").read_text())["scaling_factor"] == 0.13025
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("keys, says", [
    ({"foo.weight": (4, 4), "bar.bias": (4,)}, "not a Stable Diffusion checkpoint"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}, "LoRA"),
    ({"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}, "2.x"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "inpainting"),
    ({"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
      "model.diffusion_model.pos_embed": (1, 36864, 1536)}, "Stable Diffusion 3"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "Flux"),
    ({"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}, "refiner"),
])
def test_other_files_are_refused_by_name(tmp_path, keys, says):
    path = tm.save_header_only(keys, tmp_path / "upload.safetensors")
    with pytest.raises(LoadError, match=says) as err:
        detect(path)
    assert "upload.safetensors" in str(err.value) and isinstance(err.value, UserError)
    if path.stat().st_size < 1e6:  # (the SD3 header describes gigabytes)
        with pytest.raises(LoadError, match=f"upload.safetensors: .*{says}"):
            load_pipeline(path, device="cpu", dtype=F32, config_root=tmp_path / "c")


def test_sd1_without_its_vae_is_refused(tiny, tmp_path):
    sd = {k: v for k, v in load_file(str(tiny[0] / "sd1.safetensors")).items() if not k.startswith("first_stage_model.")}
    save_file(sd, str(tmp_path / "novae.safetensors"))
    with pytest.raises(LoadError, match="novae.safetensors: not a Stable Diffusion checkpoint"):
        detect(tmp_path / "novae.safetensors")


class RunsCode:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a malicious checkpoint runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("form, says", [("zip", "Python objects besides weights"),
                                        ("legacy", "Python objects besides weights"),  # torch < 1.6 format
                                        ("plain pickle", "not a readable checkpoint")])
def test_pickle_with_code_is_refused_without_running_it(tmp_path, form, says):
    marker, path = tmp_path / "ran", tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "extra": RunsCode(marker)}
    if form == "plain pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, str(path), _use_new_zipfile_serialization=form == "zip")
    for call in (lambda: ck.read_state_dict(path), lambda: detect(path),
                 lambda: load_pipeline(path, device="cpu", dtype=F32, config_root=tmp_path / "c")):
        with pytest.raises(LoadError, match=f"evil.ckpt: .*{says}"):
            call()
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler does run it
    if form == "plain pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(str(path), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["sd1.safetensors", "sd1.ckpt"])
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_damaged_files_are_reported_as_unreadable(tiny, tmp_path, name, damage):
    data = (tiny[0] / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    for call in (lambda: detect(path), lambda: load_pipeline(path, device="cpu", dtype=F32, config_root=tmp_path)):
        with pytest.raises(LoadError, match=f"{name}: not a readable"):
            call()


def test_a_checkpoint_missing_some_weights_is_refused(tiny, tmp_path):
    sd = load_file(str(tiny[0] / "sd1.safetensors"))
    del sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    with pytest.raises(LoadError, match="partial.safetensors: the file lacks some of the unet's weights"):
        load_pipeline(tmp_path / "partial.safetensors", device="cpu", dtype=F32, config_root=tmp_path)


# ---------------------------------------------------------------- real sizes, no weights allocated

def full_config(cls, config: dict) -> dict:
    """config with every default of cls filled in, as JSON values: two configs that build the same model compare equal."""
    params = inspect.signature(cls.__init__).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    out.update({k: v for k, v in config.items() if k in params})
    return json.loads(json.dumps(out))


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_real_size_checkpoints_give_the_standard_configs(tmp_path, monkeypatch, kind):
    sdxl = kind == "sdxl"
    with torch.device("meta"):  # shapes only
        models = tm.real_models(kind)
    path = tm.save_header_only(tm.checkpoint_state_dict(kind, **models), tmp_path / "big.safetensors")
    assert path.stat().st_size > 1.9e9  # the header describes gigabytes; detection must not read them
    monkeypatch.setattr(ck, "load_file", None)
    arch = detect(path)
    assert arch.kind == kind
    folder = config_dir(arch, tmp_path / "configs")
    read = lambda rel: json.loads((folder / rel).read_text())  # noqa: E731
    assert full_config(UNet2DConditionModel, read("unet/config.json")) == \
        full_config(UNet2DConditionModel, tm.REAL_SDXL_UNET if sdxl else tm.REAL_SD15_UNET)
    assert full_config(AutoencoderKL, read("vae/config.json")) == \
        full_config(AutoencoderKL, tm.REAL_SDXL_VAE if sdxl else tm.REAL_SD15_VAE)
    encoders = [("text_encoder/config.json", tm.REAL_CLIP_L)] + [("text_encoder_2/config.json", tm.REAL_CLIP_G)] * sdxl
    for rel, standard in encoders:
        got = read(rel)
        assert {k: got[k] for k in standard} == standard, rel
    assert read("model_index.json")["_class_name"] == ("StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline")


# ---------------------------------------------------------------- VAE files

@pytest.mark.parametrize("filename, prefix", [("vae.safetensors", ""), ("vae.pt", "first_stage_model.")])
def test_vae_override_loads_and_differs_from_the_builtin(tiny, root, tmp_path, filename, prefix):
    pipe, arch = load_pipeline(tiny[0] / "sd1.safetensors", device="cpu", dtype=F32, config_root=root)
    tm.make_vae(tmp_path / filename, "sd1", seed=1, prefix=prefix)
    made = tm.build_vae("sd1", seed=1)
    vae = load_vae(tmp_path / filename, arch, device="cpu", dtype=F32, config_root=root)
    assert same(vae, made) and not same(vae, pipe.vae)
    assert vae.config.scaling_factor == 0.18215
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (vae.decode(latents).sample - pipe.vae.decode(latents).sample).abs().mean() > 1e-3


def test_sdxl_vae_override_keeps_the_sdxl_scaling(tiny, root, tmp_path):
    arch = detect(tiny[0] / "sdxl.safetensors")
    tm.make_vae(tmp_path / "xl-vae.safetensors", "sdxl")
    made = tm.build_vae("sdxl")
    vae = load_vae(tmp_path / "xl-vae.safetensors", arch, device="cpu", dtype=F32, config_root=root)
    assert same(vae, made) and vae.config.scaling_factor == 0.13025


def test_vae_of_another_architecture_or_not_a_vae_is_refused(tiny, root, tmp_path):
    arch = detect(tiny[0] / "sd1.safetensors")
    tm.make_vae(tmp_path / "xl-vae.safetensors", "sdxl")
    with pytest.raises(LoadError, match="xl-vae.safetensors: this VAE does not fit"):
        load_vae(tmp_path / "xl-vae.safetensors", arch, device="cpu", dtype=F32, config_root=root)
    tm.make_lora(tmp_path / "lora.safetensors")
    with pytest.raises(LoadError, match="lora.safetensors: not a VAE"):
        load_vae(tmp_path / "lora.safetensors", arch, device="cpu", dtype=F32, config_root=root)


# ---------------------------------------------------------------- the other tiny files work with diffusers

@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_tiny_lora_and_embedding_load_and_change_the_image(tiny, root, tmp_path, kind):
    pipe, _ = load_pipeline(tiny[0] / f"{kind}.safetensors", device="cpu", dtype=F32, config_root=root)
    base = image(pipe)
    tm.make_lora(tmp_path / "lora.safetensors", kind)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"), adapter_name="tiny")
    encoders = [pipe.unet, pipe.text_encoder] + ([pipe.text_encoder_2] if kind == "sdxl" else [])
    assert all(any(hasattr(m, "lora_A") for m in e.modules()) for e in encoders)
    assert np.abs(image(pipe) - base).mean() > 0.02
    pipe.unload_lora_weights()
    assert np.abs(image(pipe) - base).max() < 1e-5
    if kind == "sd1":
        tm.make_embedding(tmp_path / "emb.pt", "sd1")
        pipe.load_textual_inversion(str(tmp_path / "emb.pt"), token="<emb>")
    else:
        emb = load_file(str(tm.make_embedding(tmp_path / "emb.safetensors", "sdxl")))
        pipe.load_textual_inversion(emb["clip_l"], token="<emb>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(emb["clip_g"], token="<emb>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    assert np.abs(image(pipe, "a <emb> cat") - base).mean() > 1e-3
