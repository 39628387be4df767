"""SageMaker's async inference played in-process for tests, on the emulator: no inference server runs.

The emulator's InvokeEndpointAsync is replaced by AsyncStandIn, which answers as SageMaker does (an output and a
failure location in our bucket) and, from a thread, reads the request the client wrote to S3 and writes what the
inference server would answer: PNGs carrying their infotext and the WebUI's info JSON (server_answer).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Callable, List, Optional, Tuple

from PIL import Image, PngImagePlugin

from aws_extension.core import endpoints
from aws_extension.core.endpoints import EndpointSpec
from aws_extension.contract.infotext import infotext

BUCKET = "sd-webui-sagemaker-local"
DEFAULT_SEED = 1234  # what the stand-in "draws" for seed -1
MODEL = ("sd15", "6ce0161689")  # the model name and hash its infotexts carry


def png(seed: int, text: Optional[str], size: Tuple[int, int] = (8, 8)) -> bytes:
    """A PNG of one colour with a "parameters" text chunk (none when text is None)."""
    meta = PngImagePlugin.PngInfo()
    if text:
        meta.add_text("parameters", text)
    out = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 40, 80)).save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


def server_answer(request: dict, with_chunk: bool = True) -> bytes:
    """The inference server's answer to this request: one image per batch_size x n_iter, sized as asked,
    seeds counted up from the request's (or DEFAULT_SEED), and info shaped like the WebUI's Processed.js()."""
    p = request["payload"]
    count = p.get("batch_size", 1) * p.get("n_iter", 1)
    seed = p.get("seed", -1) if p.get("seed", -1) != -1 else DEFAULT_SEED
    subseed = p.get("subseed", -1) if p.get("subseed", -1) != -1 else DEFAULT_SEED + 1000
    seeds, subseeds = [seed + i for i in range(count)], [subseed + i for i in range(count)]
    clip_skip = (p.get("override_settings") or {}).get("CLIP_stop_at_last_layers", 1)
    size = (p.get("width", 512), p.get("height", 512))
    prompt, negative = p.get("prompt", ""), p.get("negative_prompt", "")
    texts = [infotext(prompt, negative, steps=p.get("steps", 50),
                      sampler=p.get("sampler_name", "Euler"), schedule_type=p.get("scheduler"),
                      cfg_scale=p.get("cfg_scale", 7.0), seed=s, width=size[0], height=size[1],
                      model_name=MODEL[0], model_hash=MODEL[1], clip_skip=clip_skip,
                      denoising_strength=p.get("denoising_strength") if request["task"] == "img2img" else None)
             for s in seeds]
    images = [base64.b64encode(png(s, t if with_chunk else None, size)).decode() for s, t in zip(seeds, texts)]
    info = {"prompt": prompt, "all_prompts": [prompt] * count,
            "negative_prompt": negative, "all_negative_prompts": [negative] * count,
            "seed": seeds[0], "all_seeds": seeds, "subseed": subseeds[0], "all_subseeds": subseeds,
            "sampler_name": p.get("sampler_name", "Euler"), "sd_model_name": MODEL[0], "sd_model_hash": MODEL[1],
            "sd_vae_name": None, "sd_vae_hash": None, "clip_skip": clip_skip,
            "extra_generation_params": {"Schedule type": p.get("scheduler") or "Automatic"}, "infotexts": texts}
    return json.dumps({"images": images, "parameters": p, "info": json.dumps(info)}).encode()


class AsyncStandIn:
    """Set `respond(request) -> ("output" | "failure", bytes) | None` (None: never answers) and `before_answer()`;
    `inputs` lists (input key, request) as they were read."""

    def __init__(self, s3, bucket: str = BUCKET, delay: float = 0.3):
        self.s3, self.bucket, self.delay = s3, bucket, delay
        self.respond: Callable[[dict], Optional[Tuple[str, bytes]]] = lambda request: ("output", server_answer(request))
        self.before_answer: Callable[[], None] = lambda: None
        self.inputs: List[Tuple[str, dict]] = []
        self.threads: List[threading.Thread] = []

    def __call__(self, endpoint_name: str, input_location: str):  # set on the class: called without the backend
        key = input_location.split(f"s3://{self.bucket}/", 1)[1]
        stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        output = f"inference/output/{stem}.out"
        failure = f"inference/failure/{stem}-error.out"
        thread = threading.Thread(target=self._answer, args=(key, output, failure), daemon=True)
        self.threads.append(thread)
        thread.start()
        return f"s3://{self.bucket}/{output}", f"s3://{self.bucket}/{failure}"

    def _answer(self, key: str, output: str, failure: str) -> None:
        request = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        self.inputs.append((key, request))
        time.sleep(self.delay)  # queued, then generating
        self.before_answer()
        outcome = self.respond(request)
        if outcome:
            where, body = outcome
            self.s3.put_object(Bucket=self.bucket, Key=output if where == "output" else failure, Body=body)

    def join(self, timeout: float = 10) -> None:
        for thread in self.threads:
            thread.join(timeout=timeout)


def put_models(aws, s3, models: dict, sha256: dict, bucket: str = BUCKET) -> None:
    """Small stand-in model files ({folder: [names]}) with their records (sha256 by name, where given)."""
    from aws_extension.core.models.catalog import ModelRecord, write_record

    for folder, names in models.items():
        for name in names:
            key = f"models/{folder}/{name}"
            s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 10)
            write_record(aws, ModelRecord(type=folder, name=name, key=key, size=10, sha256=sha256.get(name)))


def install(monkeypatch, s3, bucket: str = BUCKET) -> AsyncStandIn:
    """The stand-in in place of the emulator's async invocation, and the client looking at instances often."""
    from moto.sagemakerruntime.models import SageMakerRuntimeBackend

    from aws_extension.core import generation

    stand_in = AsyncStandIn(s3, bucket)
    monkeypatch.setattr(SageMakerRuntimeBackend, "invoke_endpoint_async", stand_in)
    monkeypatch.setattr(generation, "INSTANCES_EVERY", 0.05)
    return stand_in


def in_service(aws, endpoint_type: str = "async", timeout: float = 15) -> str:
    """A new endpoint of ours, once the emulator reports it InService."""
    name = endpoints.deploy(aws, EndpointSpec(endpoint_type=endpoint_type), background=False).name
    deadline = time.monotonic() + timeout
    while endpoints.describe(aws, name).status != "InService":
        assert time.monotonic() < deadline, "the endpoint did not become InService"
        time.sleep(0.05)
    return name


def set_instances(name: str, count: int) -> None:
    """The endpoint's current instance count as the emulator reports it (0: scaled to zero)."""
    from moto.sagemaker.models import sagemaker_backends

    from aws_extension.local.emulator import ACCOUNT_ID, REGION

    sagemaker_backends[ACCOUNT_ID][REGION].endpoints[name].production_variants[0]["CurrentInstanceCount"] = count
