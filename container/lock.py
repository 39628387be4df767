"""Writes aws_extension/core/endpoints/server-wheels.lock.json: the exact wheels the code package ships.

AWS's prebuilt image (Python 3.12, torch 2.6.0, torchvision 0.21.0 on Ubuntu 22.04) installs the code package's
requirements at every container start; with the wheels inside the package and a lock of exact files (sha256),
that install needs no index and gives the same packages every time. Run this after changing
container/requirements.txt, with a Python 3.12 (pip resolves markers for the running interpreter):

    python3.12 container/lock.py

It asks pip for a dry-run resolution for manylinux x86_64 (glibc 2.28, older than the image's 2.35) against the
image's torch and torchvision, and keeps every package but torch's GPU stack and the packaging tools, which
the image has and the toolkit itself relies on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Standalone (no import of the package, whose dependencies this Python need not have)
ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "aws_extension" / "core" / "endpoints" / "server-wheels.lock.json"  # LOCK
TORCH = re.search(r'TAG = "([0-9.]+)-', (ROOT / "aws_extension" / "core" / "endpoints" / "images.py").read_text()).group(1)
TORCHVISION = "0.21.0"  # the prebuilt image's, beside its torch
# Linux x86_64 wheels for glibc 2.28 and older (the image's Ubuntu 22.04 has 2.35); pip takes each tag literally
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
KEEP_OUT = {"torch", "torchvision", "triton", "setuptools", "pip", "wheel"}  # and nvidia-*


def resolve() -> list:
    if sys.version_info[:2] != (3, 12):
        sys.exit(f"lock.py: run it with Python 3.12 (the image's), not {sys.version.split()[0]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI itself: no local mirror or extra index in the URLs
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={TORCH}\ntorchvision=={TORCHVISION}\n")
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), "--only-binary=:all:",
                        *(arg for tag in PLATFORMS for arg in ("--platform", tag)),
                        "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
                        "--target", str(Path(tmp) / "target"), "-c", str(constraints),
                        "-r", str(ROOT / "container" / "requirements.txt")], check=True, env=env)
        installs = json.loads(report.read_text())["install"]
    locked = []
    for item in installs:
        name = item["metadata"]["name"].lower().replace("_", "-")
        if name in KEEP_OUT or name.startswith("nvidia-"):
            continue
        info = item["download_info"]
        url = info["url"]
        locked.append({"name": name, "version": item["metadata"]["version"], "file": url.rsplit("/", 1)[-1],
                       "sha256": info["archive_info"]["hashes"]["sha256"], "url": url})
    return sorted(locked, key=lambda w: w["name"])


def main() -> None:
    locked = resolve()
    document = {"comment": "Written by container/lock.py from container/requirements.txt: do not edit by hand.",
                "python": "3.12", "platform": PLATFORMS[0], "torch": TORCH, "torchvision": TORCHVISION,
                "wheels": locked}
    LOCK.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{LOCK.relative_to(ROOT)}: {len(locked)} wheels")


if __name__ == "__main__":
    main()
