"""``[VNC]``: where the console proxy listens, how browsers reach it, TLS, token lifetime.

Defaults (all keys optional): ``vnc_proxy_address = 127.0.0.1`` (loopback: no
browser elsewhere reaches it until the site says so), ``vnc_proxy_port = 6900``
(``0``: any free port, what the test rig uses so agents never collide; the
``display`` reply says the port bound), ``vnc_proxy_public_host`` = ``[GLOBAL]
machine_ip`` unless ``auto``, else the proxy's address (the name or address browsers use), ``vnc_certificate_file`` /
``vnc_key_file`` empty (no TLS; a certificate file may hold its key), and
``vnc_token_lifetime = 30`` seconds (1-600).  A non-loopback address without a
certificate is refused: tokens would travel in clear.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..config import ConfigError

SECTION = "VNC"


@dataclass(frozen=True)
class ConsoleConfig:
    address: str = "127.0.0.1"
    port: int = 6900
    public_host: str = "127.0.0.1"
    certfile: str | None = None
    keyfile: str | None = None
    token_lifetime: float = 30.0

    @property
    def tls(self) -> bool:
        return self.certfile is not None


def read_config(config) -> ConsoleConfig:
    """Read ``[VNC]`` of the agent's configuration; ``ConfigError`` names a bad key."""
    parser, path = config.parser, config.path

    def raw(key: str) -> str:
        if parser is None or not parser.has_section(SECTION):
            return ""
        return (parser.get(SECTION, key, fallback="") or "").strip()

    address = raw("vnc_proxy_address") or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise ConfigError(path, SECTION, "vnc_proxy_address", f"expected an IP address, found {address!r}") from None
    port_text = raw("vnc_proxy_port") or "6900"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(path, SECTION, "vnc_proxy_port", f"expected a port 0-65535 (0: any free port), found {port_text!r}")
    certfile, keyfile = raw("vnc_certificate_file") or None, raw("vnc_key_file") or None
    if keyfile and not certfile:
        raise ConfigError(path, SECTION, "vnc_key_file", "vnc_key_file needs vnc_certificate_file")
    for key, value in (("vnc_certificate_file", certfile), ("vnc_key_file", keyfile)):
        if value and not os.path.isfile(value):
            raise ConfigError(path, SECTION, key, f"{value!r} is not a readable file")
    if not ip.is_loopback and not certfile:
        raise ConfigError(path, SECTION, "vnc_proxy_address",
                          f"{address} is not loopback: set vnc_certificate_file (console tokens must not travel in clear)")
    lifetime_text = raw("vnc_token_lifetime") or "30"
    try:
        lifetime = float(lifetime_text)
    except ValueError:
        lifetime = -1.0
    if not 1 <= lifetime <= 600:
        raise ConfigError(path, SECTION, "vnc_token_lifetime", f"expected 1 to 600 seconds, found {lifetime_text!r}")
    machine_ip = str(getattr(config, "machine_ip", "") or "")
    public_host = raw("vnc_proxy_public_host") or (machine_ip if machine_ip.lower() not in ("", "auto") else "")
    if not public_host:
        if ip.is_unspecified:
            raise ConfigError(path, SECTION, "vnc_proxy_public_host",
                              f"the proxy listens on {address}: say which name or address browsers use")
        public_host = str(ip)
    return ConsoleConfig(address=str(ip), port=port, public_host=public_host, certfile=certfile,
                         keyfile=keyfile, token_lifetime=lifetime)
