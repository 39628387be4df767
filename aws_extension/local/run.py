"""`python -m aws_extension local`: the emulator in the foreground, bootstrapped, until Ctrl-C."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from typing import Optional

from .emulator import LocalEmulator


def run_local(emulator: LocalEmulator, bucket: Optional[str] = None, stop: Optional[threading.Event] = None) -> int:
    from ..core.aws import Aws
    from ..core.bootstrap import setup
    from ..core.config import Settings

    emulator.start()
    env = emulator.env(bucket) if bucket else emulator.env()
    os.environ.update(env)
    result = setup(Aws(Settings.resolve()), create_role=True)
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    print(f"# AWS emulator on {emulator.url}, bucket {result.bucket}. Paste the lines above into another shell,", flush=True)
    print("# then e.g. `python -m aws_extension models list`. Ctrl-C (or SIGTERM) stops the emulator (its data is in "
          "memory).", flush=True)
    if emulator.runtime:
        print(f"# Endpoints run the local inference server; their logs and model caches are in {emulator.work_dir}.",
              flush=True)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM always works: a background job of a non-interactive shell starts with SIGINT ignored
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    print("Emulator stopped.", file=sys.stderr)
    return 0
