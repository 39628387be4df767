"""The inference server's tests: they run in the server's own environment (container/install.sh), not the tab's.

One emulator and one set of tiny random-weight models (SD 1.x, SDXL, VAE, LoRA, embedding, made here in the
WebUI's file formats) for the whole session, uploaded the way users upload; servers are real processes of
`python -m aws_extension serve` on loopback ports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ["HF_HUB_OFFLINE"] = "1"

from aws_extension.core.aws import Aws  # noqa: E402
from aws_extension.core.bootstrap import setup  # noqa: E402
from aws_extension.core.config import Settings  # noqa: E402
from aws_extension.local.emulator import LocalEmulator  # noqa: E402
from aws_extension.core.models.uploads import upload_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cloud(tmp_path_factory):
    """The emulator with the bucket set up and the tiny models uploaded: name -> S3 URI (+ 'env', 'aws', 'emulator')."""
    import tiny_models

    # endpoints created here run the inference server as local processes (test_local_runtime.py)
    em = LocalEmulator(runtime=True, work_dir=str(tmp_path_factory.mktemp("endpoints")), startup_timeout=120).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    home = tmp_path_factory.mktemp("aws-home")
    env.update(em.env(), AWS_CONFIG_FILE=str(home / "config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "creds"))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    aws = Aws(Settings.resolve())
    setup(aws)
    folder = tmp_path_factory.mktemp("models")
    files = {
        "checkpoint": [tiny_models.make_sd1(folder / "tiny-sd1.safetensors"),
                       tiny_models.make_sdxl(folder / "tiny-sdxl.safetensors")],
        "vae": [tiny_models.make_vae(folder / "tiny-vae.safetensors", like="sd1")],
        "lora": [tiny_models.make_lora(folder / "tiny-lora.safetensors", like="sd1")],
        "embedding": [tiny_models.make_embedding(folder / "tiny-emb.pt", like="sd1")],
    }
    uris = {}
    for kind, paths in files.items():
        for result in upload_paths(aws, kind, [str(p) for p in paths]):
            assert result.ok, result.error
            uris[Path(result.key).stem] = f"s3://{aws.bucket}/{result.key}"
    broken = folder / "broken.safetensors"
    broken.write_bytes(os.urandom(4096))
    [result] = upload_paths(aws, "checkpoint", [str(broken)])
    uris["broken"] = f"s3://{aws.bucket}/{result.key}"
    yield {**uris, "env": env, "aws": aws, "files": files, "emulator": em}
    os.environ.clear()
    os.environ.update(saved)
    em.stop()


class Server:
    """One `python -m aws_extension serve` process; output goes to a log file shown when a test fails."""

    def __init__(self, env: dict, cache_dir: Path, cache_gb: float = 1.0, extra_env=None):
        self.log_path = cache_dir.parent / f"{cache_dir.name}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aws_extension", "serve", "--port", "0", "--cache-dir", str(cache_dir),
             "--cache-gb", str(cache_gb)], cwd=ROOT, env={**env, **(extra_env or {})},
            stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.started = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"listening on http://[\d.]+:(\d+)", self.output())
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                self.listening_at = time.monotonic()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("server did not start:\n" + self.output())

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def ping(self, timeout: float = 2.0):
        with urllib.request.urlopen(self.url + "/ping", timeout=timeout) as r:
            return r.status, json.loads(r.read())

    def invoke(self, task: str, payload: dict, models: dict, timeout: float = 300):
        return self.post({"task": task, "payload": payload, "models": models}, timeout)

    def post(self, body, timeout: float = 300, content_type: str = "application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/invocations", data=data, method="POST",
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_ready(self, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.ping()
            if body["status"] != "loading":
                return body
            time.sleep(0.2)
        raise AssertionError("engine did not start:\n" + self.output())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def engine(cloud, tmp_path_factory):
    """An in-process engine on the CPU over the emulator's models (the fidelity tests compare its pictures)."""
    from aws_extension.serve.cache import ModelCache
    from aws_extension.serve.engine import Engine

    folder = tmp_path_factory.mktemp("fidelity")
    return Engine(ModelCache(cloud["aws"], folder / "models", 1024 ** 3), folder, device="cpu")


@pytest.fixture(scope="session")
def server(cloud, tmp_path_factory):
    s = Server(cloud["env"], tmp_path_factory.mktemp("server") / "cache")
    s.wait_ready()
    yield s
    s.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "server" in item.fixturenames:  # the server's side of a failure
        report.sections.append(("server log", item.funcargs["server"].output()[-6000:]))
