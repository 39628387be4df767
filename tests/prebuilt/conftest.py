"""The default deploy path on the software it really runs on: AWS's prebuilt PyTorch inference image's Python stack.

`tests/prebuilt/install-replica.sh` builds that stack in a venv (Python 3.12, torch 2.6.0, torchvision 0.21.0,
TorchServe 0.12.0 on Java 17, sagemaker-pytorch-inference 2.0.25: the image's versions) and tests/run.sh passes it
here as SD_SAGEMAKER_REPLICA_PYTHON. A deploy against the emulator uploads the code package exactly as for AWS;
the package is extracted to /opt/ml/model, as SageMaker does, and the image's `serve` entry
(sagemaker_pytorch_serving_container.serving.main) starts with the environment the deploy set. Only the port
(SAGEMAKER_BIND_TO_PORT, which SageMaker itself sets for images that accept it) and the credentials differ.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "serve"))
os.environ["HF_HUB_OFFLINE"] = "1"

from aws_extension.core import endpoints  # noqa: E402
from aws_extension.core.aws import Aws  # noqa: E402
from aws_extension.core.bootstrap import setup  # noqa: E402
from aws_extension.core.config import Settings  # noqa: E402
from aws_extension.core.endpoints import EndpointSpec  # noqa: E402
from aws_extension.local.emulator import LocalEmulator  # noqa: E402
from aws_extension.core.models.uploads import upload_paths  # noqa: E402

MODEL_DIR = Path("/opt/ml/model")  # where SageMaker puts ModelDataUrl's contents, and where the toolkit looks
TS_CONFIG = Path("/etc/sagemaker-ts.properties")  # the toolkit writes TorchServe's configuration here
IMAGE_ENV = {"TS_DISABLE_SYSTEM_METRICS": "true",  # ENV lines of the image's Dockerfile
             "SAGEMAKER_SERVING_MODULE": "sagemaker_pytorch_serving_container.serving:main",
             "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
SERVE = "from sagemaker_pytorch_serving_container import serving; serving.main()"  # the entry point's `serve`
START_SECONDS = 900  # installing the wheels, Java's start, importing torch and diffusers on 2 slow cores


class RecordingIndex:
    """A package index on loopback that answers nothing but counts every request: pip must never ask it."""

    def __init__(self):
        self.requests: list = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                index.requests.append(self.path)
                self.send_error(404)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/simple/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The replica's `serve` entry as a process group; TorchServe's frontend and worker are its descendants."""

    def __init__(self, python: str, env: dict, work: Path):
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "serve.log"
        self.log = open(self.log_path, "w+")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([python, "-c", SERVE], cwd=work, env={**env, "SAGEMAKER_BIND_TO_PORT": str(self.port)},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body=None, content_type="application/json", timeout=600):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def invoke(self, body, **kwargs):
        status, data = self.request("POST", "/invocations", body, **kwargs)
        return status, json.loads(data)

    def wait_healthy(self, timeout: float = START_SECONDS) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the serve entry exited ({self.proc.returncode}):\n{self.output()[-8000:]}")
            try:
                if self.request("GET", "/ping", timeout=5)[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"/ping never answered 200 within {timeout} s:\n{self.output()[-8000:]}")

    def installed_versions(self) -> dict:
        """Distribution name -> version in the container's Python."""
        script = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name'].lower().replace('_', '-'):"
                  " d.version for d in m.distributions()}))")
        return json.loads(subprocess.run([self.python, "-c", script], capture_output=True, text=True, check=True).stdout)

    def processes(self) -> list:
        """Every process of the container's session: `torchserve --start` leaves its Java frontend orphaned, so
        the frontend and its workers are no descendants of the entry point, but they keep its session."""
        import psutil

        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    found.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return found

    def kill(self):
        import psutil

        for p in self.processes():  # TorchServe's Java may leave the group: kill by tree as well
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def replica_python() -> str:
    python = os.environ.get("SD_SAGEMAKER_REPLICA_PYTHON")
    if not python:
        pytest.fail("SD_SAGEMAKER_REPLICA_PYTHON is not set: run these tests through tests/run.sh, which builds the "
                    "replica of the prebuilt image's stack (tests/prebuilt/install-replica.sh)")
    return python


@pytest.fixture(scope="session")
def cloud(tmp_path_factory):
    """The emulator with the bucket set up and tiny SD 1.x and SDXL checkpoints uploaded as users upload them."""
    import tiny_models

    em = LocalEmulator().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PIP_", "SD_SAGEMAKER_"))}
    home = tmp_path_factory.mktemp("aws-home")
    env.update(em.env(), AWS_CONFIG_FILE=str(home / "config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "creds"))
    env.pop("SD_SAGEMAKER_IMAGE_URI", None)  # the default path: AWS's prebuilt image with our code package
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    if "SD_SAGEMAKER_WHEEL_CACHE" in saved:
        os.environ["SD_SAGEMAKER_WHEEL_CACHE"] = saved["SD_SAGEMAKER_WHEEL_CACHE"]
    aws = Aws(Settings.resolve())
    setup(aws)
    folder = tmp_path_factory.mktemp("models")
    uris = {}
    paths = [tiny_models.make_sd1(folder / "tiny-sd1.safetensors"), tiny_models.make_sdxl(folder / "tiny-sdxl.safetensors")]
    for result in upload_paths(aws, "checkpoint", [str(p) for p in paths]):
        assert result.ok, result.error
        uris[Path(result.key).stem] = f"s3://{aws.bucket}/{result.key}"
    yield {**uris, "aws": aws, "env": env}
    os.environ.clear()
    os.environ.update(saved)
    em.stop()


@pytest.fixture(scope="session")
def deployed(cloud):
    """A deploy with no image URI, as a user's first deploy: the model's container as SageMaker would get it."""
    aws = cloud["aws"]
    # a CPU instance type: the replica runs on this machine's CPU (a GPU type without a GPU must fail: tested below)
    endpoints.deploy(aws, EndpointSpec(name="replica", endpoint_type="async", instance_type="ml.c5.2xlarge",
                                       preload_checkpoint="tiny-sd1"), background=False)
    return aws.client("sagemaker").describe_model(ModelName="replica")["PrimaryContainer"]


@pytest.fixture(scope="session")
def model_dir(cloud, deployed):
    """ModelDataUrl's tar.gz, downloaded from the emulator's S3 and extracted into /opt/ml/model."""
    if MODEL_DIR.exists() and any(MODEL_DIR.iterdir()):
        pytest.fail(f"{MODEL_DIR} is not empty: another model is there (a container, or an earlier run); remove it first")
    bucket, key = deployed["ModelDataUrl"][len("s3://"):].split("/", 1)
    data = cloud["aws"].client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    had_config = TS_CONFIG.exists()
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(MODEL_DIR, filter="data")
    yield {"path": MODEL_DIR, "size": len(data)}
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    if not had_config:
        TS_CONFIG.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def index():
    recording = RecordingIndex()
    yield recording
    recording.close()


def container_env(replica_python: str, cloud: dict, deployed: dict, index: RecordingIndex, **overrides) -> dict:
    """The image's environment, the model's (as deploy set it), the emulator's credentials, and pip as in the image:
    no configuration of this machine's, and an index that only records (the install must not use it)."""
    env = {k: v for k, v in cloud["env"].items() if k.startswith(("AWS_", "PATH", "HOME", "JAVA", "LD_", "TMP"))}
    env["PATH"] = f"{Path(replica_python).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"  # torchserve, pip
    env.update(IMAGE_ENV, **deployed["Environment"])
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index.url, PIP_RETRIES="0", PIP_TIMEOUT="5",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def stack(replica_python, cloud, deployed, model_dir, index, tmp_path_factory):
    s = Stack(replica_python, container_env(replica_python, cloud, deployed, index), tmp_path_factory.mktemp("container"))
    try:
        s.ready_after = s.wait_healthy()
        yield s
    finally:
        s.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "stack" in item.fixturenames and "stack" in item.funcargs:
        report.sections.append(("container log", item.funcargs["stack"].output()[-8000:]))
