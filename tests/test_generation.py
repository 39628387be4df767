"""The generation client against the emulator: models resolved from the bucket, endpoint checks, size limits, and
the async path with the emulator playing SageMaker (it writes the answer where SageMaker would). Generation through
real server processes is tested in tests/serve/."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from async_stand_in import BUCKET, in_service, install, png, put_models, server_answer
from botocore.exceptions import ClientError
from PIL import Image

from aws_extension.core import endpoints, generation
from aws_extension.core.endpoints import EndpointSpec
from aws_extension.core.errors import Interrupted, NotFound, Refused, TransferError, UserError
from aws_extension.core.generation import invoke, png_parameters
from aws_extension.core.models.lookup import find_checkpoint_by_hash, resolve_models
from aws_extension.local.emulator import ACCOUNT_ID, REGION

ROOT = Path(__file__).resolve().parents[1]
SHA = {"sd15.safetensors": "6ce0161689" + "a" * 54, "xl.ckpt": "31e35c80fc" + "b" * 54,
       "vae-ft.safetensors": "735e4c3a44" + "c" * 54}
MODELS = {
    "Stable-diffusion": ["sd15.safetensors", "xl.ckpt"],
    "VAE": ["vae-ft.safetensors"],
    "Lora": ["detail.safetensors", "detail.pt", "style.pt"],
    "embeddings": ["EasyNegative.safetensors", "art.pt", "bad-hands.bin", "old.ckpt"],
}


def uri(folder: str, name: str) -> str:
    return f"s3://{BUCKET}/models/{folder}/{name}"


@pytest.fixture
def s3(aws_env):
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def cloud(aws, s3):
    """A bucket with a few models and their records."""
    put_models(aws, s3, MODELS, SHA)
    return aws


@pytest.fixture
def fake_async(s3, monkeypatch):
    stand_in = install(monkeypatch, s3)
    yield stand_in
    stand_in.join()


def keys(s3, prefix: str) -> list:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def sagemaker_variant(name: str) -> dict:
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[ACCOUNT_ID][REGION].endpoints[name].production_variants[0]


# -- models ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wanted", ["sd15.safetensors", "models/Stable-diffusion/sd15.safetensors",
                                    uri("Stable-diffusion", "sd15.safetensors"), "sd15", "6ce0161689",
                                    "6CE0161689", "sd15.safetensors [6ce0161689]", "renamed.safetensors [6ce0161689]"])
def test_checkpoint_by_name_key_stem_title_or_hash(cloud, wanted):
    models = resolve_models(cloud, wanted, None, ["a cat"])
    assert models == {"checkpoint": uri("Stable-diffusion", "sd15.safetensors"), "vae": None, "lora": [],
                      "embeddings": []}


def test_missing_checkpoint_names_it_and_lists_what_exists(cloud):
    with pytest.raises(NotFound) as caught:
        resolve_models(cloud, "sdxl-base.safetensors", None, ["a cat"])
    message = str(caught.value)
    assert "'sdxl-base.safetensors'" in message and "models/Stable-diffusion/" in message
    assert "sd15.safetensors, xl.ckpt" in message
    with pytest.raises(NotFound, match="'0123456789'"):
        resolve_models(cloud, "0123456789", None, ["a cat"])
    with pytest.raises(Refused, match="Choose a checkpoint"):
        resolve_models(cloud, " ", None, ["a cat"])


def test_find_checkpoint_by_hash(cloud):
    assert find_checkpoint_by_hash(cloud, "31e35c80fc") == "xl.ckpt"
    assert find_checkpoint_by_hash(cloud, "31E35C80FC" + "b" * 4) == "xl.ckpt"
    assert find_checkpoint_by_hash(cloud, "0000000000") is None
    assert find_checkpoint_by_hash(cloud, "not a hash") is None


def test_vae_by_name_or_hash_and_the_webui_none(cloud):
    for vae in ("vae-ft.safetensors", "vae-ft", "735e4c3a44"):
        assert resolve_models(cloud, "xl.ckpt", vae, [""])["vae"] == uri("VAE", "vae-ft.safetensors")
    for vae in (None, "", "None", "Automatic"):
        assert resolve_models(cloud, "xl.ckpt", vae, [""])["vae"] is None
    with pytest.raises(NotFound, match=r"No VAE 'kl-f8' in s3://.*/models/VAE/ \(there: vae-ft.safetensors\)"):
        resolve_models(cloud, "xl.ckpt", "kl-f8", [""])


def test_loras_in_the_prompt_must_all_be_in_the_cloud(cloud):
    models = resolve_models(cloud, "sd15", None, ["a cat <lora:style:0.8>, <lyco:detail:0.5> <lora:style:1>"],
                            ["<lora:ignored:1> in a negative prompt is text"])
    # in order of appearance; of detail.safetensors and detail.pt the safetensors
    assert models["lora"] == [uri("Lora", "style.pt"), uri("Lora", "detail.safetensors")]
    with pytest.raises(NotFound) as caught:
        resolve_models(cloud, "sd15", None, ["<lora:missing1:1> <lora:style:1>", "<lora:missing2>"])
    message = str(caught.value)
    assert "'missing1', 'missing2'" in message and "models/Lora/" in message and "style.pt" in message
    with pytest.raises(Refused, match="hypernetworks are not supported"):
        resolve_models(cloud, "sd15", None, ["<hypernet:anime:1>"])


def test_embeddings_named_as_words_in_either_prompt(cloud):
    def sent(prompt, negative=""):
        return [u.rsplit("/", 1)[1] for u in resolve_models(cloud, "sd15", None, [prompt], [negative])["embeddings"]]

    assert sent("a cat", "easynegative, (bad-hands:1.2)") == ["EasyNegative.safetensors", "bad-hands.bin"]
    assert sent("an ART piece") == ["art.pt"]
    assert sent("artistic, smart, bad-handsome, easynegatives") == []  # a word inside another is not a name
    assert sent("old") == []  # .ckpt is not an embedding file the server loads
    assert sent("<lora:style:1> art") == ["art.pt"]


# -- endpoint checks and real-time limits ---------------------------------------------------------------------------
def test_missing_or_creating_endpoint(cloud, emulator):
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    with pytest.raises(NotFound, match="Endpoint 'nope' does not exist"):
        invoke(cloud, "nope", "txt2img", {"prompt": "a cat"}, models)
    emulator.creating_seconds = 60
    name = endpoints.deploy(cloud, EndpointSpec(), background=False).name
    with pytest.raises(Refused, match=f"Endpoint '{name}' is Creating: wait until it is InService"):
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models)


@pytest.fixture
def realtime_calls(monkeypatch):
    from moto.sagemakerruntime.models import SageMakerRuntimeBackend

    calls = []
    original = SageMakerRuntimeBackend.invoke_endpoint

    def recorded(self, endpoint_name, unique_repr):
        calls.append(endpoint_name)
        return original(self, endpoint_name, unique_repr)

    monkeypatch.setattr(SageMakerRuntimeBackend, "invoke_endpoint", recorded)
    return calls


def test_real_time_limits_are_refused_before_sending(cloud, realtime_calls):
    name = in_service(cloud, "real-time")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    with pytest.raises(Refused) as caught:
        invoke(cloud, name, "txt2img", {"prompt": "a cat", "width": 2048, "height": 2048, "batch_size": 8}, models)
    assert "8 image(s) of 2048x2048" in str(caught.value) and "6 MB" in str(caught.value)
    assert "async endpoint" in str(caught.value)
    noise = Image.frombytes("RGB", (1300, 1300), os.urandom(1300 * 1300 * 3))  # noise: PNG cannot shrink it
    out = io.BytesIO()
    noise.save(out, format="PNG")
    big = base64.b64encode(out.getvalue()).decode()
    assert len(big) > 6_000_000
    with pytest.raises(Refused, match=r"The request is \d+\.\d MB; real-time endpoint .* at most 6 MB.*async"):
        invoke(cloud, name, "img2img", {"prompt": "a cat", "init_images": [big]}, models)
    with pytest.raises(Refused, match="would refuse the request: width must be a multiple of 8"):
        invoke(cloud, name, "txt2img", {"prompt": "a cat", "width": 100}, models)
    assert realtime_calls == []


def test_real_time_answer(cloud, emulator, realtime_calls):
    name = in_service(cloud, "real-time")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    request = {"task": "txt2img", "payload": {"prompt": "a cat", "seed": 7, "batch_size": 2}, "models": models}
    canned = {"results": [{"Body": server_answer(request, with_chunk=False).decode(), "ContentType": "application/json",
                           "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}]}
    post = urllib.request.Request(emulator.url + "/moto-api/static/sagemaker/endpoint-results",
                                  data=json.dumps(canned).encode(), method="POST")
    urllib.request.urlopen(post, timeout=10).read()
    states = []
    result = invoke(cloud, name, "txt2img", request["payload"], models, on_state=lambda s, m: states.append(s))
    assert len(realtime_calls) == 1  # (moto does not read the name from the path)
    assert states == ["generating", "done"]
    assert result.info["all_seeds"] == [7, 8] and result.parameters["prompt"] == "a cat"
    # PNGs that came without their infotext get it from info, as the WebUI keeps it with the file
    assert [png_parameters(i) for i in result.images] == result.infotexts
    assert all(text.startswith("a cat\nSteps: ") and f"Seed: {seed}," in text
               for text, seed in zip(result.infotexts, (7, 8)))
    assert Image.open(io.BytesIO(result.images[1])).size == (request["payload"].get("width", 512),) * 2


def model_error(status: int, body: str, message: str = "Received client error from primary") -> ClientError:
    response = {"Error": {"Code": "ModelError", "Message": message}, "OriginalStatusCode": status,
                "OriginalMessage": body, "ResponseMetadata": {"HTTPStatusCode": 424}}
    return ClientError(response, "InvokeEndpoint")


def test_container_errors_carry_the_servers_message():
    refused = generation._invoke_error("ep", model_error(400, json.dumps(
        {"error": "width must be a multiple of 8, not 100", "field": "width"})))
    assert isinstance(refused, Refused) and refused.field == "width"
    assert str(refused) == "Endpoint 'ep' refused the request: width must be a multiple of 8, not 100"
    missing = generation._invoke_error("ep", model_error(404, json.dumps({"error": "lora x.pt: not in the bucket"})))
    assert isinstance(missing, NotFound) and "lora x.pt: not in the bucket" in str(missing)
    failed = generation._invoke_error("ep", model_error(507, json.dumps({"error": "Out of GPU memory"})))
    assert type(failed) is UserError and str(failed) == "Endpoint 'ep' could not generate: Out of GPU memory"
    slow = generation._invoke_error("ep", model_error(0, "", "Your invocation timed out while waiting for a response "
                                                             "from container primary."))
    assert isinstance(slow, TransferError) and "60 seconds" in str(slow) and "async endpoint" in str(slow)


def test_a_model_still_loading_is_said_so():
    """A first request on a new instance fetches and loads a multi-GB checkpoint: the server answers 503 "loading",
    or AWS's 60 s run out. Neither is a matter of lowering the steps."""
    loading = generation._invoke_error("ep", model_error(503, json.dumps({"status": "loading"})))
    slow = generation._invoke_error("ep", model_error(0, "", "Your invocation timed out while waiting for a response "
                                                             "from container primary."))
    assert str(loading).startswith("Endpoint 'ep' is still loading the model (a first request on a new instance "
                                   "fetches and loads the checkpoint")
    assert "probably still loading the model" in str(slow) and "60 seconds" in str(slow)
    for exc in (loading, slow):
        assert "lower the steps" not in str(exc).lower() and str(exc).endswith(".")


# -- async ----------------------------------------------------------------------------------------------------------
def test_async_request_goes_through_s3_and_nothing_stays(cloud, s3, fake_async):
    name = in_service(cloud, "async")
    models = resolve_models(cloud, "sd15", "vae-ft", ["a cat <lora:style:0.5>"], ["easynegative"])
    states = []
    payload = {"prompt": "a cat <lora:style:0.5>", "negative_prompt": "easynegative", "seed": 42, "batch_size": 2}
    result = invoke(cloud, name, "txt2img", payload, models, on_state=lambda s, m: states.append((s, m)))
    [(key, request)] = fake_async.inputs
    assert key.startswith("inference/input/") and key.endswith(".json")
    assert request == {"task": "txt2img", "payload": payload, "models": models}
    assert [s for s, _ in states] == ["queued", "generating", "done"]
    assert key[len("inference/input/"):-5] in states[0][1]  # the inference id
    assert result.info["all_seeds"] == [42, 43] and len(result.images) == 2
    first = png_parameters(result.images[0])
    assert first.startswith("a cat <lora:style:0.5>\n") and "Seed: 42," in first
    assert keys(s3, "inference/") == []


def test_async_scaling_up_from_zero(cloud, fake_async):
    name = in_service(cloud, "async")
    variant = sagemaker_variant(name)
    variant["CurrentInstanceCount"] = 0
    states = []

    def instance_up():
        variant["CurrentInstanceCount"] = 1
        deadline = time.monotonic() + 10
        while "generating" not in [s for s, _ in states] and time.monotonic() < deadline:
            time.sleep(0.02)

    fake_async.before_answer = instance_up
    invoke(cloud, name, "txt2img", {"prompt": "a cat"}, resolve_models(cloud, "sd15", None, ["a cat"]),
           on_state=lambda s, m: states.append((s, m)))
    assert [s for s, _ in states] == ["queued", "scaling up from zero", "generating", "done"]
    assert states[1][1] == "scaling up from zero: usually 8–15 minutes"


@pytest.fixture
def sent_ttl(cloud) -> list:
    """RequestTTLSeconds of each InvokeEndpointAsync, as botocore sends it."""
    sent: list = []
    cloud.client("sagemaker-runtime").meta.events.register(
        "before-parameter-build.sagemaker-runtime.InvokeEndpointAsync",
        lambda params, **kw: sent.append(params["RequestTTLSeconds"]))
    return sent


def test_from_zero_the_wait_and_the_ttl_outlast_a_cold_start(cloud, fake_async, sent_ttl):
    """At 0 instances a request waits for the alarm, an instance, the image, the start and the model: 10-15 min or
    more. Neither the client's wait nor the request's TTL in SageMaker's queue may end first."""
    name = in_service(cloud, "async")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    fake_async.respond = lambda request: None  # capacity has not come yet
    sagemaker_variant(name)["CurrentInstanceCount"] = 0
    cancel, states = threading.Event(), []
    threading.Timer(3.0, cancel.set).start()
    with pytest.raises(Interrupted):  # still waiting after twice the 1.5 s asked for: stopped only by the cancel
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, timeout=1.5, cancel=cancel,
               on_state=lambda s, m: states.append(m))
    assert sent_ttl == [generation.FROM_ZERO_TIMEOUT] and generation.FROM_ZERO_TIMEOUT >= 30 * 60
    assert "scaling up from zero: usually 8–15 minutes" in states

    sagemaker_variant(name)["CurrentInstanceCount"] = 1  # with an instance up, the wait is the one asked for
    with pytest.raises(TransferError, match="no answer within 1.5 seconds"):
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, timeout=1.5)
    assert sent_ttl[1] == 60  # (at least a minute)


def test_async_failure_is_the_servers_message(cloud, s3, fake_async):
    name = in_service(cloud, "async")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    fake_async.respond = lambda request: ("failure", json.dumps(
        {"error": "steps must be between 1 and 150, not 500", "field": "steps"}).encode())
    with pytest.raises(Refused) as caught:
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models)
    assert str(caught.value) == f"Endpoint '{name}' refused the request: steps must be between 1 and 150, not 500"
    assert caught.value.field == "steps"
    fake_async.respond = lambda request: ("failure", b"Received server error (500) from model")
    with pytest.raises(UserError, match=f"Endpoint '{name}' could not generate: Received server error"):
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models)
    assert keys(s3, "inference/") == []


def test_async_timeout_and_cancel(cloud, s3, fake_async):
    name = in_service(cloud, "async")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    fake_async.respond = lambda request: None  # never answers
    started = time.monotonic()
    with pytest.raises(TransferError) as caught:
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, timeout=1.5)
    assert time.monotonic() - started < 5
    inference_id = fake_async.inputs[0][0][len("inference/input/"):-5]
    assert f"Endpoint '{name}' gave no answer within 1.5 seconds (inference id {inference_id})" in str(caught.value)
    cancel, states = threading.Event(), []
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match=f"Stopped waiting for endpoint '{name}'"):
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, cancel=cancel,
               on_state=lambda s, m: states.append(s))
    assert time.monotonic() - started < 3 and states[0] == "queued" and "done" not in states
    assert keys(s3, "inference/") == []  # the requests were withdrawn


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def stopped_after(seconds: float) -> threading.Event:
    cancel = threading.Event()
    threading.Timer(seconds, cancel.set).start()
    return cancel


def test_stop_before_any_instance_cancels_the_request(cloud, s3, fake_async):
    name = in_service(cloud, "async")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    fake_async.respond = lambda request: None
    sagemaker_variant(name)["CurrentInstanceCount"] = 0  # nothing can have started it
    with pytest.raises(Interrupted) as caught:
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, cancel=stopped_after(0.5))
    inference_id = fake_async.inputs[0][0][len("inference/input/"):-5]
    assert str(caught.value) == (f"Stopped: the request was cancelled before it started (endpoint '{name}' had no "
                                 f"instance up yet, and its input is deleted; inference id {inference_id}).")
    assert keys(s3, "inference/input/") == []  # an instance that dequeues it finds nothing to run

    # it takes no turn: the next request is not said to wait behind it
    sagemaker_variant(name)["CurrentInstanceCount"] = 1
    fake_async.respond = lambda request: ("output", server_answer(request))
    states = []
    invoke(cloud, name, "txt2img", {"prompt": "a dog"}, models, on_state=lambda s, m: states.append(m))
    assert not any("behind" in m for m in states), states


def test_a_stopped_request_still_running_is_said_and_the_next_waits_behind_it(cloud, s3, fake_async):
    name = in_service(cloud, "async")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    fake_async.respond = lambda request: None  # the endpoint works on it past the Stop
    with pytest.raises(Interrupted) as caught:
        invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, cancel=stopped_after(0.5))
    first = fake_async.inputs[0][0][len("inference/input/"):-5]
    assert str(caught.value) == (
        f"Stopped waiting for endpoint '{name}' (inference id {first}). Its input is deleted: if the endpoint had "
        f"not started the request, it drops it; if it had, endpoint '{name}' is still finishing the earlier "
        f"request, and its answer will be discarded.")
    assert keys(s3, "inference/input/") == []

    states = []

    def first_finishes():  # as the second request waits, the endpoint ends the first one
        wait_for(lambda: any("behind" in m for _, m in states))
        s3.put_object(Bucket=BUCKET, Key=f"inference/output/{first}.out", Body=b"{}")
        wait_for(lambda: states[-1][0] == "generating")

    fake_async.before_answer = first_finishes
    fake_async.respond = lambda request: ("output", server_answer(request))
    result = invoke(cloud, name, "txt2img", {"prompt": "a dog"}, models, on_state=lambda s, m: states.append((s, m)))
    assert ("queued", f"queued behind 1 earlier request(s) from here still running on {name}") in states
    assert [s for s, _ in states][-2:] == ["generating", "done"] and len(result.images) == 1
    assert keys(s3, "inference/") == []  # the first one's answer, which nobody reads, is deleted too


def test_a_stopped_real_time_request_is_said_to_go_on(cloud, emulator, monkeypatch):
    from moto.sagemakerruntime.models import SageMakerRuntimeBackend

    release, original = threading.Event(), SageMakerRuntimeBackend.invoke_endpoint

    def busy(self, endpoint_name, unique_repr):  # the endpoint takes its time
        release.wait(20)
        return original(self, endpoint_name, unique_repr)

    monkeypatch.setattr(SageMakerRuntimeBackend, "invoke_endpoint", busy)
    name = in_service(cloud, "real-time")
    models = resolve_models(cloud, "sd15", None, ["a cat"])
    states, second = [], None
    try:
        started = time.monotonic()
        with pytest.raises(Interrupted) as caught:
            invoke(cloud, name, "txt2img", {"prompt": "a cat"}, models, cancel=stopped_after(0.3))
        assert time.monotonic() - started < 3  # at once, not when the endpoint answers
        assert str(caught.value) == (f"Stopped waiting for endpoint '{name}'. A real-time request cannot be withdrawn: "
                                     f"endpoint '{name}' is still finishing it, and its answer will be discarded.")
        def again():
            try:
                invoke(cloud, name, "txt2img", {"prompt": "a dog"}, models, on_state=lambda s, m: states.append(m))
            except UserError:  # moto's canned answer is no server's answer: only the waiting text counts here
                pass

        second = threading.Thread(target=again)
        second.start()
        wait_for(lambda: states)
        assert states[0] == f"generating on {name} (it is still finishing 1 earlier request(s) from here)"
    finally:
        release.set()
        if second:
            second.join(20)


# -- command line ---------------------------------------------------------------------------------------------------
def cli(env, *args):
    proc = subprocess.run([sys.executable, "-m", "aws_extension", *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_generate_writes_pngs_with_their_infotext(cloud, aws_env, fake_async, tmp_path):
    name = in_service(cloud, "async")
    out = tmp_path / "out"
    proc = cli(aws_env, "--json", "generate", "--endpoint", name, "--checkpoint", "sd15", "--prompt",
               "a cat <lora:style:0.5>", "--negative-prompt", "EasyNegative", "--seed", "5", "--batch-size", "2",
               "--steps", "20", "--sampler", "DPM++ 2M", "--width", "512", "--height", "768", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(proc.stdout)
    assert [Path(s["path"]).name for s in saved] == ["5-0.png", "6-1.png"]
    assert [s["seed"] for s in saved] == [5, 6]
    for item in saved:
        assert png_parameters(Path(item["path"]).read_bytes()) == item["infotext"]
        assert f"Seed: {item['seed']}," in item["infotext"]
    [(_, request)] = fake_async.inputs
    assert request["task"] == "txt2img" and request["models"]["lora"] == [uri("Lora", "style.pt")]
    assert request["models"]["embeddings"] == [uri("embeddings", "EasyNegative.safetensors")]
    assert request["payload"] == {"prompt": "a cat <lora:style:0.5>", "negative_prompt": "EasyNegative", "seed": 5,
                                  "batch_size": 2, "steps": 20, "sampler_name": "DPM++ 2M", "width": 512,
                                  "height": 768}
    assert f"{name}: queued on {name}" in proc.stderr and "2 image(s)" in proc.stderr

    init = tmp_path / "init.png"
    init.write_bytes(png(1, None))
    again = cli(aws_env, "generate", "--endpoint", name, "--checkpoint", "sd15.safetensors [6ce0161689]",
                "--prompt", "a dog", "--seed", "5", "--init-image", str(init), "--denoising-strength", "0.5",
                "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [str(out / "5-0-2.png")]  # the earlier 5-0.png stays
    request = fake_async.inputs[1][1]
    assert request["task"] == "img2img" and request["payload"]["denoising_strength"] == 0.5
    assert base64.b64decode(request["payload"]["init_images"][0]) == init.read_bytes()


def test_cli_generate_refusals(cloud, aws_env, tmp_path):
    assert cli(aws_env, "generate", "--endpoint", "x", "--checkpoint", "sd15").returncode == 2  # no --prompt
    mask = cli(aws_env, "generate", "--endpoint", "x", "--checkpoint", "sd15", "--prompt", "p", "--mask", "m.png")
    assert (mask.returncode, mask.stderr.strip()) == (1, "error: --mask is for img2img: add --init-image.")
    (tmp_path / "not.png").write_bytes(b"text")
    bad = cli(aws_env, "generate", "--endpoint", "x", "--checkpoint", "sd15", "--prompt", "p",
              "--init-image", str(tmp_path / "not.png"))
    assert bad.returncode == 1 and "not a PNG or JPEG image" in bad.stderr
    lora = cli(aws_env, "generate", "--endpoint", "x", "--checkpoint", "sd15", "--prompt", "<lora:nope:1>")
    assert lora.returncode == 1 and "'nope'" in lora.stderr
    gone = cli(aws_env, "generate", "--endpoint", "x", "--checkpoint", "sd15", "--prompt", "p")
    assert gone.returncode == 1 and "Endpoint 'x' does not exist" in gone.stderr
