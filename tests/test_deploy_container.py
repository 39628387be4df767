"""Deploying without an image: AWS's prebuilt PyTorch image plus our server as the model's code package.

Against the emulator: the model's container, the package in S3 (uploaded once), the endpoint config's startup
timeout; offline: the package's determinism, the requirement lists agreeing, and the toolkit entry functions
(with stand-ins for the handler and for the toolkit, which is not installed here).
"""

from __future__ import annotations

import atexit
import importlib.util
import inspect
import io
import json
import re
import sys
import tarfile
import types
from pathlib import Path

import pytest

from inventory import NOTHING, cloud_inventory
from aws_extension.core import endpoints
from aws_extension.core.aws import Aws
from aws_extension.core.cleanup import find_orphans, remove_orphans
from aws_extension.core.config import Settings
from aws_extension.core.endpoints import EndpointSpec, code_package, images, wheels
from aws_extension.core.errors import ConfigError, TransferError
from aws_extension.local import emulator as emulator_module
from aws_extension.serve import toolkit_entry

deploy_module = sys.modules["aws_extension.core.endpoints.deploy"]
ROOT = Path(__file__).resolve().parent.parent
PREBUILT_US_EAST_1 = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/"
                      "pytorch-inference:2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker")


@pytest.fixture
def no_image(aws, monkeypatch):
    monkeypatch.setattr(aws.settings, "image_uri", None)  # the emulator's environment names a local image
    return aws


def put_counter(aws: Aws) -> list:
    calls: list = []
    aws.client("s3").meta.events.register("before-parameter-build.s3.PutObject", lambda **kw: calls.append(kw["params"]["Key"]))
    return calls


def package_bytes() -> bytes:
    out = io.BytesIO()
    code_package.build(out, code_package.source_files(), wheels.fetch(wheels.locked()))
    return out.getvalue()


def model_of(aws: Aws, name: str) -> dict:
    return aws.client("sagemaker").describe_model(ModelName=name)["PrimaryContainer"]


def variant_of(aws: Aws, name: str) -> dict:
    return aws.client("sagemaker").describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]


def package_at(aws: Aws, url: str) -> tarfile.TarFile:
    bucket, key = url[len("s3://"):].split("/", 1)
    data = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def test_deploy_without_image_uses_the_prebuilt_image_and_our_code_package(no_image, tiny_wheel_lock):
    aws = no_image
    endpoints.deploy(aws, EndpointSpec(name="sd-prebuilt"), background=False)
    container = model_of(aws, "sd-prebuilt")
    assert container["Image"] == PREBUILT_US_EAST_1 == images.prebuilt_image_uri(emulator_module.REGION)
    url = container["ModelDataUrl"]
    assert url.startswith(f"s3://{aws.bucket}/code/sd-webui-sagemaker-") and url.endswith(".tar.gz")

    env = container["Environment"]
    assert {k: env[k] for k in ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_REGION",
                                "SAGEMAKER_MODEL_SERVER_WORKERS", "HF_HUB_OFFLINE", "SD_SAGEMAKER_BUCKET",
                                "AWS_DEFAULT_REGION")} == {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_REGION": "us-east-1", "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "HF_HUB_OFFLINE": "1",
        "SD_SAGEMAKER_BUCKET": aws.bucket, "AWS_DEFAULT_REGION": "us-east-1"}
    assert int(env["SAGEMAKER_MODEL_SERVER_TIMEOUT"]) >= 3600
    assert int(env["TS_MAX_REQUEST_SIZE"]) >= 100 * 1024 * 1024 and int(env["TS_MAX_RESPONSE_SIZE"]) >= 100 * 1024 * 1024
    # the toolkit pip-installs the requirements before its first /ping: a longer startup allowance
    assert variant_of(aws, "sd-prebuilt")["ContainerStartupHealthCheckTimeoutInSeconds"] == \
        deploy_module.PREBUILT_STARTUP_TIMEOUT > deploy_module.STARTUP_TIMEOUT

    with package_at(aws, url) as tar:
        names = tar.getnames()
        assert {"code/inference.py", "code/requirements.txt", "code/aws_extension/__init__.py",
                "code/aws_extension/serve/toolkit_entry.py", "code/aws_extension/core/endpoints/deploy.py",
                "code/aws_extension/serve/clip_merges.txt", f"code/wheels/{tiny_wheel_lock.wheel.name}"} <= set(names)
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or not n.startswith("code/")]
        entry = tar.extractfile("code/inference.py").read()
        requirements = tar.extractfile("code/requirements.txt").read().decode()
        shipped = tar.extractfile(f"code/wheels/{tiny_wheel_lock.wheel.name}").read()
    assert entry == (ROOT / "aws_extension" / "serve" / "toolkit_entry.py").read_bytes()
    assert shipped == tiny_wheel_lock.wheel.read_bytes()
    # the toolkit pip-installs this at every start: the wheels beside it, each by its hash, never an index
    lines = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    [locked] = wheels.locked()
    assert lines == ["--no-index", "--find-links wheels", f"sdtiny==1.0 --hash=sha256:{locked.sha256}"]


def test_a_second_deploy_reuses_the_package(no_image, tiny_wheel_lock, tmp_path, monkeypatch):
    aws = no_image
    puts = put_counter(aws)
    endpoints.deploy(aws, EndpointSpec(name="first"), background=False)
    url = model_of(aws, "first")["ModelDataUrl"]
    key = url.split("/", 3)[3]
    assert puts == [key]
    assert tiny_wheel_lock.requests == [tiny_wheel_lock.wheel.name]
    # another machine (an empty wheel cache) deploying the same version: S3 already has it, nothing is fetched
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path / "other-machine"))
    s3 = aws.client("s3")
    before = s3.head_object(Bucket=aws.bucket, Key=key)

    endpoints.deploy(aws, EndpointSpec(name="second", endpoint_type="real-time"), background=False)
    assert model_of(aws, "second")["ModelDataUrl"] == url
    assert puts == [key]  # no second upload
    assert tiny_wheel_lock.requests == [tiny_wheel_lock.wheel.name]
    after = s3.head_object(Bucket=aws.bucket, Key=key)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert variant_of(aws, "second")["ContainerStartupHealthCheckTimeoutInSeconds"] == \
        deploy_module.PREBUILT_STARTUP_TIMEOUT
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix="code/").get("Contents", [])
    assert [o["Key"] for o in listed] == [key]


def test_with_an_image_uri_there_is_no_code_package(aws):
    puts = put_counter(aws)
    endpoints.deploy(aws, EndpointSpec(name="custom", image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/sd:1"),
                     background=False)
    container = model_of(aws, "custom")
    assert container["Image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd:1"
    assert "ModelDataUrl" not in container
    env = container["Environment"]
    assert {k: env[k] for k in ("SD_SAGEMAKER_BUCKET", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")} == {
        "SD_SAGEMAKER_BUCKET": aws.bucket, "AWS_DEFAULT_REGION": "us-east-1", "HF_HUB_OFFLINE": "1"}
    assert not [k for k in env if k.startswith(("SAGEMAKER_", "TS_"))]  # the toolkit's settings are not for our image
    assert variant_of(aws, "custom")["ContainerStartupHealthCheckTimeoutInSeconds"] == deploy_module.STARTUP_TIMEOUT
    assert puts == []


def test_unknown_region_is_refused_by_name(aws_env, no_image, monkeypatch):
    with pytest.raises(ConfigError, match="'xx-nowhere-1'.*SD_SAGEMAKER_IMAGE_URI"):
        images.prebuilt_image_uri("xx-nowhere-1")
    elsewhere = Aws(Settings.resolve(flags={"region": "xx-nowhere-1"}))
    with pytest.raises(ConfigError, match="xx-nowhere-1"):
        deploy_module.container_spec(elsewhere, None)
    assert deploy_module.container_spec(elsewhere, "my/image:1")["Image"] == "my/image:1"

    # a whole deploy: refused before anything is created or uploaded
    aws = no_image
    monkeypatch.delitem(images.ACCOUNTS, "us-east-1")
    with pytest.raises(ConfigError, match="'us-east-1'"):
        endpoints.deploy(aws, EndpointSpec(name="nowhere"), background=False)
    assert cloud_inventory(lambda service: aws.client(service)) == NOTHING
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix="code/")


def test_prebuilt_image_per_region():
    assert images.prebuilt_image_uri("eu-west-1").startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
    assert images.prebuilt_image_uri("af-south-1").startswith("626614931356.dkr.ecr.af-south-1.amazonaws.com/")
    assert images.prebuilt_image_uri("cn-north-1").startswith("727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/")
    assert images.TORCH_VERSION == "2.6.0"


def test_the_package_is_deterministic(tiny_wheel_lock, tmp_path, monkeypatch):
    first, second = package_bytes(), package_bytes()
    assert first == second
    key = code_package.package_key(code_package.source_files())
    assert key.startswith("code/sd-webui-sagemaker-") and len(key) == len("code/sd-webui-sagemaker-") + 16 + 7
    assert first[4:8] == b"\0\0\0\0"  # no time in the gzip header
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == \
        {(code_package.MTIME, 0, 0, "", "", 0o644)}
    # another wheel set, another key
    from wheel_mirror import make_wheel

    newer = make_wheel(tiny_wheel_lock.folder, version="2.0")
    monkeypatch.setattr(wheels, "LOCK", tiny_wheel_lock.lock(tmp_path / "newer.lock.json", newer))
    assert code_package.package_key(code_package.source_files()) != key


def test_wheels_are_fetched_once_and_checked_against_the_lock(tiny_wheel_lock, tmp_path, monkeypatch):
    [locked] = wheels.locked()
    [path] = wheels.fetch([locked])
    assert path.read_bytes() == tiny_wheel_lock.wheel.read_bytes()
    wheels.fetch([locked])
    assert tiny_wheel_lock.requests == [locked.file]  # the second time from the cache
    # a mirror that sends other bytes: refused by name, nothing left in the cache
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path / "fresh"))
    tiny_wheel_lock.tampered[locked.file] = b"PK not the wheel"
    with pytest.raises(TransferError, match=rf"{re.escape(locked.file)} from http://127\.0\.0\.1:\d+/files/.*sha256"):
        wheels.fetch([locked])
    assert list((tmp_path / "fresh").iterdir()) == []
    # a mirror that is down: the file and the URL in the message
    monkeypatch.setenv(wheels.MIRROR_ENV, "http://127.0.0.1:9/files")
    with pytest.raises(TransferError, match=rf"Could not download {re.escape(locked.file)} from http://127\.0\.0\.1:9/"):
        wheels.fetch([locked])


def test_the_real_lock_covers_the_servers_requirements_for_the_image(monkeypatch):
    """container/lock.py's output agrees with the requirements and fits the prebuilt image (Python 3.12, x86_64,
    glibc 2.35), and leaves the image's torch stack alone."""
    from packaging.requirements import Requirement
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    monkeypatch.undo()  # the real lock, not the tiny one
    locked = {w.name: w for w in wheels.locked(ROOT / "aws_extension" / "core" / "endpoints" / "server-wheels.lock.json")}
    for line in code_package.SERVER_REQUIREMENTS:
        req = Requirement(line)
        assert req.name in locked and req.specifier.contains(locked[req.name].version), line
    assert not {"torch", "torchvision", "triton", "setuptools", "pip"} & set(locked)
    assert not [n for n in locked if n.startswith("nvidia-")]
    # what pip in the image accepts: CPython 3.12 on glibc 2.35 (Ubuntu 22.04), x86_64
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + \
        ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    image = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
    for w in locked.values():
        assert w.url.startswith("https://files.pythonhosted.org/") and w.url.endswith("/" + w.file)
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256)
        assert set(parse_wheel_filename(w.file)[3]) & image, w.file


def test_the_requirement_lists_agree():
    text = (ROOT / "container" / "requirements.txt").read_text()
    listed = [line.split("#")[0].strip() for line in text.splitlines()]
    assert [line for line in listed if line] == list(code_package.SERVER_REQUIREMENTS)
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert extra == list(code_package.SERVER_REQUIREMENTS)
    assert not any(line.split("=")[0].split(">")[0] in ("torch", "clip-anytorch") for line in listed if line)
    dockerfile = (ROOT / "container" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "aws_extension"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    assert "EXPOSE 8080" in dockerfile and "container/install.sh python" in dockerfile


# -- the toolkit entry (code/inference.py) -----------------------------------------------------------------------
class StandInHandler:
    def __init__(self, answer=(200, {"images": ["AAAA"], "parameters": {}, "info": "x"})):
        self.answer = answer
        self.calls: list = []
        self.closed = None
        self.waited = False

    def wait_healthy(self, timeout=None):
        self.waited = True

    def invoke(self, body: bytes, content_type: str = "application/json"):
        self.calls.append((body, content_type))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self, timeout: float) -> None:
        self.closed = timeout


class StandInContext:
    """The toolkit's request context, as far as output_fn uses it (TorchServe's Context.set_response_status)."""

    def __init__(self):
        self.status = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = (code, phrase, idx)


def test_the_toolkit_calls_what_it_expects():
    # the toolkit passes its request context when a function takes one more parameter than it sends
    assert [len(inspect.signature(f).parameters) for f in (toolkit_entry.model_fn, toolkit_entry.input_fn,
                                                            toolkit_entry.predict_fn, toolkit_entry.output_fn)] == \
        [1, 2, 2, 3]


@pytest.mark.parametrize("body, content_type, expected", [
    ('{"prompt": "a"}', "application/json", (b'{"prompt": "a"}', "application/json")),  # JSON comes decoded
    (bytearray(b'{"prompt": "b"}'), "application/json; charset=utf-8",
     (b'{"prompt": "b"}', "application/json; charset=utf-8")),
    (b"\x89PNG", "image/png", (b"\x89PNG", "image/png")),  # the handler refuses it (415), not input_fn
    (None, None, (b"", "application/json")),
    ("{}", "  ", (b"{}", "application/json")),
])
def test_input_fn(body, content_type, expected):
    assert toolkit_entry.input_fn(body, content_type) == expected


def test_predict_and_output_for_a_good_request():
    handler = StandInHandler()
    data = toolkit_entry.input_fn('{"prompt": "a cat"}', "application/json")
    prediction = toolkit_entry.predict_fn(data, handler)
    assert handler.calls == [(b'{"prompt": "a cat"}', "application/json")]
    for accept in ("application/json", "*/*", None, "image/png"):  # JSON whatever Accept says
        context = StandInContext()
        body, content_type = toolkit_entry.output_fn(prediction, accept, context)
        assert (json.loads(body), content_type, context.status) == (handler.answer[1], "application/json", None)


def test_an_error_answer_keeps_its_status():
    answer = {"error": "steps must be 1 to 150", "field": "steps"}
    prediction = toolkit_entry.predict_fn((b"{}", "application/json"), StandInHandler((400, answer)))
    assert prediction == (400, answer)
    context = StandInContext()
    body, content_type = toolkit_entry.output_fn(prediction, "application/json", context)
    assert (json.loads(body), content_type, context.status) == (answer, "application/json", (400, "Bad Request", 0))

    # no request context: the toolkit's error type, which it answers with the same status
    with pytest.raises(toolkit_entry.InvocationError) as raised:
        toolkit_entry.output_fn((404, {"error": "no such model"}), None)
    error = raised.value
    assert (error.status_code, json.loads(error.message), error.phrase) == (404, {"error": "no such model"}, "Not Found")


def test_a_failing_handler_is_a_500_answer():
    status, answer = toolkit_entry.predict_fn((b"{}", "application/json"), StandInHandler(RuntimeError("CUDA error")))
    assert status == 500 and "CUDA error" in answer["error"]


def test_the_entry_as_the_toolkit_loads_it(tmp_path, monkeypatch):
    """code/inference.py from the package, imported as `inference` beside its aws_extension, the toolkit present."""
    with tarfile.open(fileobj=io.BytesIO(package_bytes()), mode="r:gz") as tar:
        tar.extractall(tmp_path)
    code = tmp_path / "code"

    class ToolkitError(Exception):  # the shape of sagemaker_inference.errors.GenericInferenceToolkitError
        def __init__(self, status_code, message=None, phrase=None):
            self.status_code, self.message, self.phrase = status_code, message, phrase or message
            super().__init__(status_code, message, phrase)

    errors_module = types.ModuleType("sagemaker_inference.errors")
    errors_module.GenericInferenceToolkitError = ToolkitError
    monkeypatch.setitem(sys.modules, "sagemaker_inference", types.ModuleType("sagemaker_inference"))
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", errors_module)
    handler = StandInHandler((503, {"error": "still starting"}))
    handler_module = types.ModuleType("aws_extension.serve.handler")
    handler_module.Handler = types.SimpleNamespace(from_environment=lambda: handler)
    monkeypatch.setitem(sys.modules, "aws_extension.serve.handler", handler_module)
    registered: list = []
    monkeypatch.setattr(atexit, "register", lambda fn, *args: registered.append((fn, args)))
    monkeypatch.setattr(sys, "path", list(sys.path))

    spec = importlib.util.spec_from_file_location("inference", code / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    assert sys.path[0] == str(code)  # its aws_extension imports from code/
    assert issubclass(inference.InvocationError, ToolkitError)

    model = inference.model_fn("/opt/ml/model")
    assert model is handler and handler.waited  # TorchServe's /ping is healthy only once the handler is
    [(close, args)] = registered
    close(*args)
    assert handler.closed == inference.CLOSE_SECONDS
    prediction = inference.predict_fn(inference.input_fn('{"prompt": "x"}', "application/json"), model)
    with pytest.raises(ToolkitError) as raised:
        inference.output_fn(prediction, "application/json")
    assert (raised.value.status_code, raised.value.phrase) == (503, "Service Unavailable")


def test_cleanup_removes_code_packages_no_model_uses(no_image, tiny_wheel_lock, tmp_path, monkeypatch):
    from wheel_mirror import make_wheel

    aws = no_image
    endpoints.deploy(aws, EndpointSpec(name="sd-old-code"), background=False)
    old_url = model_of(aws, "sd-old-code")["ModelDataUrl"]
    newer = make_wheel(tiny_wheel_lock.folder, version="2.0")
    monkeypatch.setattr(wheels, "LOCK", tiny_wheel_lock.lock(tmp_path / "newer.lock.json", newer))
    endpoints.deploy(aws, EndpointSpec(name="sd-new-code"), background=False)
    new_url = model_of(aws, "sd-new-code")["ModelDataUrl"]
    assert old_url != new_url
    assert [o for o in find_orphans(aws) if o.kind == "code-package"] == []  # both in use
    endpoints.delete_endpoint(aws, "sd-old-code")
    [orphan] = [o for o in find_orphans(aws) if o.kind == "code-package"]
    assert aws.s3_uri(orphan.name) == old_url and "no model uses it" in orphan.detail
    remove_orphans(aws, [orphan])
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix="code/")["Contents"]]
    assert [aws.s3_uri(k) for k in keys] == [new_url]


def test_every_data_file_of_the_package_is_installed_with_it():
    """`pip install ".[serve]"` (not only an editable install) carries the tokenizer's merges and the wheel lock."""
    import fnmatch
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [p for p in (ROOT / "aws_extension").rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert {p.name for p in files} >= {"clip_merges.txt", "server-wheels.lock.json"}
    for path in files:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in data.get(package, [])), path
