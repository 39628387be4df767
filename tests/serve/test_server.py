"""The inference server end to end: real processes, models from the emulator's S3, WebUI-shaped answers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import threading
import time
import urllib.error

import numpy as np
import pytest
from PIL import Image

from aws_extension.contract.infotext import parse_infotext

SMALL = {"steps": 2, "width": 64, "height": 64, "cfg_scale": 5.0}
# A seed alone and inside a batch, on the CPU: at most this many levels apart in any pixel. Measured (torch 2.13, 2
# threads): 1 level in 1 of 12,288 values; 3 leaves room for other CPUs' kernels. Another seed: ~42 levels on average.
BATCH_LEVELS = 3


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pictures(body) -> list:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in body["images"]]


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def png(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def sd1(cloud, **models):
    return {"checkpoint": cloud["tiny-sd1"], **models}


def test_txt2img_answers_like_the_webui_api_and_seeds_reproduce(server, cloud):
    payload = {**SMALL, "prompt": "a cat", "negative_prompt": "blurry", "seed": 1234, "batch_size": 2, "n_iter": 2,
               "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    status, body = server.invoke("txt2img", payload, sd1(cloud))
    assert status == 200, body
    images = pictures(body)
    assert len(images) == 4 and all(im.size == (64, 64) for im in images)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [1234, 1235, 1236, 1237] and info["seed"] == 1234
    assert info["sd_model_hash"] == sha256(cloud["files"]["checkpoint"][0])[:10]
    assert info["sd_model_name"] == "tiny-sd1" and len(info["infotexts"]) == 4
    # each PNG carries its own infotext, which the WebUI's PNG Info reads back
    read = parse_infotext(images[1].info["parameters"])
    assert read["Prompt"] == "a cat" and read["Negative prompt"] == "blurry"
    assert read["Seed"] == "1235" and read["Sampler"] == "DPM++ 2M" and read["Schedule type"] == "Karras"
    assert read["Model hash"] == info["sd_model_hash"] and read["Size-1"] == "64"
    assert body["parameters"]["seed"] == 1234 and body["parameters"]["sampler_name"] == "DPM++ 2M"
    # "reuse seed": the third image alone, asked for by its seed, is the same picture. Not bit for bit: a batch of 2
    # and a batch of 1 take other CPU kernels (summation order), a level or two apart in a few pixels.
    alone = {**payload, "seed": 1236, "batch_size": 1, "n_iter": 1}
    status, again = server.invoke("txt2img", alone, sd1(cloud))
    assert status == 200
    gap = np.abs(pixels(pictures(again)[0]) - pixels(images[2]))
    assert gap.max() <= BATCH_LEVELS and gap.mean() < 0.05, (gap.max(), gap.mean())
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 10  # another seed is another picture
    # the same request again: the same image, bit for bit
    status, repeated = server.invoke("txt2img", alone, sd1(cloud))
    assert np.array_equal(pixels(pictures(repeated)[0]), pixels(pictures(again)[0]))


def test_every_sampler_generates(server, cloud):
    for sampler, schedule in [("Euler a", None), ("Euler", "Exponential"), ("DPM++ SDE", "Karras"), ("DDIM", None),
                              ("UniPC", None), ("DPM++ 2M Karras", None)]:
        status, body = server.invoke("txt2img", {**SMALL, "seed": 7, "sampler_name": sampler, "scheduler": schedule},
                                     sd1(cloud))
        assert status == 200, (sampler, body)
        assert pictures(body)[0].size == (64, 64)


def test_variation_seed_moves_the_picture_a_little(server, cloud):
    base = {**SMALL, "seed": 5, "subseed": 9}
    _, plain = server.invoke("txt2img", base, sd1(cloud))
    _, varied = server.invoke("txt2img", {**base, "subseed_strength": 0.3}, sd1(cloud))
    assert not np.array_equal(pixels(pictures(plain)[0]), pixels(pictures(varied)[0]))
    read = parse_infotext(json.loads(varied["info"])["infotexts"][0])
    assert read["Variation seed"] == "9" and read["Variation seed strength"] == "0.3"


def test_sdxl_checkpoint_is_loaded_as_sdxl(server, cloud):
    status, body = server.invoke("txt2img", {**SMALL, "seed": 3, "prompt": "a dog", "width": 64, "height": 96},
                                 {"checkpoint": cloud["tiny-sdxl"]})
    assert status == 200, body
    assert pictures(body)[0].size == (64, 96)
    assert json.loads(body["info"])["sd_model_name"] == "tiny-sdxl"
    assert "SDXL" in server.output() or "sdxl" in server.output()  # the log names the detected type


def test_img2img_with_a_mask_keeps_the_unmasked_part(server, cloud):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    payload = {**SMALL, "seed": 11, "init_images": [png(init)], "mask": png(mask), "mask_blur": 0,
               "denoising_strength": 0.9}
    status, body = server.invoke("img2img", payload, sd1(cloud))
    assert status == 200, body
    out = pixels(pictures(body)[0])
    source = pixels(init)
    inside, outside = mask_array(mask) > 0, mask_array(mask) == 0
    assert np.array_equal(out[outside], source[outside])
    assert np.abs(out[inside] - source[inside]).mean() > 5
    read = parse_infotext(json.loads(body["info"])["infotexts"][0])
    assert read["Denoising strength"] == "0.9"
    assert body["parameters"]["init_images"] is None  # not echoed back, as the WebUI does


def mask_array(mask):
    return np.asarray(mask)


def test_img2img_strength_decides_how_far_it_moves(server, cloud):
    init = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = []
    for strength in (0.05, 0.3, 1.0):
        status, body = server.invoke("img2img", {**SMALL, "steps": 10, "seed": 2, "init_images": [png(init)],
                                                 "denoising_strength": strength}, sd1(cloud))
        assert status == 200, body
        out.append(pixels(pictures(body)[0]))
    # measured from the least-changed picture: the tiny random VAE alone moves far from any init image
    assert np.abs(out[1] - out[0]).mean() < np.abs(out[2] - out[0]).mean()


def test_lora_in_the_prompt_changes_the_picture_and_goes_away_after(server, cloud):
    models = sd1(cloud, lora=[cloud["tiny-lora"]])
    base = {**SMALL, "seed": 21, "prompt": "a house"}
    _, plain = server.invoke("txt2img", base, models)
    status, with_lora = server.invoke("txt2img", {**base, "prompt": "a house <lora:tiny-lora:1.0>"}, models)
    assert status == 200, with_lora
    assert not np.array_equal(pixels(pictures(plain)[0]), pixels(pictures(with_lora)[0]))
    read = parse_infotext(json.loads(with_lora["info"])["infotexts"][0])
    assert read["Lora hashes"] == f"tiny-lora: {sha256(cloud['files']['lora'][0])[:12]}"
    assert "<lora:tiny-lora:1.0>" in read["Prompt"]
    _, after = server.invoke("txt2img", base, models)  # the checkpoint's own weights are back, exactly
    assert np.array_equal(pixels(pictures(plain)[0]), pixels(pictures(after)[0]))


def test_lora_not_sent_is_refused_by_name(server, cloud):
    status, body = server.invoke("txt2img", {**SMALL, "prompt": "x <lora:missing:0.8>"}, sd1(cloud))
    assert status == 400 and body["field"] == "prompt" and "missing" in body["error"]


def test_embedding_by_name_and_vae_override(server, cloud):
    base = {**SMALL, "seed": 31, "prompt": "a tree"}
    models = sd1(cloud, embeddings=[cloud["tiny-emb"]])
    _, plain = server.invoke("txt2img", base, models)
    status, with_emb = server.invoke("txt2img", {**base, "prompt": "a tree tiny-emb"}, models)
    assert status == 200, with_emb
    assert not np.array_equal(pixels(pictures(plain)[0]), pixels(pictures(with_emb)[0]))
    assert "TI hashes: " in json.loads(with_emb["info"])["infotexts"][0]
    status, with_vae = server.invoke("txt2img", base, sd1(cloud, vae=cloud["tiny-vae"]))
    assert status == 200, with_vae
    assert not np.array_equal(pixels(pictures(plain)[0]), pixels(pictures(with_vae)[0]))
    info = json.loads(with_vae["info"])
    assert info["sd_vae_name"] == "tiny-vae" and info["sd_vae_hash"] == sha256(cloud["files"]["vae"][0])[:10]
    _, back = server.invoke("txt2img", base, sd1(cloud))
    assert np.array_equal(pixels(pictures(plain)[0]), pixels(pictures(back)[0]))


def test_refusals_name_the_field_and_the_server_stays_up(server, cloud):
    cases = [
        ({"task": "txt2img", "payload": {"enable_hr": True}, "models": sd1(cloud)}, 400, "enable_hr"),
        ({"task": "txt2img", "payload": {"width": 65}, "models": sd1(cloud)}, 400, "width"),
        ({"task": "txt2img", "payload": {}, "models": {}}, 400, "models.checkpoint"),
        ({"task": "txt2img", "payload": {"alwayson_scripts": {"controlnet": {}}}, "models": sd1(cloud)}, 400,
         "alwayson_scripts"),
    ]
    for body, code, field in cases:
        status, answer = server.post(body)
        assert (status, answer.get("field")) == (code, field), answer
    assert server.post(b"{not json")[0] == 400
    missing = cloud["tiny-sd1"].replace("tiny-sd1", "nothing-here")
    status, answer = server.invoke("txt2img", SMALL, {"checkpoint": missing})
    assert status == 404 and missing in answer["error"]
    status, answer = server.invoke("txt2img", SMALL, {"checkpoint": cloud["broken"]})
    assert status == 422 and "broken.safetensors" in answer["error"]
    assert server.ping()[0] == 200
    assert server.invoke("txt2img", SMALL, sd1(cloud))[0] == 200


def invoke_while_pinging(server, models):
    """An invocation on its own thread, with /ping asked meanwhile: it must stay quick while models load."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(answer=server.invoke("txt2img", SMALL, models)))
    thread.start()
    while thread.is_alive():
        t0 = time.monotonic()
        assert server.ping()[0] == 200 and time.monotonic() - t0 < 2
        time.sleep(0.1)
    return result["answer"]


def test_lifecycle_ping_while_starting_cache_eviction_and_sigterm(cloud, tmp_path):
    from conftest import Server

    sizes = [p.stat().st_size for p in cloud["files"]["checkpoint"]]
    # room for one checkpoint at a time: switching evicts, and switching back fetches again
    server = Server(cloud["env"], tmp_path / "cache", cache_gb=max(sizes) * 1.5 / 1024 ** 3,
                    extra_env={"SD_SAGEMAKER_SHUTDOWN_SECONDS": "8"})
    try:
        started = time.monotonic()
        status, body = server.ping()
        assert status == 200 and time.monotonic() - started < 2
        assert body["status"] == "loading"  # torch and diffusers are still importing
        for name in ("tiny-sd1", "tiny-sdxl", "tiny-sd1"):
            status, answer = invoke_while_pinging(server, {"checkpoint": cloud[name]})
            assert status == 200, answer
        cache = server.ping()[1]["cache"]
        assert cache["misses"] == 3 and cache["entries"] == 1

        # SIGTERM during a long generation: new work is turned away, the running one stops cleanly
        result = {}
        long_job = {**SMALL, "steps": 150, "n_iter": 100}
        thread = threading.Thread(target=lambda: result.update(
            answer=server.invoke("txt2img", long_job, {"checkpoint": cloud["tiny-sd1"]})))
        thread.start()
        time.sleep(1.5)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        status, answer = server.invoke("txt2img", SMALL, {"checkpoint": cloud["tiny-sd1"]}, timeout=10)
        assert status == 503 and "shutting down" in answer["error"]
        thread.join(30)
        assert result["answer"][0] == 503 and "shutting down" in result["answer"][1]["error"]
        assert server.proc.wait(30) == 0
        assert time.monotonic() - signalled < 30
    finally:
        server.stop()


def ping_answer(server):
    """/ping's status and body, whatever the status (the Server helper's urlopen raises on 5xx)."""
    try:
        return server.ping()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_while_loading(server, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = ping_answer(server)
        if body["status"] != "loading":
            return status, body
        time.sleep(0.2)
    raise AssertionError("still loading:\n" + server.output())


def test_preload_keeps_ping_unhealthy_until_loaded_and_realtime_says_still_loading(cloud, tmp_path):
    from conftest import Server

    uri = cloud["tiny-sd1"]
    server = Server(cloud["env"], tmp_path / "cache", extra_env={
        "SD_SAGEMAKER_PRELOAD_CHECKPOINT": uri, "SD_SAGEMAKER_ENDPOINT_TYPE": "real-time",
        "SD_SAGEMAKER_REALTIME_WAIT": "1"})
    try:
        status, body = ping_answer(server)  # torch is still importing: SageMaker must not send traffic yet
        assert (status, body["status"]) == (503, "loading")
        started = time.monotonic()
        status, answer = server.invoke("txt2img", SMALL, sd1(cloud), timeout=30)
        assert (status, answer["status"]) == (503, "loading") and time.monotonic() - started < 10
        assert answer["error"].startswith("The endpoint is still loading the model tiny-sd1")
        assert answer["error"].endswith("try again in a minute.")
        status, body = wait_while_loading(server)
        assert (status, body["status"]) == (200, "ready") and body["cache"]["misses"] == 1
        assert f"preloaded {uri}" in server.output()
        status, answer = server.invoke("txt2img", SMALL, sd1(cloud))
        assert status == 200, answer
        assert server.ping()[1]["cache"]["misses"] == 1  # the request found it on disk and in memory
        assert server.output().count(f"loaded {uri} (") == 1
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["missing", "broken"])
def test_a_preload_that_fails_makes_ping_fail_naming_the_file(cloud, tmp_path, name):
    from conftest import Server

    uri = cloud["broken"] if name == "broken" else cloud["tiny-sd1"].replace("tiny-sd1", "nothing-here")
    server = Server(cloud["env"], tmp_path / "cache", extra_env={"SD_SAGEMAKER_PRELOAD_CHECKPOINT": uri})
    try:
        status, body = wait_while_loading(server)
        assert (status, body["status"]) == (500, "failed")
        assert uri in body["error"] and uri.rsplit("/", 1)[-1] in server.output()
    finally:
        server.stop()
