"""torch.compile in the background: requests never wait, the compiled graph takes over, artifacts go to S3.

On the CPU the UNet is compiled with the "eager" backend (the real torch.compile tracing and guards, without
Inductor's minutes of code generation); the S3 artifact round trip uses Inductor on a small function.
"""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import UNet2DConditionModel

from aws_extension.serve.compiled import ArtifactStore, CompiledModule, cache_key


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


def test_first_call_is_eager_then_the_compiled_graph_takes_over(unet):
    expected = unet(*inputs(), return_dict=False)[0]
    compiled = CompiledModule(unet, mode=None, backend="eager")
    try:
        seen = []
        original = compiled.compiled
        compiled.compiled = lambda *a, **k: (seen.append(1), original(*a, **k))[1]
        started = time.monotonic()
        with torch.inference_mode():
            first = unet(*inputs(), return_dict=False)[0]
        assert time.monotonic() - started < 5  # answered eagerly while the graph compiles
        assert torch.equal(first, expected)
        compiled.wait(120)
        assert compiled.ready and not compiled.failed
        calls_while_warming = len(seen)
        with torch.inference_mode():
            again = unet(*inputs(), return_dict=False)[0]
        assert len(seen) == calls_while_warming + 1  # this call went through the compiled graph
        assert torch.allclose(again, expected, atol=1e-5)
        # a new shape is eager again (and starts its own compile); the known one stays compiled
        with torch.inference_mode():
            unet(*inputs(batch=1, side=16), return_dict=False)
        assert len(compiled.ready) == 1 and len(compiled.started) == 2
        compiled.wait(120)
        assert len(compiled.ready) == 2
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
