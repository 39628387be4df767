"""What a URL may reach, names and inputs: checks that need no network (DNS is faked)."""

from __future__ import annotations

import socket

import pytest

from aws_extension.core.errors import Refused
from aws_extension.core.models import urls
from aws_extension.core.models.url_safety import address_refusal, redact_url, resolve_host
from aws_extension.core.models.urls import name_from, split_urls


def fake_dns(monkeypatch, *addresses):
    family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses])


@pytest.mark.parametrize("address, private_ok", [
    ("127.0.0.1", True), ("::1", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True),
    ("100.64.0.1", True), ("fc00::1", True), ("::ffff:127.0.0.1", True), ("::ffff:192.168.0.1", True),
    ("169.254.169.254", False), ("::ffff:169.254.169.254", False), ("fd00:ec2::254", False),
    ("100.100.100.200", False), ("169.254.1.1", False), ("fe80::1%eth0", False), ("0.0.0.0", False),
    ("::", False), ("224.0.0.1", False), ("ff02::1", False), ("240.0.0.1", False), ("255.255.255.255", False),
    ("64:ff9b::a9fe:a9fe", False), ("2002:a9fe:a9fe::", False),
])
def test_address_checker_refuses(address, private_ok):
    assert address_refusal(address, allow_private=False)
    assert (address_refusal(address, allow_private=True) is None) == private_ok


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::6810:84e5", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_address_checker_allows_public(address):
    assert address_refusal(address, allow_private=False) is None


def test_every_resolved_address_is_checked(monkeypatch):
    fake_dns(monkeypatch, "93.184.216.34")
    assert resolve_host("models.example", 443, False, "u") == ["93.184.216.34"]
    fake_dns(monkeypatch, "93.184.216.34", "10.0.0.5")
    with pytest.raises(Refused, match="10.0.0.5"):
        resolve_host("models.example", 443, False, "u")
    fake_dns(monkeypatch, "::ffff:169.254.169.254")
    with pytest.raises(Refused, match="cloud metadata"):
        resolve_host("models.example", 443, True, "u")


def test_metadata_names_refused_without_lookup(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("looked up"))
    for host in ("metadata.google.internal", "METADATA.google.internal.", "metadata"):
        with pytest.raises(Refused, match="metadata"):
            resolve_host(host, 80, True, "u")


def test_decimal_host_is_checked_as_resolved():
    with pytest.raises(Refused, match="127.0.0.1"):  # 2130706433 == 127.0.0.1, a numeric form: no network
        resolve_host("2130706433", 80, False, "u")


def test_redact_url():
    assert redact_url("https://u:p@Host.example:8443/a/b.ckpt?token=T#frag") == "https://host.example:8443/a/b.ckpt?..."
    assert redact_url("http://[::1]/x.pt") == "http://[::1]/x.pt"
    assert "T" not in redact_url("http://u:T@[bad/x?t=T")
    assert redact_url("file:///etc/passwd") == "file:///etc/passwd" and redact_url("data:x?y") == "data:x?..."


def test_names_and_lists():
    headers = {"Content-Disposition": "attachment; filename=\"../../etc/a b.safetensors\""}
    assert name_from(headers, "http://h/x") == "a b.safetensors"
    assert name_from({}, "http://h/dir/my%20lora.safetensors") == "my lora.safetensors"
    assert name_from({"Content-Disposition": "inline"}, "http://h/.hidden.pt") == "hidden.pt"
    assert split_urls(" a, b ,\nc,, ") == ["a", "b", "c"] and split_urls(["x,y"]) == ["x,y"]
    assert urls.parse_description("") is None and urls.parse_description({"a": 1}) == {"a": 1}


