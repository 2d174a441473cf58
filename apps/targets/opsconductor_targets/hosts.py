"""What may be a target address: syntax (hostname, IPv4, IPv6) and the address policy.

Loopback, link-local, cloud-metadata and unspecified addresses are refused: a target there would
let anyone with targets:write aim the platform at itself or at the cloud's metadata service
(WinRM speaks HTTP, so that is a request forgery). `allow_loopback` lifts the loopback rule only
(tests, single-machine demos). Private ranges are ordinary targets. Names are resolved again
when a connection is made and refused if they resolve into a forbidden range.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOST_MAX = 253
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")
# Metadata services outside the link-local ranges (AWS over IPv6, Alibaba Cloud).
_METADATA = (ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200"))


class HostRefused(ValueError):
    """The address is not allowed as a target; the message says why, for the operator."""


def parse_host(value: str) -> str:
    """The canonical host text, or ValueError with a message fit for a 422."""
    text = value.strip(" ")  # surrounding spaces are a paste slip; any other whitespace is not
    if not text:
        raise ValueError("a host is required")
    if text.startswith("-"):
        raise ValueError("a host may not start with '-'")
    if any(ch.isspace() or ord(ch) < 32 or ch in "\"'`$;&|<>(){}*?!\\,=~^#%" for ch in text):
        raise ValueError("a host is a name or an IP address, without spaces or symbols")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text:
        raise ValueError("not a valid IPv6 address")
    name = text.rstrip(".").lower()
    if len(name) > HOST_MAX or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError("not a valid host name, IPv4 or IPv6 address")
    if name.replace(".", "").isdigit():
        raise ValueError("not a valid IPv4 address")
    return name


def forbidden_reason(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why `address` may not be a target, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "is a loopback address"
    if address.is_unspecified:
        return "is the unspecified address"
    if address in _METADATA:
        return "is a cloud metadata address"
    if (isinstance(address, ipaddress.IPv4Address) and address in _LINK_LOCAL_V4) or (
            isinstance(address, ipaddress.IPv6Address) and address in _LINK_LOCAL_V6):
        return "is a link-local (or cloud metadata) address"
    if address.is_multicast:
        return "is a multicast address"
    return None


def check_host_literal(host: str, *, allow_loopback: bool) -> None:
    """Refuse forbidden IP literals and loopback names at create time (HostRefused)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
            if not allow_loopback:
                raise HostRefused(f"{host} names this machine (loopback)") from None
        return
    reason = forbidden_reason(address, allow_loopback=allow_loopback)
    if reason:
        raise HostRefused(f"{host} {reason}")


async def resolve_allowed(host: str, port: int, *, allow_loopback: bool,
                          timeout_s: float = 5.0) -> list[str]:
    """Every address `host` resolves to; HostRefused if any is forbidden, OSError if none.

    All, not just the first: a name with one public and one loopback address is refused, so a
    later resolution cannot pick the forbidden one.
    """
    check_host_literal(host, allow_loopback=allow_loopback)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]
        if text not in addresses:
            addresses.append(text)
    for text in addresses:
        reason = forbidden_reason(ipaddress.ip_address(text), allow_loopback=allow_loopback)
        if reason:
            raise HostRefused(f"{host} resolves to {text}, which {reason}")
    if not addresses:
        raise OSError(f"{host} has no address")
    return addresses
