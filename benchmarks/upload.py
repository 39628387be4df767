"""A local model upload to the emulator: ours beside boto3's default `upload_file`, same file, same server.

Prints wall time and client CPU seconds per GB for each, and the ratios (ours / boto3). The emulator runs
in its own process; runs alternate to share the machine's noise. Usage: python benchmarks/upload.py [--size-mb 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, start_emulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    proc, env = start_emulator()
    os.environ.update(env)
    try:
        import boto3

        from aws_extension.core.aws import Aws
        from aws_extension.core.models.uploads import upload_paths

        aws = Aws()
        s3 = boto3.client("s3")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.safetensors"
            with path.open("wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(1024 * 1024))
            size_gb = path.stat().st_size / 1e9
            timings = {"ours": [], "boto3 upload_file": [], "boto3 + sha256 pass": []}

            def ours(i):
                s3.delete_object(Bucket=aws.bucket, Key="models/Lora/bench.safetensors.json")  # no skip
                [r] = upload_paths(aws, "lora", [str(path)])
                assert r.ok, r.error

            def baseline(i):
                s3.upload_file(str(path), aws.bucket, f"baseline/{i}.safetensors")

            def baseline_hashed(i):  # what it takes to get the sha256 the record needs with boto3 alone
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    for block in iter(lambda: f.read(8 << 20), b""):
                        digest.update(block)
                baseline(i)

            for i in range(args.runs):
                for name, fn in (("ours", ours), ("boto3 upload_file", baseline), ("boto3 + sha256 pass", baseline_hashed)):
                    wall, cpu = time.perf_counter(), time.process_time()
                    fn(i)
                    timings[name].append((time.perf_counter() - wall, (time.process_time() - cpu) / size_gb))
    finally:
        proc.terminate()
        proc.wait(10)

    print(f"\n{args.size_mb} MB upload to the local emulator, median of {args.runs} runs")
    print(f"{'':22} {'wall s':>8} {'client CPU s/GB':>16}")
    rows = {name: (median([w for w, _ in t]), median([c for _, c in t])) for name, t in timings.items()}
    for name, (wall, cpu) in rows.items():
        print(f"{name:22} {wall:8.2f} {cpu:16.2f}")
    (ow, oc), (bw, bc) = rows["ours"], rows["boto3 upload_file"]
    print(f"{'ratio ours/boto3':22} {ow / bw:8.2f} {oc / bc:16.2f}")
    hw, hc = rows["boto3 + sha256 pass"]
    print(f"{'ratio ours/boto3+sha256':22} {ow / hw:8.2f} {oc / hc:16.2f}")


if __name__ == "__main__":
    main()
