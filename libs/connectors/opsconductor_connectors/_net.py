"""Name resolution and TCP connect as separate, separately timed stages."""

from __future__ import annotations

import asyncio
import socket
import time

from opsconductor_connectors.errors import ConnectorError, Stage, timeout_error

SockAddr = tuple[int, tuple]  # (family, sockaddr)


def elapsed_ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


async def resolve(host: str, port: int, timeout_s: float) -> list[SockAddr]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except TimeoutError:
        raise timeout_error(Stage.RESOLVE, timeout_s) from None
    except (OSError, UnicodeError) as exc:
        raise ConnectorError(Stage.RESOLVE, f"cannot resolve host {host!r}: {_reason(exc)}") from None
    out: list[SockAddr] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if (family, sockaddr) not in out:
            out.append((family, sockaddr))
    if not out:
        raise ConnectorError(Stage.RESOLVE, f"host {host!r} has no address")
    return out


async def connect_tcp(addresses: list[SockAddr], host: str, port: int, timeout_s: float) -> socket.socket:
    """A connected non-blocking socket to the first address that answers within the timeout."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await loop.sock_connect(sock, sockaddr)
            return sock
        except TimeoutError:
            sock.close()
            raise timeout_error(Stage.CONNECT, timeout_s) from None
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    reason = _reason(last) if last else "no address"
    raise ConnectorError(Stage.CONNECT, f"cannot connect to {host} port {port}: {reason}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
