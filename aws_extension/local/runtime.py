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
from pathlib import Path
from typing import Dict, Optional, Tuple

from .invocations import Invocations

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding aws_extension/
STOP_GRACE = 30.0  # SageMaker's time between SIGTERM and SIGKILL
REASON_LIMIT = 1024  # DescribeEndpoint's FailureReason length
INSTALL = ("install the inference server with `bash container/install.sh .venv-serve` in the extension's folder "
           "(or set SD_SAGEMAKER_SERVE_PYTHON to a Python that has torch and diffusers)")
HAS_PACKAGES = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') and u.find_spec('diffusers') else 3)"
LISTENING = re.compile(r"listening on http://[^:\s]+:(\d+)")

Key = Tuple[str, str, str]  # account, region, endpoint name


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


class Runtime(Invocations):
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
