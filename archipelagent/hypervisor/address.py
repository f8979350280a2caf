"""Which address the hypervisor announces (``machine_ip``).

``auto`` resolves the XMPP host's name: a blocking ``getaddrinfo`` that can
wait for a dead DNS server for tens of seconds.  :func:`machine_address` runs
it in a small pool of its own, never on the event loop, and gives up after
``LOOKUP_TIMEOUT`` seconds with a clear :class:`OSError`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915
LOOKUP_TIMEOUT = 5.0
# Two threads: a hung resolver holds at most these; later lookups time out queued.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="address-lookup")


def interface_address(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


def route_address(towards: str) -> str:
    """The local address the kernel would use to reach ``towards`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(towards), 9))
        return s.getsockname()[0]


def resolve_machine_ip(setting: str, xmpp_host: str) -> str:
    """``auto``: the address used to reach the XMPP server; an interface name; or a literal."""
    if setting == "auto":
        return route_address(xmpp_host)
    try:
        return str(ipaddress.ip_address(setting))
    except ValueError:
        return interface_address(setting)


async def machine_address(setting: str, xmpp_host: str, timeout: float = LOOKUP_TIMEOUT) -> str:
    """:func:`resolve_machine_ip` off the event loop; ``OSError`` if it takes more than ``timeout``."""
    future = asyncio.get_running_loop().run_in_executor(_POOL, resolve_machine_ip, setting, xmpp_host)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        raise OSError(f"looking up {xmpp_host!r} did not answer within {timeout:.0f} s") from None
