"""The prebuilt image's code package: its size, and the install the toolkit runs at every container start.

    python benchmarks/code_package.py --replica .venv-replica/bin/python [--pypi]

Builds the package from the wheel cache (SD_SAGEMAKER_WHEEL_CACHE, filled by `python -m aws_extension.core.endpoints.wheels`),
then in the replica of the image's Python (tests/prebuilt/install-replica.sh) times the toolkit's own command,
`pip install -r code/requirements.txt`: first with none of the locked packages installed (an upper bound: the real
image already has numpy, boto3, pillow... at some version), then again with all of them there (a restart).
With --pypi, beside it: the old way, the same requirement names resolved and downloaded from PyPI (network).
The replica is left with the locked packages installed, as after a container start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_extension.core.endpoints import code_package, wheels  # noqa: E402


def pip(python: str, *args: str, index: str = "http://127.0.0.1:9/simple") -> float:
    """Seconds for one pip command, with no machine configuration and (by default) an index that cannot answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index, PIP_DISABLE_PIP_VERSION_CHECK="1")
    started = time.monotonic()
    subprocess.run([python, "-m", "pip", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replica", required=True, help="the replica venv's python")
    parser.add_argument("--pypi", action="store_true", help="also time the old install from PyPI (network)")
    args = parser.parse_args()
    locked = wheels.locked()
    names = [w.name for w in locked]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.tar.gz"
        started = time.monotonic()
        with open(archive, "wb") as f:
            code_package.build(f, code_package.source_files(locked), wheels.fetch(locked))
        built = time.monotonic() - started
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        requirements = str(Path(tmp) / "code" / "requirements.txt")
        rows = [("package", f"{archive.stat().st_size / 1e6:.1f} MB, {len(locked)} wheels, built in {built:.1f} s")]
        if args.pypi:
            pip(args.replica, "uninstall", "-y", "-q", *names)
            plain = str(Path(tmp) / "plain.txt")
            Path(plain).write_text("\n".join(code_package.SERVER_REQUIREMENTS) + "\n")
            seconds = pip(args.replica, "install", "-q", "-r", plain, index="https://pypi.org/simple")
            rows.append(("old: requirements from PyPI, none installed", f"{seconds:.1f} s"))
        pip(args.replica, "uninstall", "-y", "-q", *names)
        fresh = pip(args.replica, "install", "-r", requirements)
        rows.append(("ours: wheels in the package, none installed", f"{fresh:.1f} s"))
        again = pip(args.replica, "install", "-r", requirements)
        rows.append(("ours: all already installed (restart)", f"{again:.1f} s"))
    for name, value in rows:
        print(f"{name:48} {value}")


if __name__ == "__main__":
    main()
