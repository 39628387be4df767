"""What a download URL may reach: every resolved address is checked before a connection is made.

Link-local and cloud metadata addresses are always refused; loopback and private ones only when the user
allows them. URLs are shown redacted everywhere: query strings and user:password can carry tokens.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import List, Optional
from urllib.parse import urlsplit

from ..errors import Refused, TransferError

METADATA_HOSTS = {"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                  "instance-data.ec2.internal", "metadata.azure.internal"}
METADATA_NETS = [ipaddress.ip_network(n) for n in (
    "169.254.169.254/32", "fd00:ec2::/32", "100.100.100.200/32", "192.0.0.192/32", "168.63.129.16/32")]
THIS_NET = ipaddress.ip_network("0.0.0.0/8")
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# the same refusal reaches the CLI and the tab: name the switch of each
PRIVATE_HINT = (" (to download from your own network: `--allow-private` on the command line; in the WebUI, Settings → "
                "Amazon SageMaker → \"Allow model downloads from loopback and private network addresses\")")


# -- what a URL may reach ------------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """scheme://host[:port]/path, without user:password, query or fragment (they can carry tokens)."""
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # unparsable: keep what comes before a query, drop credentials
        return re.sub(r"//[^/@]*@", "//", re.split(r"[?#]", text, maxsplit=1)[0])
    host = f"[{host}]" if ":" in host else host
    if parts.netloc:
        shown = f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"
    elif parts.scheme:  # file:///etc/passwd: the scheme is what the message is about
        shown = f"{parts.scheme}:{'//' if text[len(parts.scheme) + 1:].startswith('//') else ''}{parts.path}"
    else:
        shown = parts.path
    return shown + ("?..." if parts.query else "")


# In order, the first match names the address; True: allowed when private URLs are.
KINDS = (
    ("cloud metadata", False, lambda ip: any(ip in net for net in METADATA_NETS)),
    ("link-local", False, lambda ip: ip.is_link_local),
    ("unspecified", False, lambda ip: ip.is_unspecified or ip in THIS_NET),
    ("multicast", False, lambda ip: ip.is_multicast),
    ("loopback", True, lambda ip: ip.is_loopback),  # before reserved: Python counts ::1 as reserved too
    ("reserved", False, lambda ip: ip.is_reserved),
    ("private", True, lambda ip: ip.is_private or ip in CGNAT or not ip.is_global),
)


def address_refusal(address: str, allow_private: bool) -> Optional[str]:
    """Why this resolved address may not be fetched, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone id
    except ValueError:
        return "not an IP address"
    # IPv6 forms that carry an IPv4 address reach that address: judge the address inside.
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    elif ip.version == 6 and ip in NAT64:
        ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    elif ip.version == 6 and ip.sixtofour:
        ip = ip.sixtofour
    kind, private_ok = next(((kind, ok) for kind, ok, test in KINDS if test(ip)), ("", True))
    if not kind or (private_ok and allow_private):
        return None
    return f"{kind} address" + (PRIVATE_HINT if private_ok else "")


def resolve_host(host: str, port: int, allow_private: bool, item: str) -> List[str]:
    """The addresses to connect to, in the resolver's order, once every one has passed the check."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        raise Refused(f"{item}: {host} is a cloud metadata service: refused.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TransferError(f"{item}: cannot resolve the host {host} ({getattr(exc, 'strerror', '') or exc}).") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise TransferError(f"{item}: the host {host} has no address.")
    for address in addresses:  # every one: DNS may hand out any of them
        why = address_refusal(address, allow_private)
        if why:
            raise Refused(f"{item}: refused, {host} resolves to {address}: {why}.")
    return addresses
