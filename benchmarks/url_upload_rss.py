"""Peak memory of uploading one large URL into S3: our streaming path beside buffering baselines.

Three processes so that only the uploader is measured: the S3 emulator (moto holds ~3x the object in RAM
when a multipart upload completes), an HTTP server that generates pseudo-random bytes on the fly (no file),
and one fresh uploader process per mode, whose peak RSS (getrusage, plus psutil sampling) is reported.

    python benchmarks/url_upload_rss.py                 # 1 GiB
    python benchmarks/url_upload_rss.py --size-mb 64    # quick
    python benchmarks/url_upload_rss.py --size-mb 600 --claim 1000000000000 --modes stream
                                    # a server that claims 1 TB, sends 600 MiB and hangs up (the upload fails)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 1024 * 1024
POOL = random.Random(1).randbytes(17 * MiB)
MODES = {
    "stream": "upload_urls (streamed)",
    "buffered": "download whole, then upload_fileobj",
    "fileobj": "boto3 upload_fileobj(response)",
}


def block(i: int) -> bytes:
    """The i-th MiB of the file: a slice of a random pool at a pseudo-random offset (cheap, not repeating per part)."""
    offset = (i * 2654435761) % (16 * MiB)
    return POOL[offset:offset + MiB]


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for i in range(-(-size // MiB)):
        digest.update(block(i)[: min(MiB, size - i * MiB)])
    return digest.hexdigest()


# -- the two helper processes ----------------------------------------------------------------------------
def serve(size: int, claim: int = 0) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(claim or size))
            self.end_headers()
            for i in range(-(-size // MiB)):
                self.wfile.write(block(i)[: min(MiB, size - i * MiB)])
            self.close_connection = True  # with a claim larger than sent: the body ends short

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin


def emulate() -> None:
    from aws_extension.local.emulator import LocalEmulator

    em = LocalEmulator().start()
    print(json.dumps(em.env()), flush=True)
    sys.stdin.read()
    em.stop()


# -- one measured upload ---------------------------------------------------------------------------------
def measure(mode: str, url: str, claimed: bool = False) -> None:
    import psutil
    import urllib3

    from aws_extension.core.aws import Aws
    from aws_extension.core.bootstrap import setup
    from aws_extension.core.config import Settings
    from aws_extension.core.models.urls import upload_urls

    aws = Aws(Settings.resolve())
    setup(aws)
    s3 = aws.client("s3")
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.02)

    start_rss = me.memory_info().rss
    threading.Thread(target=sample, daemon=True).start()
    began = time.monotonic()
    key = "models/Stable-diffusion/model.safetensors"
    error = None
    if mode == "stream":
        [result] = upload_urls(aws, "checkpoint", [url], allow_private=True)
        assert result.ok or claimed, result.error
        sha, error = result.sha256, result.error
    else:
        resp = urllib3.PoolManager().request("GET", url, preload_content=(mode == "buffered"))
        body = io.BytesIO(resp.data) if mode == "buffered" else resp
        s3.upload_fileobj(body, aws.bucket, key)
        sha = None
    seconds = time.monotonic() - began
    stop.set()
    size = 0 if error else s3.head_object(Bucket=aws.bucket, Key=key)["ContentLength"]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"start": start_rss, "peak": max(maxrss, peak[0]), "sampled": peak[0],
                      "seconds": seconds, "size": size, "sha256": sha, "error": error}))


# -- the driver -------------------------------------------------------------------------------------------
def helper(*args: str, env=None) -> tuple:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    return proc, proc.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--modes", default="stream,buffered,fileobj")
    parser.add_argument("--claim", type=int, default=0, help="Content-Length the server claims (bytes)")
    parser.add_argument("--role", choices=["server", "emulator", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mb * MiB
    if args.role == "server":
        return serve(size, args.claim)
    if args.role == "emulator":
        return emulate()
    if args.role == "measure":
        return measure(args.mode, args.url, bool(args.claim))

    emulator, env_line = helper("--role", "emulator")
    server, port = helper("--role", "server", "--size-mb", str(args.size_mb), "--claim", str(args.claim))
    env = {**os.environ, **json.loads(env_line)}
    url = f"http://127.0.0.1:{port}/model.safetensors"
    want_sha = expected_sha256(size)
    rows = {}
    try:
        for mode in args.modes.split(","):
            reset = env["AWS_ENDPOINT_URL"] + "/moto-api/reset"  # frees the emulator's copy of the last run
            urllib.request.urlopen(urllib.request.Request(reset, method="POST"), timeout=60).read()
            out = subprocess.run([sys.executable, __file__, "--role", "measure", "--mode", mode, "--url", url,
                                  "--claim", str(args.claim)], env=env, capture_output=True, text=True)
            if out.returncode:
                print(f"{mode} failed:\n{out.stderr[-3000:]}")
                continue
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            if rows[mode]["error"]:  # a claim larger than what is sent: the failure is the expected outcome
                print(f"{mode}: {rows[mode]['error']}")
                rows[mode]["size"] = size
                continue
            assert rows[mode]["size"] == size, rows[mode]
            assert rows[mode]["sha256"] in (None, want_sha), "the uploaded bytes differ from the source"
    finally:
        for proc in (emulator, server):
            proc.stdin.close()
            proc.wait(timeout=30)

    print(f"\nURL upload of {args.size_mb} MiB into the S3 emulator (uploader process only; emulator and server"
          " run in their own processes)\n")
    print(f"{'mode':40} {'peak RSS MiB':>13} {'at start MiB':>13} {'peak-start':>11} {'seconds':>8} {'MB/s':>6}")
    for mode, r in rows.items():
        print(f"{MODES[mode]:40} {r['peak'] / MiB:13.0f} {r['start'] / MiB:13.0f} "
              f"{(r['peak'] - r['start']) / MiB:11.0f} {r['seconds']:8.1f} {r['size'] / r['seconds'] / 1e6:6.1f}")
    if "stream" in rows:
        base = rows["stream"]["peak"]
        for mode in (m for m in rows if m != "stream"):
            print(f"peak RSS {MODES[mode]} / streamed: {rows[mode]['peak'] / base:.1f}x")
        if not args.claim:
            print(f"streamed object sha256 matches the source: {rows['stream']['sha256'] == want_sha}")


if __name__ == "__main__":
    main()
