"""A user's first deploy on the default path, on a replica of the prebuilt image's stack (see conftest.py).

The tests share one container start (several minutes on a CPU); they run in file order and the last one stops it.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import time

from PIL import Image

from aws_extension.core.endpoints.deploy import TOOLKIT_ENVIRONMENT
from aws_extension.core.endpoints import wheels
from aws_extension.contract.infotext import parse_infotext
from conftest import START_SECONDS, Stack, container_env

SMALL = {"prompt": "a lighthouse", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64, "cfg_scale": 5,
         "seed": 99, "sampler_name": "Euler"}
SHUTDOWN_SECONDS = 30  # SageMaker sends SIGKILL this long after SIGTERM


def body(task: str, payload: dict, checkpoint: str) -> dict:
    return {"task": task, "payload": payload, "models": {"checkpoint": checkpoint, "vae": None, "lora": [],
                                                          "embeddings": []}}


def picture(answer: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))


def test_the_package_installs_its_own_wheels_and_nothing_from_an_index(stack, model_dir, index):
    requirements = (model_dir["path"] / "code" / "requirements.txt").read_text().splitlines()
    assert "--no-index" in requirements
    shipped = sorted(p.name for p in (model_dir["path"] / "code" / wheels.FOLDER).iterdir())
    assert shipped == sorted(w.file for w in wheels.locked())
    log = stack.output()
    assert f"Looking in links: {model_dir['path'] / 'code' / wheels.FOLDER}" in log  # pip ran, on our wheels only
    assert "ERROR" not in log.split("torchserve")[0]
    assert index.requests == []  # pip never asked an index, even one it could reach
    # and what it installed is the lock, version for version
    installed = stack.installed_versions()
    assert {w.name: installed.get(w.name) for w in wheels.locked()} == {w.name: w.version for w in wheels.locked()}


def test_ping_and_txt2img_answer_like_the_webui_api(stack, cloud):
    status, data = stack.request("GET", "/ping")
    assert status == 200  # TorchServe's, at once: a request waits in its queue while the worker loads
    status, answer = stack.invoke(body("txt2img", SMALL, cloud["tiny-sd1"]))
    assert status == 200, answer
    log = stack.output()  # the checkpoint deploy named was loaded as the worker started, before this request ran
    assert log.index(f"preloaded {cloud['tiny-sd1']}") < log.index("POST /invocations")
    image = picture(answer)
    assert image.size == (64, 64)
    read = parse_infotext(image.info["parameters"])
    assert read["Prompt"] == "a lighthouse" and read["Seed"] == "99" and read["Model"] == "tiny-sd1"
    assert json.loads(answer["info"])["all_seeds"] == [99]


def test_img2img_on_sdxl(stack, cloud):
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(init, format="PNG")
    payload = {**SMALL, "init_images": [base64.b64encode(init.getvalue()).decode()], "denoising_strength": 0.5}
    status, answer = stack.invoke(body("img2img", payload, cloud["tiny-sdxl"]))
    assert status == 200, answer
    image = picture(answer)
    assert image.size == (64, 64)
    assert parse_infotext(image.info["parameters"])["Denoising strength"] == "0.5"


def test_refusals_come_back_as_json_with_their_status(stack, cloud):
    status, answer = stack.invoke(body("txt2img", {**SMALL, "enable_hr": True}, cloud["tiny-sd1"]))
    assert status == 400 and answer["field"] == "enable_hr", answer
    missing = cloud["tiny-sd1"].replace("tiny-sd1", "no-such-model")
    status, answer = stack.invoke(body("txt2img", SMALL, missing))
    assert status == 404 and "no-such-model" in answer["error"], answer
    status, answer = stack.invoke(b"prompt=a cat", content_type="text/plain")
    assert status == 415 and "application/json" in answer["error"], answer


def test_torchserve_allows_long_invocations(stack):
    """The toolkit's timeout setting is lost (its properties file lacks a final newline): ours must hold."""
    status, data = stack.request("GET", "/models/model")  # TorchServe's management API shares the port here
    assert status == 200, data
    [model] = json.loads(data)
    wanted = int(TOOLKIT_ENVIRONMENT["SAGEMAKER_MODEL_SERVER_TIMEOUT"])
    assert model["responseTimeout"] == wanted >= 3600  # TorchServe's own default is 120 s
    # a worker's start includes loading a preload checkpoint: TorchServe's own 120 s would not do
    assert model["startupTimeout"] == int(TOOLKIT_ENVIRONMENT["TS_DEFAULT_STARTUP_TIMEOUT"]) >= 600


def alive(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone
        return False


def command_line(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_sigterm_stops_everything_within_sagemakers_grace(stack):
    processes = [p for p in stack.processes() if alive(p)]
    assert any("org.pytorch.serve.ModelServer" in command_line(p) for p in processes)  # TorchServe's frontend
    assert any("model_service_worker" in command_line(p) for p in processes)  # the worker running our handler
    stack.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_SECONDS
    while time.monotonic() < deadline and any(alive(p) for p in processes):
        time.sleep(0.5)
    left = [command_line(p)[:120] for p in processes if alive(p)]
    assert not left, left


def test_a_gpu_instance_without_a_usable_gpu_stops_answering_ping(replica_python, cloud, deployed, model_dir, index,
                                                                   tmp_path):
    """TorchServe would restart the failing worker forever and call itself healthy meanwhile: the container stops
    instead, so SageMaker's ping check fails the deploy, and the log says why."""
    env = container_env(replica_python, cloud, deployed, index, SD_SAGEMAKER_INSTANCE_TYPE="ml.g5.2xlarge")
    stack = Stack(replica_python, env, tmp_path)
    try:
        stack.proc.wait(START_SECONDS)  # the entry point's serving.main() returns once TorchServe is gone
        log = stack.output()
        assert "ml.g5.2xlarge is a GPU instance, but torch sees no CUDA device" in log, log[-4000:]
        assert "InferenceAmiVersion" in log and "Stopping the model server" in log
        try:
            status = stack.request("GET", "/ping", timeout=5)[0]
        except OSError:
            status = None  # nothing listens any more
        assert status is None
        assert not [p for p in stack.processes() if alive(p)]
    finally:
        stack.kill()
