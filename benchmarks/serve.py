"""The inference server beside plain diffusers, in one run: cold start, then generation eager and compiled.

Run it in the server's environment (container/install.sh), on the GPU machine for the real figures:

    python benchmarks/serve.py --arch sd15 --size 512          # SD 1.5 architecture, random fp16 weights
    python benchmarks/serve.py --arch sdxl --size 1024
    python benchmarks/serve.py --arch sd15 --no-generate --no-fetch  # loading only (what a CPU box can do)
    python benchmarks/serve.py --arch tiny --size 64 --steps 4  # smoke run of this script

Cold start: our cache (parallel ranged GETs, sha256) + loader beside boto3's download_file + diffusers'
from_single_file. Generation: steps with CFG through our Engine (the server's code path minus HTTP) beside the
same diffusers pipeline called directly; with --compile both compile the UNet (torch.compile reduce-overhead):
ours in the background while serving eagerly, theirs up front. --restart measures a fresh process whose compile
artifacts come from S3 (the instance that scales out from zero).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "serve")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import median, start_emulator  # noqa: E402


def checkpoint(arch: str, folder: Path) -> Path:
    import tiny_models

    path = folder / f"bench-{arch}.safetensors"
    if not path.exists():
        started = time.monotonic()
        if arch == "tiny":
            tiny_models.make_sd1(path)
        else:
            tiny_models.make_real("sdxl" if arch == "sdxl" else "sd1", path)
        print(f"made {path.name}: {path.stat().st_size / 1e9:.2f} GB in {time.monotonic() - started:.0f} s")
    return path


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, runs: int):
    values = []
    for _ in range(runs):
        sync()
        started = time.monotonic()
        fn()
        sync()
        values.append(time.monotonic() - started)
    return median(values)


def cold_start(aws, uri: str, path: Path, work: Path, fetch: bool) -> dict:
    import torch

    from aws_extension.serve.cache import ModelCache, parse_s3_uri
    from aws_extension.serve.checkpoint import config_dir, detect, load_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    rows = {}
    if fetch:
        bucket, key = parse_s3_uri(uri)
        started = time.monotonic()
        ModelCache(aws, work / "cache", 100 * 1024 ** 3).fetch(uri)
        ours = time.monotonic() - started
        started = time.monotonic()
        aws.client("s3").download_file(bucket, key, str(work / "plain.safetensors"))
        rows["fetch from S3 (s)"] = (ours, time.monotonic() - started)
    started = time.monotonic()
    load_pipeline(path, device=device, dtype=dtype, config_root=work / "configs")
    ours = time.monotonic() - started

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    started = time.monotonic()
    arch = detect(path)
    cls = StableDiffusionXLPipeline if arch.kind == "sdxl" else StableDiffusionPipeline
    cls.from_single_file(str(path), config=str(config_dir(arch, work / "configs")), local_files_only=True,
                         torch_dtype=dtype).to(device)
    rows["load to the device (s)"] = (ours, time.monotonic() - started)
    return rows


def generation(aws, uri: str, work: Path, a) -> dict:
    import torch

    from aws_extension.serve.cache import ModelCache
    from aws_extension.serve.engine import Engine
    from aws_extension.contract.request import parse_request

    os.environ["SD_SAGEMAKER_COMPILE"] = "on" if a.compile else "off"
    engine = Engine(ModelCache(aws, work / "cache", 100 * 1024 ** 3), work)
    payload = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "steps": a.steps, "width": a.size,
               "height": a.size, "seed": 1, "sampler_name": "Euler"}
    req = parse_request({"task": "txt2img", "payload": payload, "models": {"checkpoint": uri}})
    first = timed(lambda: engine.generate(req), 1)  # loads the model; with --compile starts the compile
    result = {"first request (s)": (first, None)}
    if a.compile:
        compiled = engine.loaded.compiled
        started = time.monotonic()
        compiled.wait()
        result["compile ready after (s)"] = (first + time.monotonic() - started, None)
    ours = timed(lambda: engine.generate(req), a.runs)

    pipe = engine.loaded.pipe  # the same weights and scheduler, called the plain diffusers way
    if a.compile:
        compiled.restore()
        torch._dynamo.reset()
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead")
        started = time.monotonic()
        call_plain(pipe, a)
        result["plain compile (s)"] = (None, time.monotonic() - started)
    theirs = timed(lambda: call_plain(pipe, a), a.runs)
    result["s/image"] = (ours, theirs)
    result["it/s"] = (a.steps / ours, a.steps / theirs)
    return result


def call_plain(pipe, a):
    import torch

    pipe(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=a.steps, guidance_scale=7.0,
         width=a.size, height=a.size, generator=torch.Generator("cpu").manual_seed(1))


def restart(env: dict, uri: str, work: Path, a) -> float:
    """A fresh process with the compile artifacts in S3: seconds until its compiled graph is ready."""
    code = ("import sys, json; sys.argv = %r; import benchmarks.serve as b; b.child()"
            % ([__file__, "--arch", a.arch, "--size", str(a.size), "--steps", str(a.steps), "--compile",
                "--child-uri", uri, "--work", str(work / "restart")],))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ready"]


def child():
    a = parser().parse_args()
    from aws_extension.core.aws import Aws
    from aws_extension.core.config import Settings

    os.environ["SD_SAGEMAKER_COMPILE"] = "on"
    started = time.monotonic()
    from aws_extension.serve.cache import ModelCache
    from aws_extension.serve.engine import Engine
    from aws_extension.contract.request import parse_request

    engine = Engine(ModelCache(Aws(Settings.resolve()), Path(a.work) / "cache", 100 * 1024 ** 3), Path(a.work))
    payload = {"steps": a.steps, "width": a.size, "height": a.size, "seed": 1, "sampler_name": "Euler"}
    engine.generate(parse_request({"task": "txt2img", "payload": payload, "models": {"checkpoint": a.child_uri}}))
    engine.loaded.compiled.wait()
    print(json.dumps({"ready": time.monotonic() - started}))


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=("tiny", "sd15", "sdxl"), default="sd15")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--restart", action="store_true", help="also a fresh process with the S3 compile cache")
    p.add_argument("--no-generate", action="store_true")
    p.add_argument("--no-fetch", action="store_true",
                   help="skip the S3 fetch (the emulator takes minutes for multi-GB objects: fetch figures need "
                        "real S3 or a small model)")
    p.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "sd-bench"))
    p.add_argument("--child-uri")
    p.add_argument("--work")
    return p


def main():
    a = parser().parse_args()
    folder = Path(a.models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint(a.arch, folder)
    proc, env = start_emulator()
    try:
        os.environ.update(env)
        from aws_extension.core.aws import Aws
        from aws_extension.core.bootstrap import setup
        from aws_extension.core.config import Settings
        from aws_extension.core.models.uploads import upload_paths

        aws = Aws(Settings.resolve())
        setup(aws)
        [up] = upload_paths(aws, "checkpoint", [str(path)])
        uri = f"s3://{aws.bucket}/{up.key}"
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            rows.update(cold_start(aws, uri, path, Path(tmp), not a.no_fetch))
        if not a.no_generate:
            with tempfile.TemporaryDirectory() as tmp:
                rows.update(generation(aws, uri, Path(tmp), a))
                if a.compile and a.restart:
                    rows["restart: compile ready after (s)"] = (restart(dict(os.environ), uri, Path(tmp), a), None)
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        print(f"\n{a.arch} {a.size}x{a.size}, {a.steps} steps, CFG 7, on {device}"
              f"{', compiled' if a.compile else ''}; size {path.stat().st_size / 1e9:.2f} GB")
        print(f"| {'':32} | {'ours':>8} | {'plain':>8} | {'ratio':>6} |")
        for name, (ours, theirs) in rows.items():
            ratio = f"{ours / theirs:.2f}" if ours and theirs else ""
            cells = [f"{v:8.3f}" if v is not None else " " * 8 for v in (ours, theirs)]
            print(f"| {name:32} | {cells[0]} | {cells[1]} | {ratio:>6} |")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
