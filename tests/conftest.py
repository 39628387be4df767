"""Offline fixtures: moto on a loopback port for every AWS API, reset before each test."""

from __future__ import annotations

import os

import pytest

from aws_extension.core import inflight
from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.local.emulator import LocalEmulator


@pytest.fixture(scope="session")
def emulator():
    em = LocalEmulator(creating_seconds=1.0).start()
    yield em
    em.stop()


@pytest.fixture(scope="session")
def wheel_mirror(tmp_path_factory):
    from wheel_mirror import WheelMirror, make_wheel

    folder = tmp_path_factory.mktemp("wheel-mirror")
    mirror = WheelMirror(folder)
    mirror.wheel = make_wheel(folder)
    yield mirror
    mirror.close()


@pytest.fixture(autouse=True)
def tiny_wheel_lock(wheel_mirror, monkeypatch, tmp_path):
    """Code packages ship a tiny locked wheel fetched from loopback (the real ~120 MB set: tests/prebuilt)."""
    from aws_extension.core.endpoints import wheels

    wheel_mirror.requests.clear()
    wheel_mirror.tampered.clear()
    monkeypatch.setattr(wheels, "LOCK", wheel_mirror.lock(tmp_path / "test-wheels.lock.json", wheel_mirror.wheel))
    monkeypatch.setenv(wheels.MIRROR_ENV, wheel_mirror.url)
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path / "wheel-cache"))
    return wheel_mirror


@pytest.fixture
def aws_env(emulator, monkeypatch, tmp_path):
    """The environment a user of the emulator has: endpoint URL, test keys, region, bucket, role, image."""
    emulator.reset()
    emulator.creating_seconds = 1.0
    inflight.forget()  # requests a test stopped ran on endpoints the reset removed
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # never read the machine's own AWS files
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    env = emulator.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


@pytest.fixture
def aws(aws_env) -> Aws:
    """A session on the emulator with the bucket set up, as after `python -m aws_extension setup`."""
    session = Aws(Settings.resolve())
    setup(session)
    return session


@pytest.fixture
def proxy(aws_env, emulator, monkeypatch):
    """S3 through the fault-injecting proxy (for the server's calls, and so for presigned URLs too)."""
    from faultproxy import FaultProxy

    with FaultProxy(emulator.url) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", p.url)
        yield p


# Browser fixtures (Chromium through Playwright); gradio is imported only by tests that use them.
from ui_support import browser, page, tab  # noqa: E402, F401
