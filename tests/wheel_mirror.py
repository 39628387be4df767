"""A wheel lock of our own and a loopback HTTP server for its files, standing in for PyPI in offline tests.

Deploys without an image ship the wheels of a lock in the code package; tests point the lock at a tiny wheel
made here and the download at this server (SD_SAGEMAKER_WHEEL_MIRROR), which counts and can tamper with requests.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path
from typing import Dict, List


def make_wheel(folder: Path, name: str = "sdtiny", version: str = "1.0") -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


class WheelMirror:
    def __init__(self, folder: Path):
        self.folder = folder
        self.requests: List[str] = []
        self.tampered: Dict[str, bytes] = {}  # file name -> what to send instead
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                name = self.path.strip("/").rsplit("/", 1)[-1]
                mirror.requests.append(name)
                path = mirror.folder / name
                data = mirror.tampered.get(name) or (path.read_bytes() if path.is_file() else None)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def lock(self, path: Path, *wheels: Path) -> Path:
        """A lock file naming these wheels, as container/lock.py writes one."""
        entries = [{"name": w.name.split("-")[0], "version": w.name.split("-")[1], "file": w.name,
                    "sha256": hashlib.sha256(w.read_bytes()).hexdigest(), "url": f"https://pypi.invalid/{w.name}"}
                   for w in wheels]
        path.write_text(json.dumps({"wheels": entries}))
        return path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
