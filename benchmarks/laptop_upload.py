"""A laptop upload through the page (Chromium) into the emulator: parts in parallel beside one at a time.

The tab runs as `python -m aws_extension ui --local` in its own process; each run picks a fresh file name so
nothing is skipped. Prints seconds and MB/s for each concurrency and the ratio. Needs /usr/bin/chromium.
Usage: python benchmarks/laptop_upload.py [--size-mb 1024] [--concurrency 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ui_support import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402


def upload(page, path: Path, concurrency: int) -> float:
    page.evaluate(f"window.sagemakerUploadConcurrency = {concurrency}; window.sagemakerLastUpload = null")
    page.set_input_files("#sagemaker-laptop-files", [str(path)])
    page.click("#sagemaker-laptop-upload")
    page.wait_for_function("window.sagemakerLastUpload !== null", timeout=3_600_000, polling=1000)
    result = page.evaluate("window.sagemakerLastUpload")
    assert "failed" not in result["outcomes"], result
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "aws_extension", "ui", "--local", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for line in server.stdout:
            if line.startswith("Amazon SageMaker tab:"):
                break
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("typeof window.sagemakerUploadFromLaptop === 'function'", timeout=60_000)
            page.get_by_role("button", name="from Laptop", exact=True).click()
            seconds = {}
            for concurrency in (args.concurrency, 1):
                path = Path(tmp) / f"bench-{concurrency}.safetensors"
                with path.open("wb") as f:
                    for _ in range(args.size_mb):
                        f.write(os.urandom(1 << 20))
                seconds[concurrency] = upload(page, path, concurrency)
                path.unlink()
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"\n{args.size_mb} MB laptop upload through Chromium into the local emulator")
    for concurrency, s in seconds.items():
        print(f"{concurrency} part(s) in flight: {s:7.1f} s  {args.size_mb / s:6.1f} MB/s")
    print(f"ratio parallel/one-at-a-time: {seconds[args.concurrency] / seconds[1]:.2f}")


if __name__ == "__main__":
    main()
