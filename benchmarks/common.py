"""Shared by the benchmarks: the emulator in its own process, so its CPU and memory are not the client's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]


def start_emulator() -> Tuple[subprocess.Popen, Dict[str, str]]:
    """`python -m aws_extension local --port 0` in a child process; returns it and its export lines as env."""
    proc = subprocess.Popen([sys.executable, "-m", "aws_extension", "local", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    env: Dict[str, str] = {}
    for line in proc.stdout:
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            env[name] = value.strip("'")
        elif line.startswith("#"):
            break
    return proc, env


def median(values):
    values = sorted(values)
    return values[len(values) // 2]
