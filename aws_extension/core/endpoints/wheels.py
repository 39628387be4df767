"""The wheels the server's code package ships, so that a new instance installs nothing from an index.

AWS's prebuilt image pip-installs code/requirements.txt at every container start. Resolved afresh from PyPI,
a bad release or an outage would break scale-out from zero with nobody watching; so the package carries the
exact wheels of server-wheels.lock.json (written by container/lock.py) and a requirements file that installs
them with --no-index, each checked by its sha256. Wheels are fetched once per machine into a cache and
checked against the lock before use.

    python -m aws_extension.core.endpoints.wheels   # fill the cache (CI does this before its offline tests)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

from ..errors import TransferError

log = logging.getLogger(__name__)

LOCK = Path(__file__).with_name("server-wheels.lock.json")
CACHE_ENV = "SD_SAGEMAKER_WHEEL_CACHE"  # where fetched wheels are kept (default ~/.cache/sd-webui-sagemaker/wheels)
MIRROR_ENV = "SD_SAGEMAKER_WHEEL_MIRROR"  # a base URL serving the same files by name (a private mirror, tests)
FOLDER = "wheels"  # beside requirements.txt in the package's code/
PARALLEL = 4
TIMEOUT = 60


class Wheel(NamedTuple):
    name: str
    version: str
    file: str
    sha256: str
    url: str


def locked(path: Optional[Path] = None) -> List[Wheel]:
    document = json.loads((path or LOCK).read_text())
    return [Wheel(w["name"], w["version"], w["file"], w["sha256"], w["url"]) for w in document["wheels"]]


def requirements_text(wheels: List[Wheel]) -> str:
    """code/requirements.txt: the wheels beside it and nothing else (pip reads a relative --find-links from
    the requirements file's folder); with hashes, pip also refuses anything it would have to fetch unhashed."""
    lines = ["# Installed by SageMaker's inference toolkit at container start (sd-webui-sagemaker): no index,",
             "# only the wheels in this package, each checked by its sha256.",
             "--no-index", f"--find-links {FOLDER}"]
    lines += [f"{w.name}=={w.version} --hash=sha256:{w.sha256}" for w in wheels]
    return "\n".join(lines) + "\n"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sd-webui-sagemaker" / "wheels")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _source(wheel: Wheel) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{wheel.file}" if mirror else wheel.url


def _fetch_one(wheel: Wheel, folder: Path) -> Path:
    path = folder / wheel.file
    if path.is_file() and _digest(path) == wheel.sha256:
        return path
    url = _source(wheel)
    partial = path.with_name(path.name + ".part")
    try:
        sha = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer, open(partial, "wb") as out:
            for block in iter(lambda: answer.read(1 << 20), b""):
                sha.update(block)
                out.write(block)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        partial.unlink(missing_ok=True)
        raise TransferError(f"Could not download {wheel.file} from {url} for the server's code package: {exc}.") from exc
    if sha.hexdigest() != wheel.sha256:
        partial.unlink(missing_ok=True)
        raise TransferError(f"{wheel.file} from {url} is not the file the lock names (sha256 {sha.hexdigest()[:16]}… "
                            f"instead of {wheel.sha256[:16]}…): refusing to ship it.")
    os.replace(partial, path)
    return path


def fetch(wheels: List[Wheel], on_file: Optional[Callable[[Wheel], None]] = None) -> List[Path]:
    """The wheels' paths in the cache, downloading (in parallel) those missing or damaged there."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)

    def one(wheel: Wheel) -> Path:
        path = _fetch_one(wheel, folder)
        if on_file:
            on_file(wheel)
        return path

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(one, wheels))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wheels = locked()
    paths = fetch(wheels)
    size = sum(p.stat().st_size for p in paths)
    log.info("%d wheels (%.0f MB) in %s", len(paths), size / 1e6, cache_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
