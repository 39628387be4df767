"""10,000 cloud checkpoints: S3 requests (counted by a proxy in front of the emulator's S3) and time for a listing,
an infotext's hash lookup and a Generate's model resolution, beside the layout older versions wrote (records
beside the models, a hash found by reading every record, every Generate listing whole folders).

    python benchmarks/cloud_models.py              # 10,000 checkpoints
    python benchmarks/cloud_models.py --count 2000

The emulator runs in this process (the models are written straight into it: 10,000 through HTTP would take
minutes), so times include its CPU: compare the columns, not the absolutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from aws_extension.core.aws import Aws  # noqa: E402
from aws_extension.core.bootstrap import setup  # noqa: E402
from aws_extension.core.config import Settings  # noqa: E402
from aws_extension.core.models.lookup import find_checkpoint_by_hash, resolve_models  # noqa: E402
from aws_extension.local.emulator import LocalEmulator  # noqa: E402
from aws_extension.core.models.catalog import list_models  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from many_models import name_of, seed_checkpoints, sha256_of  # noqa: E402

FOLDER = "models/Stable-diffusion/"


def measured(proxy: FaultProxy, work):
    proxy.reset_counts()
    started = time.perf_counter()
    result = work()
    return result, len(proxy.requests), time.perf_counter() - started


def keys(s3, bucket: str, prefix: str) -> list:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o for page in pages for o in page.get("Contents", [])]


def older_lookup(s3, bucket: str, short: str):
    """What older versions did for a pasted hash: list the folder, then read every record, 8 at a time."""
    records = [o["Key"] for o in keys(s3, bucket, FOLDER) if o["Key"].endswith(".json")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        bodies = list(pool.map(lambda k: s3.get_object(Bucket=bucket, Key=k)["Body"].read(), records))
    return next(k for k, b in zip(records, bodies) if f'"sha256": "{short}'.encode() in b.replace(b'":"', b'": "'))


def older_resolve(s3, bucket: str, name: str):
    """What older versions did before each Generate: list the checkpoint, LoRA and embedding folders."""
    return [keys(s3, bucket, prefix) for prefix in (FOLDER, "models/Lora/", "models/embeddings/")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    count = parser.parse_args().count

    emulator = LocalEmulator().start()
    try:
        os.environ.update(emulator.env())
        with FaultProxy(emulator.url) as proxy:
            os.environ["AWS_ENDPOINT_URL_S3"] = proxy.url
            aws = Aws(Settings.resolve())
            setup(aws)
            s3 = aws.client("s3")
            seed_checkpoints(aws.bucket, count, legacy=True)
            s3.put_object(Bucket=aws.bucket, Key="models/Lora/detail.safetensors", Body=b"x")
            wanted, short = name_of(count - 7), sha256_of(count - 7)[:10]
            rows = []

            _, n, t = measured(proxy, lambda: keys(s3, aws.bucket, FOLDER))
            rows.append(("listing", "older layout, bare boto3 (records in the listing)", n, t))
            _, n, t = measured(proxy, lambda: older_lookup(s3, aws.bucket, short))
            rows.append(("hash lookup", "older: list, then read every record", n, t))
            _, n, t = measured(proxy, lambda: older_resolve(s3, aws.bucket, wanted))
            rows.append(("Generate, before invoking", "older: list the model folders", n, t))

            _, n, t = measured(proxy, lambda: list_models(aws, "checkpoint"))
            rows.append(("first listing (once)", "ours: moves every record to records/", n, t))
            _, n, t = measured(proxy, lambda: keys(s3, aws.bucket, FOLDER))
            rows.append(("listing", "new layout, bare boto3", n, t))
            found, n, t = measured(proxy, lambda: list_models(aws, "checkpoint"))
            assert len(found) == count
            rows.append(("listing", "ours", n, t))
            found, n, t = measured(proxy, lambda: find_checkpoint_by_hash(aws, short))
            assert found == wanted
            rows.append(("hash lookup", "ours: LIST hashes/<short>, read one record", n, t))
            _, n, t = measured(proxy, lambda: resolve_models(aws, wanted, None, ["a cat <lora:detail:0.5>"]))
            rows.append(("Generate, before invoking", "ours: exact names", n, t))
    finally:
        emulator.stop()

    print(f"\n{count:,} checkpoints\n\n| step | how | S3 requests | seconds |\n|---|---|---|---|")
    for step, how, n, t in rows:
        print(f"| {step} | {how} | {n:,} | {t:.2f} |")
    by = {(step, how.split(":")[0].split(",")[0]): (n, t) for step, how, n, t in rows}
    print("\nratios older / ours:")
    for step, old in (("listing", "older layout"), ("hash lookup", "older"), ("Generate, before invoking", "older")):
        (on, ot), (nn, nt) = by[(step, old)], by[(step, "ours")]
        print(f"  {step}: requests {on / nn:.1f}x, time {ot / nt:.1f}x")


if __name__ == "__main__":
    main()
