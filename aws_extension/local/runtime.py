"""Local endpoints that really generate: one inference-server process per endpoint created on the emulator.

moto's sagemaker-runtime answers canned bodies. With the runtime on, CreateEndpoint starts
`python -m aws_extension serve` for the endpoint (its model's environment plus the emulator's AWS settings),
the endpoint turns InService once that process answers /ping "ready", and InvokeEndpoint / InvokeEndpointAsync
reach it with SageMaker's limits and error shapes. DeleteEndpoint, stop() and reset() stop the processes.
The handlers run on the moto server's request threads; they hold no moto lock while they wait on a process.
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from ..aws import split_s3_uri

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding aws_extension/
CONTAINER = "primary"  # SageMaker's name for a model's single container, in its error messages
MAX_PAYLOAD = 6 * 1024 * 1024  # InvokeEndpoint: request and response, 6 MB each
INVOKE_TIMEOUT = 60.0  # InvokeEndpoint: the container must answer within 60 s
ASYNC_TIMEOUT, ASYNC_MAX_TIMEOUT = 900, 3600  # InvokeEndpointAsync's InvocationTimeoutSeconds: default, maximum
ASYNC_MAX_BODY = 1024 ** 3  # 1 GB in and out
ASYNC_INLINE_BODY = 128_000
STOP_GRACE = 30.0  # SageMaker's time between SIGTERM and SIGKILL
REASON_LIMIT = 1024  # DescribeEndpoint's FailureReason length
INSTALL = ("install the inference server with `bash container/install.sh .venv-serve` in the extension's folder "
           "(or set SD_SAGEMAKER_SERVE_PYTHON to a Python that has torch and diffusers)")
HAS_PACKAGES = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') and u.find_spec('diffusers') else 3)"
LISTENING = re.compile(r"listening on http://[^:\s]+:(\d+)")
TIMED_OUT = (f"Your invocation timed out while waiting for a response from container {CONTAINER}. "
             f"Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again.")

Key = Tuple[str, str, str]  # account, region, endpoint name
Response = Tuple[int, Dict[str, str], object]  # what a moto handler returns (status also in the headers)


class Failure(Exception):
    """An invocation that got no usable answer from the container (timeout, too large, process gone)."""


def serve_python() -> Tuple[Optional[str], Optional[str], bool]:
    """(the Python to run the server with, why there is none, whether its packages still need checking)."""
    chosen = os.environ.get("SD_SAGEMAKER_SERVE_PYTHON")
    if chosen:
        found = shutil.which(chosen)
        if not found:
            return None, f"SD_SAGEMAKER_SERVE_PYTHON is {chosen!r}, which is not a Python that can be run: {INSTALL}.", False
        return found, None, True
    venv = PACKAGE_ROOT / ".venv-serve" / "bin" / "python"
    if venv.exists():
        return str(venv), None, True
    if importlib.util.find_spec("torch") and importlib.util.find_spec("diffusers"):
        return sys.executable, None, False
    return None, f"No Python with the inference server's packages (torch, diffusers) was found: {INSTALL}.", False


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _error(status: int, code: str, message: str, **fields) -> Response:
    body = json.dumps({"Message": message, **fields})
    return status, {"status": str(status), "x-amzn-ErrorType": code, "Content-Type": "application/json"}, body


def _join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


class Served:
    """One endpoint's server process, its state and (async endpoints) its queue."""

    def __init__(self, key: Key, log_path: Path, variant: str, async_config: Optional[dict]):
        self.key, self.log_path, self.variant, self.async_config = key, log_path, variant, async_config
        self.status, self.reason = "Creating", None
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.jobs: "queue.Queue[dict]" = queue.Queue()
        self.worker: Optional[threading.Thread] = None

    @property
    def name(self) -> str:
        return self.key[2]

    def fail(self, sentence: str, with_log: bool = True) -> None:
        head, lead = f"{sentence} Its log is {self.log_path}", "; the last lines:\n"
        tail, room = (_tail(self.log_path) if with_log else ""), REASON_LIMIT - len(head) - len(lead)
        tail = tail[max(0, len(tail) - room):] if room > 0 else ""  # the newest lines fit
        self.status, self.reason = "Failed", (head + (lead + tail if tail else "."))[:REASON_LIMIT]
        log.warning("Endpoint %s failed: %s", self.name, sentence)


class Runtime:
    """The inference-server processes of the emulator's endpoints, and the sagemaker-runtime API in front of them."""

    def __init__(self, work_dir: Path, aws_env: Dict[str, str], startup_timeout: float = 300.0,
                 stop_grace: float = STOP_GRACE):
        self.work_dir = Path(work_dir)
        self.aws_env = {k: v for k, v in aws_env.items() if k.startswith("AWS_")}
        self.startup_timeout, self.stop_grace = startup_timeout, stop_grace
        self._endpoints: Dict[Key, Served] = {}
        self._lock = threading.Lock()
        self._s3 = None
        atexit.register(self.stop_all)

    # -- lifecycle (called from the patched sagemaker backend) -------------------------------------------
    def start_endpoint(self, backend, name: str) -> None:
        """Start the server of an endpoint moto has just created; it stays Creating until the server is ready."""
        key = (backend.account_id, backend.region_name, name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = backend.endpoint_configs[backend.endpoints[name].endpoint_config_name]
        variant = (config.production_variants or [{}])[0]
        served = Served(key, self.work_dir / f"{name}.log", variant.get("VariantName", "AllTraffic"),
                        config.async_inference_config or None)
        environment: Dict[str, str] = {}
        try:
            environment = dict(backend.describe_model(variant["ModelName"]).primary_container.get("Environment") or {})
        except Exception as exc:  # noqa: BLE001 - the endpoint fails with the reason instead
            served.fail(f"Its model could not be read: {exc}", with_log=False)
        with self._lock:
            old, self._endpoints[key] = self._endpoints.get(key), served
        if old:
            self._terminate(old)
        if served.status == "Creating":
            env = self._environment(environment, backend.region_name)
            threading.Thread(target=self._launch, args=(served, env), name=f"endpoint-{name}", daemon=True).start()

    def _environment(self, model_env: Dict[str, str], region: str) -> Dict[str, str]:
        # the container sees its model's environment, never the user's own AWS settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(model_env)
        # a local endpoint runs on this machine, whatever instance type it names: no GPU check for a ml.g5 here
        env.pop("SD_SAGEMAKER_INSTANCE_TYPE", None)
        env.update(self.aws_env, AWS_REGION=region, AWS_DEFAULT_REGION=region)
        env.update(HF_HUB_OFFLINE="1", SD_SAGEMAKER_COMPILE="off", PYTHONUNBUFFERED="1",
                   SD_SAGEMAKER_PARENT_PID=str(os.getpid()))  # the server exits if the emulator dies unannounced
        if PACKAGE_ROOT.name not in ("site-packages", "dist-packages"):  # run this very code, not an older copy
            env["PYTHONPATH"] = str(PACKAGE_ROOT)
        return env

    def _launch(self, served: Served, env: Dict[str, str]) -> None:
        python, problem, check = serve_python()
        if python and check:
            try:
                if subprocess.run([python, "-c", HAS_PACKAGES], env=env, capture_output=True, timeout=60).returncode:
                    problem = f"The Python {python} lacks the inference server's packages (torch, diffusers): {INSTALL}."
            except (OSError, subprocess.TimeoutExpired) as exc:
                problem = f"The Python {python} could not be run ({exc}): {INSTALL}."
        if problem:
            served.fail(problem, with_log=False)
            return
        cache = self.work_dir / served.name
        with served.lock:
            if served.stopped.is_set():
                return
            with open(served.log_path, "wb") as out:  # the child keeps its own copy of the descriptor
                try:
                    served.proc = subprocess.Popen(
                        [python, "-m", "aws_extension", "serve", "--host", "127.0.0.1", "--port", "0",
                         "--cache-dir", str(cache)], cwd=str(self.work_dir), env=env, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=subprocess.STDOUT)
                except OSError as exc:
                    served.fail(f"The inference server could not be started with {python}: {exc}.", with_log=False)
                    return
        log.info("Endpoint %s: inference server pid %d, log %s", served.name, served.proc.pid, served.log_path)
        self._watch(served)

    def _watch(self, served: Served) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not served.stopped.is_set():
            code = served.proc.poll()
            if code is not None:
                served.fail(f"The inference server exited (code {code}) before it was ready.")
                return
            if served.port is None:
                found = LISTENING.search(_tail(served.log_path, 50))
                served.port = int(found.group(1)) if found else None
            else:
                state = self._ping(served)
                if state.get("status") == "ready":
                    served.status = "InService"
                    return
                if state.get("status") == "failed":
                    served.fail(f"The inference server could not start: {state.get('error')}")
                    self._terminate(served)
                    return
            if time.monotonic() > deadline:
                served.fail(f"The inference server was not ready within {self.startup_timeout:.0f} s.")
                self._terminate(served)
                return
            served.stopped.wait(0.25)

    @staticmethod
    def _ping(served: Served) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return json.loads(conn.getresponse().read() or b"{}")
        except (OSError, ValueError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def outcome(self, account: str, region: str, name: str) -> Optional[Tuple[str, Optional[str]]]:
        """The emulator's readiness for this endpoint: None while Creating, else (status, failure reason)."""
        served = self._endpoints.get((account, region, name))
        if served is None:
            return "Failed", "The endpoint has no inference server (the emulator was reset or restarted)."
        return None if served.status == "Creating" else (served.status, served.reason)

    def process(self, name: str, account: Optional[str] = None, region: Optional[str] = None):
        """The endpoint's server process (Popen) or None: for tests and diagnostics."""
        for (acc, reg, n), served in list(self._endpoints.items()):
            if n == name and account in (None, acc) and region in (None, reg):
                return served.proc
        return None

    def stop_endpoint(self, account: str, region: str, name: str) -> None:
        with self._lock:
            served = self._endpoints.pop((account, region, name), None)
        if served:
            self._terminate(served)

    def _terminate(self, served: Served, wait: bool = False) -> Optional[subprocess.Popen]:
        """SIGTERM now (the server drains), SIGKILL after the grace period; queued async work is dropped."""
        with served.lock:
            served.stopped.set()
            proc = served.proc
        try:
            while True:
                served.jobs.get_nowait()
        except queue.Empty:
            pass
        if proc is None or proc.poll() is not None:
            return None
        proc.terminate()
        if not wait:
            threading.Thread(target=self._reap, args=(proc, time.monotonic() + self.stop_grace), daemon=True).start()
        return proc

    @staticmethod
    def _reap(proc: subprocess.Popen, deadline: float) -> None:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        with self._lock:
            everything, self._endpoints = list(self._endpoints.values()), {}
        procs = [p for p in (self._terminate(s, wait=True) for s in everything) if p]
        deadline = time.monotonic() + self.stop_grace
        for proc in procs:
            self._reap(proc, deadline)

    # -- the sagemaker-runtime API -----------------------------------------------------------------------
    def _find(self, account: str, region: str, name: str) -> Tuple[Optional[Served], Optional[Response]]:
        from moto.sagemaker.models import sagemaker_backends

        served = self._endpoints.get((account, region, name))
        exists = name in sagemaker_backends[account][region].endpoints
        if not exists or served is None or served.status != "InService":  # AWS: only InService endpoints exist here
            return None, _error(400, "ValidationError", f"Endpoint {name} of account {account} not found.")
        return served, None

    def _post(self, served: Served, body: bytes, content_type: Optional[str], accept: Optional[str],
              timeout: float, limit: int) -> Tuple[int, str, bytes]:
        if served.port is None or served.proc is None or served.proc.poll() is not None:
            raise Failure(f"The inference server of endpoint {served.name} is not running.")
        headers = {"Content-Length": str(len(body))}
        headers.update({k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v})
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=timeout)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read(limit + 1)
            if len(data) > limit:
                raise Failure(f"The response from container {CONTAINER} is larger than {limit} bytes, the limit "
                              f"of this invocation (response too large).")
            return answer.status, answer.getheader("Content-Type") or "application/octet-stream", data
        except TimeoutError:
            raise Failure(TIMED_OUT) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(f"The connection to container {CONTAINER} failed: {exc}.") from None
        finally:
            conn.close()

    def _model_error(self, served: Served, status: int, message: str) -> Response:
        account, region, name = served.key
        kind = "client" if 400 <= status < 500 else "server"
        return _error(424, "ModelError", f'Received {kind} error ({status}) from {CONTAINER} with message "{message}". '
                                         f"See {served.log_path} for more information.",
                      OriginalStatusCode=status, OriginalMessage=message,
                      LogStreamArn=f"arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{name}"
                                   f":log-stream:{served.variant}/local")

    def invoke(self, account: str, region: str, name: str, body: bytes, headers) -> Response:
        served, refused = self._find(account, region, name)
        if refused:
            return refused
        if served.async_config:
            return _error(400, "ValidationError", f"Endpoint {name} is an asynchronous endpoint: "
                                                  f"use InvokeEndpointAsync with an S3 InputLocation.")
        if len(body) > MAX_PAYLOAD:
            return _error(400, "ValidationError", f"Request {uuid.uuid4()} has oversize body: {len(body)} bytes, "
                                                  f"over the {MAX_PAYLOAD} bytes (6 MB) InvokeEndpoint accepts.")
        try:
            status, content_type, data = self._post(served, body, headers.get("Content-Type"), headers.get("Accept"),
                                                    INVOKE_TIMEOUT, MAX_PAYLOAD)
        except Failure as exc:
            return self._model_error(served, 0, str(exc))
        if status != 200:
            return self._model_error(served, status, data.decode("utf-8", "replace"))
        return 200, {"status": "200", "Content-Type": content_type,
                     "x-Amzn-Invoked-Production-Variant": served.variant}, data

    def invoke_async(self, account: str, region: str, name: str, body: bytes, headers) -> Response:
        served, refused = self._find(account, region, name)
        if refused:
            return refused
        output = (served.async_config or {}).get("OutputConfig") or {}
        if not output.get("S3OutputPath"):
            return _error(400, "ValidationError", f"Endpoint {name} is not an asynchronous endpoint: use InvokeEndpoint.")
        location = headers.get("X-Amzn-SageMaker-InputLocation")
        if bool(location) == bool(body):
            return _error(400, "ValidationError", "Provide exactly one of InputLocation and Body.")
        if location and not re.match(r"^s3://[^/]+/.+", location):
            return _error(400, "ValidationError", f"InputLocation {location!r} is not an S3 URI (s3://bucket/key).")
        if len(body) > ASYNC_INLINE_BODY:
            return _error(400, "ValidationError", f"The inline Body is {len(body)} bytes; the limit is {ASYNC_INLINE_BODY}.")
        try:
            timeout = int(headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds") or ASYNC_TIMEOUT)
        except ValueError:
            timeout = 0
        if not 1 <= timeout <= ASYNC_MAX_TIMEOUT:
            return _error(400, "ValidationError", f"InvocationTimeoutSeconds must be 1 to {ASYNC_MAX_TIMEOUT}.")
        inference_id = headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        job = {"id": inference_id, "input": location, "body": body, "timeout": timeout,
               "content_type": headers.get("X-Amzn-SageMaker-Content-Type"),
               "accept": headers.get("X-Amzn-SageMaker-Accept"),
               "output": _join(output["S3OutputPath"], f"{inference_id}.out"),
               "failure": _join(output.get("S3FailurePath") or output["S3OutputPath"], f"{inference_id}-error.out")}
        with served.lock:  # one worker per endpoint: one invocation at a time, the rest wait in its queue
            served.jobs.put(job)
            if served.worker is None:
                served.worker = threading.Thread(target=self._work, args=(served,), name=f"async-{name}", daemon=True)
                served.worker.start()
        return 202, {"status": "202", "Content-Type": "application/json",
                     "X-Amzn-SageMaker-OutputLocation": job["output"],
                     "X-Amzn-SageMaker-FailureLocation": job["failure"]}, json.dumps({"InferenceId": inference_id})

    def _work(self, served: Served) -> None:
        while not served.stopped.is_set():
            try:
                job = served.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._run(served, job)
            except Exception:  # noqa: BLE001 - a worker thread has no one to raise to
                log.exception("async invocation %s on %s", job["id"], served.name)

    def _run(self, served: Served, job: dict) -> None:
        s3 = self._s3_client()
        try:
            body = job["body"] or self._read(s3, job["input"])
            status, content_type, data = self._post(served, body, job["content_type"], job["accept"],
                                                    job["timeout"], ASYNC_MAX_BODY)
        except Failure as exc:
            status, content_type, data = 0, "text/plain", str(exc).encode()
        if served.stopped.is_set():  # deleted meanwhile: nothing is written, as the queue is gone
            return
        # the model's own answer goes to S3 either way: its body on 200, its error body otherwise
        target = job["output"] if status == 200 else job["failure"]
        bucket, key = split_s3_uri(target)
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    @staticmethod
    def _read(s3, location: str) -> bytes:
        bucket, key = split_s3_uri(location)
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head["ContentLength"] > ASYNC_MAX_BODY:
                raise Failure(f"The input {location} is {head['ContentLength']} bytes, over the 1 GB limit.")
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the failure location
            raise Failure(f"Could not read the input {location}: {exc}") from None

    def _s3_client(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            env = self.aws_env
            self._s3 = boto3.client("s3", endpoint_url=env.get("AWS_ENDPOINT_URL"), region_name=env.get("AWS_REGION"),
                                    aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                                    aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                                    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
        return self._s3


def patch_moto(current: Callable[[], Optional[Runtime]]) -> None:
    """Route moto's InvokeEndpoint / InvokeEndpointAsync to the runtime while one is on (moto's canned answers if not)."""
    from urllib.parse import unquote

    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse as Handler

    original_setup, original_sync, original_async = Handler.setup_class, Handler.invoke_endpoint, Handler.invoke_endpoint_async

    def setup_class(self, request, full_url=None, headers=None, use_raw_body=None):
        # bodies are the container's business (images, any bytes): moto would decode them as UTF-8
        return original_setup(self, request, full_url, headers, True if current() else use_raw_body)

    def call(method: str, fallback):
        def handler(self):
            runtime = current()
            if runtime is None:
                return fallback(self)
            name = unquote(self.path.split("?")[0].split("/")[2])
            body = self.raw_body if isinstance(self.raw_body, bytes) else (self.raw_body or "").encode()
            return getattr(runtime, method)(self.current_account, self.region, name, body, self.headers)

        handler.__name__ = fallback.__name__
        return handler

    Handler.setup_class = setup_class
    Handler.invoke_endpoint = call("invoke", original_sync)
    Handler.invoke_endpoint_async = call("invoke_async", original_async)
