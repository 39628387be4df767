"""The engine in this process, on the CPU: the GPU thread model with the real dynamo path, checkpoint switches,
the VAE's fp32 re-decode, the compile cache's feature detection, and instances that must not run on the CPU."""

from __future__ import annotations

import logging
import threading
import time
import weakref

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

import aws_extension.serve.engine as engine_module
from aws_extension.serve.cache import ModelCache
from aws_extension.serve.engine import Engine
from aws_extension.serve.handler import Handler
from aws_extension.contract.request import parse_request

SMALL = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 5.0, "seed": 1, "sampler_name": "Euler"}


def request(cloud, name="tiny-sd1", **payload):
    return parse_request({"task": "txt2img", "payload": {**SMALL, **payload}, "models": {"checkpoint": cloud[name]}})


def make_engine(cloud, tmp_path, **kwargs) -> Engine:
    return Engine(ModelCache(cloud["aws"], tmp_path / "models", 1024 ** 3), tmp_path, **kwargs)


def settled(handler: Handler, timeout: float = 60) -> tuple:
    """/ping's answer once the handler is no longer loading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = handler.ping()
        if body["status"] != "loading":
            return status, body
        time.sleep(0.1)
    raise AssertionError("still loading")


class Recorder:
    """What ran on which thread: UNet calls, dynamo compiles, compiled-graph runs, pipeline calls."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def add(self, kind, *detail):
        with self.lock:
            self.events.append((kind, threading.get_ident(), *detail))

    def backend(self, gm, example_inputs):  # a dynamo backend: the traced graph, run as it is (like "eager")
        self.add("compile")

        def run(*args):
            self.add("graph")
            return gm.forward(*args)
        return run

    def watch(self, engine: Engine, monkeypatch):
        """Every UNet call and every pipeline call of the engine, from its first checkpoint on."""
        engine.compile_backend = self.backend
        load = engine_module.load_pipeline

        def load_and_watch(*args, **kwargs):
            pipe, arch = load(*args, **kwargs)
            pipe.unet.register_forward_pre_hook(lambda module, args: self.add("unet"))
            return pipe, arch
        monkeypatch.setattr(engine_module, "load_pipeline", load_and_watch)
        run = engine._run

        def run_and_watch(*args, **kwargs):
            self.add("begin")
            try:
                return run(*args, **kwargs)
            finally:
                self.add("end")
        monkeypatch.setattr(engine, "_run", run_and_watch)

    def pipeline_calls(self):
        """Per pipeline call: 'compiled' or 'eager' for each UNet step (a step that ran a compiled graph)."""
        calls, steps = [], None
        for kind, *_ in self.events:
            if kind == "begin":
                steps = []
            elif kind == "unet" and steps is not None:
                steps.append("eager")
            elif kind == "graph" and steps:
                steps[-1] = "compiled"
            elif kind == "end":
                calls.append(steps)
                steps = None
        return calls


@pytest.fixture
def compiling(monkeypatch):
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE", "on")
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE_MODE", "")
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()


def test_one_gpu_thread_compiles_between_requests_and_a_denoise_never_switches(cloud, tmp_path, monkeypatch,
                                                                             compiling):
    engine = make_engine(cloud, tmp_path)
    recorder = Recorder()
    recorder.watch(engine, monkeypatch)
    callers, failures = set(), []

    def requests(count):
        callers.add(threading.get_ident())
        try:
            for _ in range(count):
                assert len(engine.generate(request(cloud)).images) == 1
        except Exception as exc:
            failures.append(exc)

    def from_threads(count):
        threads = [threading.Thread(target=requests, args=(count,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not failures, failures

    from_threads(2)  # the first call of the shape is eager; its compile runs once no request waits
    engine.loaded.compiled.wait(600)
    from_threads(1)

    threads = {ident for _, ident, *_ in recorder.events}
    assert len(threads) == 1 and not threads & callers  # one thread: neither a request's nor a compile's own
    kinds = [kind for kind, *_ in recorder.events]
    assert "compile" in kinds
    inside = False
    for kind in kinds:  # compiles happen between requests, never during one
        inside = {"begin": True, "end": False}.get(kind, inside)
        assert not (inside and kind == "compile")
    calls = recorder.pipeline_calls()
    assert len(calls) == 9 and all(len(steps) == SMALL["steps"] for steps in calls)
    assert all(len(set(steps)) == 1 for steps in calls), calls  # all eager or all compiled
    assert calls[0][0] == "eager" and all(steps[0] == "compiled" for steps in calls[-3:])


def test_checkpoint_switch_resets_dynamo_on_the_gpu_thread_and_frees_the_old_model_first(cloud, tmp_path,
                                                                                        monkeypatch, compiling,
                                                                                        caplog):
    caplog.set_level(logging.INFO, "aws_extension")
    engine = make_engine(cloud, tmp_path)
    recorder = Recorder()
    recorder.watch(engine, monkeypatch)
    engine.generate(request(cloud))
    old = engine.loaded
    old.compiled.wait(600)
    assert old.compiled.ready  # dynamo now holds a graph of the old UNet
    old_unet = weakref.ref(old.pipe.unet)
    del old

    reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (recorder.add("reset"), reset())[1])
    load = engine_module.load_pipeline

    def load_next(*args, **kwargs):
        entries = torch._C._dynamo.eval_frame._debug_get_cache_entry_list(UNet2DConditionModel.forward.__code__)
        recorder.add("load", old_unet() is None, len(entries))
        return load(*args, **kwargs)
    monkeypatch.setattr(engine_module, "load_pipeline", load_next)
    engine.generate(request(cloud, "tiny-sdxl"))
    [gpu_thread] = {ident for kind, ident, *_ in recorder.events if kind == "unet"}
    switch = [e for e in recorder.events if e[0] in ("reset", "load")]
    assert switch == [("reset", gpu_thread), ("load", gpu_thread, True, 0)]  # reset, old UNet gone, then the load
    engine.loaded.compiled.wait(600)

    # a request for a new shape leaves a compile pending; a switch that was already waiting drops it
    block = threading.Event()
    blocker = threading.Thread(target=engine.worker.run, args=(block.wait,))
    blocker.start()
    time.sleep(0.2)
    results = {}
    first = threading.Thread(target=lambda: results.update(sdxl=engine.generate(request(cloud, "tiny-sdxl",
                                                                                         width=96))))
    first.start()
    time.sleep(0.3)
    second = threading.Thread(target=lambda: results.update(sd1=engine.generate(request(cloud))))
    second.start()
    time.sleep(0.3)
    block.set()
    for t in (blocker, first, second):
        t.join(600)
    assert set(results) == {"sd1", "sdxl"} and engine.loaded.uri == cloud["tiny-sd1"]
    assert f"dropped 1 pending compile(s) of {cloud['tiny-sdxl']}" in caplog.text


def test_a_nan_decode_in_reduced_precision_is_decoded_again_in_fp32(cloud, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE", "off")
    load = engine_module.load_pipeline

    def load_overflowing(*args, **kwargs):  # the VAE overflows as an SD 1.x VAE can in fp16: NaN, unless fp32
        pipe, arch = load(*args, **kwargs)
        pipe.vae.decoder.register_forward_hook(
            lambda module, args, out: out if out.dtype == torch.float32 else torch.full_like(out, float("nan")))
        return pipe, arch
    monkeypatch.setattr(engine_module, "load_pipeline", load_overflowing)
    engine = make_engine(cloud, tmp_path, device="cpu", dtype=torch.bfloat16)
    [image] = engine.generate(request(cloud)).images
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 1 and pixels.mean() > 5  # a picture, not a black square
    assert "re-decoded in fp32" in caplog.text
    assert engine.loaded.pipe.vae.dtype == torch.bfloat16  # and back to the reduced precision for the next


def test_compile_cache_without_torch_support_is_said_once_and_on_ping(cloud, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE", "on")
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE_BACKEND", "inductor")
    monkeypatch.delattr(torch.compiler, "save_cache_artifacts")  # torch 2.6, as in AWS's prebuilt image
    monkeypatch.delattr(torch.compiler, "load_cache_artifacts")
    engine = make_engine(cloud, tmp_path)
    status, body = settled(Handler(lambda: engine))
    assert status == 200 and body["compile"] == {"enabled": True, "cache": "unsupported"}
    said = [r.getMessage() for r in caplog.records if "compile cache" in r.getMessage()]
    assert len(said) == 1 and "unavailable with torch" in said[0] and "compiles afresh" in said[0]


def test_compile_cache_objects_loaded_from_s3_show_on_ping(cloud, tmp_path, monkeypatch):
    from aws_extension.serve.compiled import ArtifactStore, cache_key

    monkeypatch.setenv("SD_SAGEMAKER_COMPILE", "on")
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE_BACKEND", "inductor")
    monkeypatch.setenv("SD_SAGEMAKER_COMPILE_MODE", "max-autotune-no-cudagraphs")  # a prefix of this test's own
    torch._dynamo.reset()
    torch.compile(lambda x: torch.cos(x) * 3 - x, backend="inductor")(torch.randn(8))
    assert ArtifactStore(cloud["aws"].client("s3"), cloud["aws"].bucket,
                         cache_key("max-autotune-no-cudagraphs")).save()
    assert settled(Handler(lambda: make_engine(cloud, tmp_path)))[1]["compile"] == {"enabled": True, "cache": "loaded 1"}


@pytest.mark.parametrize("instance_type", ["ml.g5.2xlarge", "ml.p4d.24xlarge"])
def test_a_gpu_instance_without_cuda_reports_unhealthy_instead_of_running_on_the_cpu(cloud, tmp_path, monkeypatch,
                                                                                   caplog, instance_type):
    monkeypatch.setenv("SD_SAGEMAKER_INSTANCE_TYPE", instance_type)
    status, body = settled(Handler.from_environment(str(tmp_path), 1024 ** 3))
    assert status == 500 and body["status"] == "failed"
    for said in (body["error"], caplog.text):
        assert instance_type in said and "InferenceAmiVersion" in said and "driver" in said
        assert f"CUDA {torch.version.cuda}" in said if torch.version.cuda else "without CUDA" in said


def test_a_cpu_instance_or_a_local_run_still_starts_on_the_cpu(cloud, tmp_path, monkeypatch):
    for instance_type in ("ml.m5.xlarge", None):
        if instance_type:
            monkeypatch.setenv("SD_SAGEMAKER_INSTANCE_TYPE", instance_type)
        else:
            monkeypatch.delenv("SD_SAGEMAKER_INSTANCE_TYPE", raising=False)
        assert settled(Handler.from_environment(str(tmp_path), 1024 ** 3))[1]["status"] == "ready"


def test_toolkit_model_fn_waits_for_the_preload_and_raises_when_it_fails(cloud, tmp_path, monkeypatch):
    from aws_extension.serve import toolkit_entry

    monkeypatch.setenv("SD_SAGEMAKER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SD_SAGEMAKER_CACHE_GB", "1")
    monkeypatch.setattr(toolkit_entry.atexit, "register", lambda *a: None)
    monkeypatch.setenv("SD_SAGEMAKER_PRELOAD_CHECKPOINT", cloud["tiny-sd1"])
    handler = toolkit_entry.model_fn("/opt/ml/model")
    assert handler.ping()[1]["status"] == "ready"
    assert handler._engine.loaded.uri == cloud["tiny-sd1"]  # loaded before the toolkit's /ping says healthy

    missing = cloud["tiny-sd1"].replace("tiny-sd1", "nothing-here")
    monkeypatch.setenv("SD_SAGEMAKER_PRELOAD_CHECKPOINT", missing)
    with pytest.raises(RuntimeError, match="nothing-here.safetensors"):
        toolkit_entry.model_fn("/opt/ml/model")
