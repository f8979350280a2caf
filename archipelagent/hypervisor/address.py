"""Which address the hypervisor announces (``machine_ip``): pure-ish helpers."""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915


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
