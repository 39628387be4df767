"""torch.compile on the GPU worker: requests never wait, the compiled graph takes over, artifacts go to S3.

On the CPU the UNet is compiled with the "eager" backend (the real torch.compile tracing and guards, without
Inductor's minutes of code generation); the S3 artifact round trip uses Inductor on a small function.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from diffusers import UNet2DConditionModel

from aws_extension.serve.compiled import ArtifactStore, CompiledModule, GpuWorker, cache_key


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8,
                                attention_head_dim=4, norm_num_groups=32).eval()


def inputs(batch=2, side=8):
    g = torch.Generator().manual_seed(batch * 100 + side)
    return (torch.randn(batch, 4, side, side, generator=g), torch.tensor(10),
            torch.randn(batch, 77, 32, generator=g))


def test_calls_run_on_the_worker_eager_until_warm_and_a_denoise_keeps_its_choice(unet):
    expected = unet(*inputs(), return_dict=False)[0]
    worker = GpuWorker()
    compiled = CompiledModule(unet, worker, mode=None, backend="eager")
    try:
        seen, eager = [], []
        original, original_eager = compiled.compiled, compiled.eager
        compiled.compiled = lambda *a, **k: (seen.append(threading.get_ident()), original(*a, **k))[1]
        compiled.eager = lambda *a, **k: (eager.append(threading.get_ident()), original_eager(*a, **k))[1]
        with torch.inference_mode(), compiled.denoising():
            started = time.monotonic()
            first = unet(*inputs(), return_dict=False)[0]
            assert time.monotonic() - started < 5  # answered eagerly; the graph compiles after
            compiled.wait(120)
            assert compiled.ready and not compiled.failed
            warm_ups = len(seen)
            second = unet(*inputs(), return_dict=False)[0]  # still this denoise: eager, though the graph is ready
        assert torch.equal(first, expected) and torch.equal(second, expected) and len(seen) == warm_ups
        with torch.inference_mode():
            again = unet(*inputs(), return_dict=False)[0]
        assert len(seen) == warm_ups + 1  # the next call goes through the compiled graph
        assert torch.allclose(again, expected, atol=1e-5)
        # a new shape is eager again (and asks for its own compile); the known one stays compiled
        with torch.inference_mode():
            unet(*inputs(batch=1, side=16), return_dict=False)
        assert len(compiled.ready) == 1 and len(compiled.pending) == 2
        compiled.wait(120)
        assert len(compiled.ready) == 2
        # the caller's thread never runs the module or its graphs: the worker does, all of it
        assert set(seen) == set(eager) == {worker.thread.ident} and len(eager) == 3
    finally:
        compiled.restore()


def test_compile_artifacts_round_trip_through_s3(cloud):
    torch._dynamo.reset()
    fn = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), backend="inductor")
    fn(torch.randn(16))
    s3 = cloud["aws"].client("s3")
    store = ArtifactStore(s3, cloud["aws"].bucket, cache_key("default"))
    key = store.save()
    assert key and key.startswith("compile-cache/cpu/torch-")
    assert store.save() == key  # nothing new: the same object, not a second upload
    fresh = ArtifactStore(s3, cloud["aws"].bucket, cache_key("default"))
    assert fresh.load() == 1
