"""Prompts read as the WebUI reads them: tags, emphasis, long prompts, CLIP skip, embeddings (tiny random CLIPs)."""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from aws_extension.core.errors import UserError  # noqa: E402
from aws_extension.serve.prompts import (  # noqa: E402
    BREAK_MARK, Embeddings, _chunks, encode_prompts, extract_networks, parse_attention)
from aws_extension.contract.request import BadRequest  # noqa: E402
from aws_extension.serve.tokenizer import write_tokenizer  # noqa: E402

BOS, EOS = 49406, 49407
A, CAT, DOG, COMMA = 320, 2368, 1929, 267  # "a", "cat", "dog", ","


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp("tok") / "t")
    return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


@pytest.fixture(scope="module")
def tok2(tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp("tok") / "t2", pad_token="!")
    return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def config(hidden, layers, **extra):
    return transformers.CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                       num_attention_heads=4, vocab_size=49408, max_position_embeddings=77, **extra)


def text_model(hidden, layers, **extra):
    """Random weights; the final layer norm's bias moved off zero, or every mean would be about 0 (CLIP's is not)."""
    model = (transformers.CLIPTextModelWithProjection if extra else transformers.CLIPTextModel)(
        config(hidden, layers, **extra)).eval()
    with torch.no_grad():
        getattr(model, "text_model", model).final_layer_norm.bias.normal_(0.5, 0.2)
    return model


@pytest.fixture(scope="module")
def sd1(tok):
    torch.manual_seed(0)
    return SimpleNamespace(tokenizer=tok, text_encoder=text_model(32, 3))


@pytest.fixture(scope="module")
def sdxl(tok, tok2):
    torch.manual_seed(1)
    return SimpleNamespace(tokenizer=tok, text_encoder=text_model(32, 3), tokenizer_2=tok2,
                           text_encoder_2=text_model(48, 2, projection_dim=48))


def ids(tokens, pad=EOS):
    """One chunk as the WebUI lays it out: BOS, the tokens, EOS, padding up to 77."""
    return torch.tensor([[BOS] + tokens + [EOS] + [pad] * (75 - len(tokens))])


def run(encoder, chunk_ids):
    with torch.no_grad():
        return encoder(chunk_ids, output_hidden_states=True)


# --- parse_attention ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a (b:1.5) [c] ((d))", [("a ", 1), ("b", 1.5), (" ", 1), ("c", 1 / 1.1), (" ", 1), ("d", 1.21)]),
    ("", [("", 1.0)]),
    ("plain text", [("plain text", 1.0)]),
    (r"a \(b\) \[c\] \\ \x", [(r"a (b) [c] \ x", 1.0)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # the WebUI's own docstring example
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("a (b", [("a ", 1.0), ("b", 1.1)]),
    ("a [[b", [("a ", 1.0), ("b", 1 / 1.21)]),
    ("a b) c] :1.5)", [("a b) c] :1.5)", 1.0)]),
    ("(a (b:2))", [("a ", 1.1), ("b", 2.2)]),
    ("( a : 0.5 )", [(" a ", 0.5)]),
    ("(a)(b) c", [("ab", 1.1), (" c", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("a BREAK b", [("a", 1.0), BREAK_MARK, ("b", 1.0)]),
    ("(a BREAK b) BREAK BREAK", [("a", 1.1), BREAK_MARK, ("b", 1.1), BREAK_MARK, BREAK_MARK]),
    ("aBREAK break", [("aBREAK break", 1.0)]),
])
def test_parse_attention(text, expected):
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_parse_attention_bad_weight():
    with pytest.raises(BadRequest, match="1.2.3"):
        parse_attention("(a:1.2.3)")


# --- extract_networks -----------------------------------------------------------------------------------------

def test_extract_networks():
    text, nets = extract_networks("a <lora:foo:0.7>, b <lyco:bar> <lora:foo:0.3><lora:x y:te=0.5:unet=0.5>")
    assert text == "a , b  "
    assert nets == [("foo", 0.3), ("bar", 1.0), ("x y", 0.5)]
    assert extract_networks("no tags (here:1.2) <3") == ("no tags (here:1.2) <3", [])
    assert extract_networks("<lora:same:0.5:0.5>")[1] == [("same", 0.5)]


@pytest.mark.parametrize("prompt, message", [
    ("a <hypernet:h:1>", "hypernetworks are not supported"),
    ("<foo:bar>", "not 'foo' \\(hypernetworks are not supported"),
    ("<lora:x:0.5:1>", "<lora:x:0.5:1>"),
    ("<lora:x:abc>", "not a number"),
    ("<lora:x:1:dyn=4>", "<lora:x:1:dyn=4>"),
])
def test_extract_networks_refusals(prompt, message):
    with pytest.raises(BadRequest, match=message) as info:
        extract_networks(prompt)
    assert info.value.field == "prompt"


# --- encoding -------------------------------------------------------------------------------------------------

def test_sd1_plain_prompt_is_the_text_encoder_output(sd1, tok):
    out = encode_prompts(sd1, "a photo of a cat", "")
    plain = tok("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert out["prompt_embeds"].shape == (1, 77, 32)
    assert torch.equal(out["prompt_embeds"], run(sd1.text_encoder, plain).last_hidden_state)
    assert torch.equal(out["negative_prompt_embeds"], run(sd1.text_encoder, ids([])).last_hidden_state)
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}


def test_sdxl_plain_prompt(sdxl, tok):
    out = encode_prompts(sdxl, "a cat", "")
    tokens = tok("a cat", add_special_tokens=False).input_ids
    first, second = run(sdxl.text_encoder, ids(tokens)), run(sdxl.text_encoder_2, ids(tokens, pad=0))
    assert out["prompt_embeds"].shape == (1, 77, 80)
    assert torch.equal(out["prompt_embeds"], torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1))
    assert torch.equal(out["pooled_prompt_embeds"], second.text_embeds)
    # the WebUI (sd_models_xl) zeroes an empty SDXL negative prompt, pooled embedding included; " " is encoded
    assert not out["negative_prompt_embeds"].any() and not out["negative_pooled_prompt_embeds"].any()
    assert out["negative_prompt_embeds"].shape == (1, 77, 80) and out["negative_pooled_prompt_embeds"].shape == (1, 48)
    spaced = encode_prompts(sdxl, "a cat", " ")
    empty2 = run(sdxl.text_encoder_2, ids([], pad=0))
    assert torch.equal(spaced["negative_pooled_prompt_embeds"], empty2.text_embeds)
    assert torch.equal(spaced["negative_prompt_embeds"][..., 32:], empty2.hidden_states[-2])


def test_emphasis_scales_tokens_and_keeps_the_mean(sd1):
    plain = encode_prompts(sd1, "a cat sits", "")["prompt_embeds"][0]
    weighted = encode_prompts(sd1, "a (cat:1.5) sits", "")["prompt_embeds"][0]
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    ratio = weighted / plain
    rescale = ratio[0, 0].item()
    assert rescale != pytest.approx(1.0)
    cat = 2  # BOS, a, cat
    assert torch.allclose(ratio[cat], torch.full((32,), 1.5 * rescale), rtol=1e-4)
    others = torch.cat([ratio[:cat], ratio[cat + 1:]])
    assert torch.allclose(others, torch.full_like(others, rescale), rtol=1e-4)


def test_long_prompt_gives_two_chunks_and_pads_the_negative(sd1):
    out = encode_prompts(sd1, " ".join(["cat"] * 100), "dog")
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 154, 32)
    te = sd1.text_encoder
    assert torch.equal(out["prompt_embeds"][:, :77], run(te, ids([CAT] * 75)).last_hidden_state)
    assert torch.equal(out["prompt_embeds"][:, 77:], run(te, ids([CAT] * 25)).last_hidden_state)
    assert torch.equal(out["negative_prompt_embeds"][:, :77], run(te, ids([DOG])).last_hidden_state)
    assert torch.equal(out["negative_prompt_embeds"][:, 77:], run(te, ids([])).last_hidden_state)
    assert encode_prompts(sd1, " ".join(["cat"] * 75), "")["prompt_embeds"].shape == (1, 77, 32)
    unpadded = encode_prompts(sd1, " ".join(["cat"] * 100), "dog", pad=False)
    assert unpadded["prompt_embeds"].shape == (1, 154, 32) and unpadded["negative_prompt_embeds"].shape == (1, 77, 32)


def test_comma_backtrack(tok, sd1):
    chunks = _chunks(parse_attention("cat " * 60 + ", " + "dog " * 20), tok, 0, None)
    assert [c[0] for c in chunks] == [ids([CAT] * 60 + [COMMA])[0].tolist(), ids([DOG] * 20)[0].tolist()]
    far = _chunks(parse_attention("cat " * 50 + ", " + "dog " * 30), tok, 0, None)  # comma 25 tokens back: no
    assert [c[0] for c in far] == [ids([CAT] * 50 + [COMMA] + [DOG] * 24)[0].tolist(), ids([DOG] * 6)[0].tolist()]
    weighted = _chunks(parse_attention("cat " * 60 + ", " + "(dog:1.3) " * 20), tok, 0, None)
    assert weighted[1][1] == [1.0] + [1.3] * 20 + [1.0] * 56
    out = encode_prompts(sd1, "cat " * 60 + ", " + "dog " * 20, "")["prompt_embeds"]
    assert torch.equal(out[:, 77:], run(sd1.text_encoder, ids([DOG] * 20)).last_hidden_state)


def test_break(sd1):
    out = encode_prompts(sd1, "a cat BREAK a dog", "")
    assert out["prompt_embeds"].shape == (1, 154, 32)
    assert torch.equal(out["prompt_embeds"][:, 77:], run(sd1.text_encoder, ids([A, DOG])).last_hidden_state)
    assert torch.equal(out["negative_prompt_embeds"][:, 77:], out["negative_prompt_embeds"][:, :77])


def test_clip_skip(sd1):
    out = encode_prompts(sd1, "a cat", "", clip_skip=2)["prompt_embeds"]
    states = run(sd1.text_encoder, ids([A, CAT])).hidden_states
    with torch.no_grad():
        assert torch.equal(out, sd1.text_encoder.final_layer_norm(states[-2]))
    for bad in (0, 4):
        with pytest.raises(BadRequest, match="clip_skip"):
            encode_prompts(sd1, "a cat", "", clip_skip=bad)


def test_negative_prompt_keeps_tags_as_text_and_prompt_drops_them(sd1):
    out = encode_prompts(sd1, "a cat <lora:x:0.5>", "<lora:y:1>")
    ref = encode_prompts(sd1, "a cat", "<lora:y:1>")
    assert torch.equal(out["prompt_embeds"], ref["prompt_embeds"])
    assert not torch.equal(out["negative_prompt_embeds"], encode_prompts(sd1, "", "")["negative_prompt_embeds"])


@pytest.mark.parametrize("prompt, negative", [("[cat:dog:0.5]", ""), ("[cat:10]", ""), ("[cat|dog]", ""),
                                              ("a AND b", ""), ("", "[a (b):c:3]")])
def test_prompt_editing_is_refused(sd1, prompt, negative):
    with pytest.raises(BadRequest, match="not supported"):
        encode_prompts(sd1, prompt, negative)


def test_brackets_that_are_not_editing_are_emphasis(sd1):
    encode_prompts(sd1, r"[a:b] \[x:1] (y:2)", "AND [c]")


# --- textual inversion ----------------------------------------------------------------------------------------

def with_tokens(encoder, vectors):
    """The classic way, as a reference: a copy of the encoder with the vectors as new tokens 49408..."""
    copied = copy.deepcopy(encoder)
    copied.resize_token_embeddings(49408 + len(vectors))
    with torch.no_grad():
        copied.get_input_embeddings().weight[49408:] = vectors
    return copied


def test_embedding_vectors_replace_the_name(sd1, tmp_path):
    vectors = torch.randn(2, 32)
    torch.save({"string_to_param": {"*": vectors}, "name": "mystyle", "step": 1}, tmp_path / "mystyle.pt")
    emb = Embeddings(sd1)
    emb.load("mystyle", tmp_path / "mystyle.pt", "sd1")
    out = encode_prompts(sd1, "a MyStyle, cat", "otherstyle", embeddings=emb)
    reference = run(with_tokens(sd1.text_encoder, vectors), ids([A, 49408, 49409, COMMA, CAT]))
    assert torch.allclose(out["prompt_embeds"], reference.last_hidden_state, atol=1e-6)
    plain = encode_prompts(sd1, "", "otherstyle")["negative_prompt_embeds"]
    assert torch.equal(out["negative_prompt_embeds"], plain)  # unknown names stay text
    assert emb.used(["a (mystyle:1.2)", "otherstyle"]) == ["mystyle"] and emb.used(["my style"]) == []
    # an embedding is never cut by a chunk boundary: 74 tokens, then its 2 vectors go to the next chunk
    chunks = _chunks(parse_attention("cat " * 74 + "mystyle dog"), sd1.tokenizer, 0, emb)
    assert chunks[0][0] == ids([CAT] * 74)[0].tolist() and chunks[0][2] == []
    assert chunks[1][0][:4] == [BOS, 0, 0, DOG] and chunks[1][2] == [(1, "mystyle")]
    long = encode_prompts(sd1, "cat " * 74 + "mystyle dog", "", embeddings=emb)["prompt_embeds"]
    second = run(with_tokens(sd1.text_encoder, vectors), ids([49408, 49409, DOG])).last_hidden_state
    assert torch.allclose(long[:, 77:], second, atol=1e-6)


def test_embedding_formats_and_wrong_size(sd1, sdxl, tmp_path):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.randn(3, 32)}, str(tmp_path / "a.safetensors"))
    torch.save({"<b>": torch.randn(32)}, tmp_path / "b.bin")
    torch.save({"string_to_param": {"*": torch.randn(1, 48)}}, tmp_path / "wide.pt")
    emb = Embeddings(sd1)
    emb.load("a", tmp_path / "a.safetensors", "sd1")
    emb.load("b", tmp_path / "b.bin")
    assert emb.vectors["a"][0].shape == (3, 32) and emb.vectors["b"][0].shape == (1, 32)
    with pytest.raises(UserError, match=r"wide\.pt.*48.*32"):
        emb.load("wide", tmp_path / "wide.pt")
    with pytest.raises(UserError, match=r"a\.safetensors.*SD1.*SDXL"):
        Embeddings(sdxl).load("a", tmp_path / "a.safetensors")
    with pytest.raises(UserError, match=r"a\.safetensors.*SD1.*SDXL"):
        Embeddings().load("a", tmp_path / "a.safetensors", "sdxl")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"junk\.pt"):
        emb.load("junk", tmp_path / "junk.pt")


def test_sdxl_embedding(sdxl, tmp_path):
    from safetensors.torch import save_file
    clip_l, clip_g = torch.randn(2, 32), torch.randn(2, 48)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xl.safetensors"))
    emb = Embeddings(sdxl)
    emb.load("xlstyle", tmp_path / "xl.safetensors", "sdxl")
    out = encode_prompts(sdxl, "xlstyle cat", "", embeddings=emb)
    first = run(with_tokens(sdxl.text_encoder, clip_l), ids([49408, 49409, CAT]))
    second = run(with_tokens(sdxl.text_encoder_2, clip_g), ids([49408, 49409, CAT], pad=0))
    expected = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1)
    assert torch.allclose(out["prompt_embeds"], expected, atol=1e-6)
    assert torch.allclose(out["pooled_prompt_embeds"], second.text_embeds, atol=1e-6)
    save_file({"clip_l": clip_l, "clip_g": torch.randn(2, 32)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match=r"bad\.safetensors.*32.*48"):
        emb.load("bad", tmp_path / "bad.safetensors")


# --- the dict as pipeline arguments ---------------------------------------------------------------------------

def tiny_unet(cross, **extra):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                cross_attention_dim=cross, norm_num_groups=8, **extra)


def tiny_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=8)


def test_works_as_sd1_pipeline_kwargs(sd1):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    torch.manual_seed(2)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=sd1.text_encoder, tokenizer=sd1.tokenizer,
                                   unet=tiny_unet(32), scheduler=EulerDiscreteScheduler(steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    kwargs = encode_prompts(pipe, "cat " * 80, "blurry")
    latents = pipe(**kwargs, num_inference_steps=2, height=32, width=32, output_type="latent").images
    assert latents.shape == (1, 4, 32 // pipe.vae_scale_factor, 32 // pipe.vae_scale_factor)


def test_works_as_sdxl_pipeline_kwargs(sdxl):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    torch.manual_seed(3)
    unet = tiny_unet(80, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 48, use_linear_projection=True)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=sdxl.text_encoder, tokenizer=sdxl.tokenizer,
                                     text_encoder_2=sdxl.text_encoder_2, tokenizer_2=sdxl.tokenizer_2, unet=unet,
                                     scheduler=EulerDiscreteScheduler(steps_offset=1), add_watermarker=False)
    kwargs = encode_prompts(pipe, "a cat", "dog " * 80)
    assert kwargs["prompt_embeds"].shape == (1, 154, 80) and kwargs["pooled_prompt_embeds"].shape == (1, 48)
    latents = pipe(**kwargs, num_inference_steps=2, height=32, width=32, output_type="latent").images
    assert latents.shape[:2] == (1, 4)


def test_unbound_embeddings_as_the_engine_uses_them(sd1, tmp_path):
    """Embeddings() without a pipeline: loaded by kind, used() with CLIP's own tokenizer, sizes checked on encoding."""
    vectors = torch.randn(1, 32)
    torch.save({"string_to_param": {"*": vectors}}, tmp_path / "easynegative.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 48)}}, tmp_path / "wide.pt")
    emb = Embeddings()
    emb.load("easynegative", tmp_path / "easynegative.pt", "sd1")
    assert emb.used(["a cat", "(EasyNegative:1.2), blurry"]) == ["easynegative"]
    out = encode_prompts(sd1, "a cat", "easynegative", embeddings=emb)
    reference = run(with_tokens(sd1.text_encoder, vectors), ids([49408]))
    assert torch.allclose(out["negative_prompt_embeds"], reference.last_hidden_state, atol=1e-6)
    with pytest.raises(UserError, match=r"wide\.pt.*48.*32"):  # bound by encode_prompts: checked at once
        emb.load("wide", tmp_path / "wide.pt", "sd1")
    assert list(emb.vectors) == ["easynegative"]
    unbound = Embeddings()
    unbound.load("wide", tmp_path / "wide.pt", "sd1")
    with pytest.raises(UserError, match=r"wide\.pt.*48.*32"):
        encode_prompts(sd1, "a cat", "", embeddings=unbound)
    emb.clear()
    assert emb.used(["easynegative"]) == []
