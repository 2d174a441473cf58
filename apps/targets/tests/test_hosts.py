"""Which addresses may be targets: syntax, and the loopback / link-local / metadata policy."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from opsconductor_targets.hosts import (
    HostRefused,
    check_host_literal,
    parse_host,
    resolve_allowed,
)


class TestParseHost:
    @pytest.mark.parametrize(("given", "expected"), [
        ("web01.example.com", "web01.example.com"),
        ("WEB01.Example.COM.", "web01.example.com"),
        ("db_1.internal", "db_1.internal"),
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("  host-a  ", "host-a"),
    ])
    def test_names_and_addresses(self, given: str, expected: str) -> None:
        assert parse_host(given) == expected

    @pytest.mark.parametrize("given", [
        "", "-oProxyCommand=sh", "-host", "a b", "host;reboot", "$(id)", "`id`", "a|b", "a&b",
        "host\n", "a>b", "999.1.1.1", "1.2.3", "2001:db8:::1", "bad_label-.com", "-x.example",
        "a" * 64 + ".example", "x." * 130, "host%eth0", "a'b", 'a"b',
    ])
    def test_refused(self, given: str) -> None:
        with pytest.raises(ValueError):
            parse_host(given)


class TestAddressPolicy:
    @pytest.mark.parametrize("host", [
        "127.0.0.1", "127.9.9.9", "::1", "localhost", "db.localhost", "::ffff:127.0.0.1",
    ])
    def test_loopback_needs_the_setting(self, host: str) -> None:
        with pytest.raises(HostRefused):
            check_host_literal(host, allow_loopback=False)
        check_host_literal(host, allow_loopback=True)

    @pytest.mark.parametrize("host", [
        "169.254.169.254", "169.254.1.1", "fe80::1", "fd00:ec2::254", "0.0.0.0", "::",
        "224.0.0.1",
    ])
    def test_link_local_metadata_and_unspecified_are_always_refused(self, host: str) -> None:
        for allow in (False, True):
            with pytest.raises(HostRefused):
                check_host_literal(host, allow_loopback=allow)

    @pytest.mark.parametrize("host", ["10.0.0.5", "172.16.3.4", "192.168.1.1", "fd12::1",
                                      "203.0.113.9", "web.example.com"])
    def test_private_and_public_addresses_are_targets(self, host: str) -> None:
        check_host_literal(host, allow_loopback=False)


class TestResolve:
    async def test_a_name_resolving_to_metadata_is_refused(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def fake(self: Any, host: str, port: int, **kwargs: Any) -> list[Any]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.9", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

        monkeypatch.setattr("asyncio.base_events.BaseEventLoop.getaddrinfo", fake)
        with pytest.raises(HostRefused, match=r"169\.254\.169\.254"):
            await resolve_allowed("innocent.example", 22, allow_loopback=True)

    async def test_a_real_name_for_loopback(self) -> None:
        with pytest.raises(HostRefused):
            await resolve_allowed("127.0.0.1", 22, allow_loopback=False)
        assert await resolve_allowed("127.0.0.1", 22, allow_loopback=True) == ["127.0.0.1"]
