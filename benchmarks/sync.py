"""A second sync, every file already in the cloud, beside listing the bucket once with bare boto3.

`models sync` over a WebUI folder of N model files (default 50), all uploaded by a first sync: it should cost about
one listing (one LIST of the hash markers and one of the models, to see the matched models are still there; the
files' sha256 from the hash cache, nothing read, nothing sent). The baseline lists every key of the bucket (models,
records, markers) with a bare boto3 paginator; a second baseline lists only the markers (the first of sync's two
LISTs, each about a third of the bucket). The emulator runs in its own process; runs alternate. Usage: python benchmarks/sync.py [--files 50] [--size-mb 2] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, start_emulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--size-mb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    proc, env = start_emulator()
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["SD_SAGEMAKER_HASH_CACHE"] = str(Path(tmp) / "hashes.json")
            import boto3

            from aws_extension.core.aws import Aws
            from aws_extension.core.bootstrap import setup
            from aws_extension.core.models.localmodels import folders_from_dirs, standalone_cache
            from aws_extension.core.models.sync import sync_models

            aws = Aws()
            setup(aws)
            root = Path(tmp) / "webui"
            folders = ["models/Stable-diffusion", "models/Lora", "models/Lora/styles", "models/VAE", "embeddings"]
            size = int(args.size_mb * 1024 * 1024)
            for i in range(args.files):
                path = root / folders[i % len(folders)] / f"model-{i:03}.safetensors"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(size))

            def ours():
                found, failures = folders_from_dirs([str(root)])
                items = sync_models(aws, found, cache=standalone_cache([str(root)]))
                return failures + items

            started = time.perf_counter()
            first = ours()
            first_s = time.perf_counter() - started
            assert sorted({i.status for i in first}) == ["uploaded"], [i.error for i in first if not i.ok]

            s3 = boto3.client("s3")

            def bare(prefix=""):
                pages = s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
                return [o["Key"] for page in pages for o in page.get("Contents", [])]

            listed = len(bare())
            timings = {"second sync": [], "bare list": [], "bare hashes/": []}
            for _ in range(args.runs):
                for name, fn in (("second sync", ours), ("bare list", bare), ("bare hashes/", lambda: bare("hashes/"))):
                    started = time.perf_counter()
                    result = fn()
                    timings[name].append(time.perf_counter() - started)
                    if name == "second sync":
                        assert {i.status for i in result} == {"skipped"}
    finally:
        proc.terminate()
        proc.wait(10)

    total_mb = args.files * size / 1e6
    print(f"\n{args.files} model files ({total_mb:.0f} MB), first sync (hash + upload): {first_s:.2f} s")
    print(f"bucket: {listed} keys; median of {args.runs} runs")
    for name, values in timings.items():
        print(f"{name:12} {median(values) * 1000:8.1f} ms")
    ratio = median(timings["second sync"]) / median(timings["bare list"])
    print(f"{'ratio':12} {ratio:8.2f} (target <= 1.2)")
    same = median(timings["second sync"]) / median(timings["bare hashes/"])
    print(f"{'ratio (2)':12} {same:8.2f} (to the LIST of hashes/ only: our LIST of models/, walk, stats, cache and plan)")


if __name__ == "__main__":
    main()
