"""TLS for the agent's many client streams: one shared context, small read buffers.

An agent holds one XMPP stream per VM entity, so what one TLS stream costs is
multiplied by the number of VMs (issue 16: 1,000 entities per agent).  Measured
on this stack (bench/bench_scale.py, /proc RSS of 200 connected clients):

* slixmpp builds a context per client and loads the CA bundle into it: ~60 ms
  of CPU and ~0.9 MiB each.  One context, read-only once built, is shared.
* asyncio's SSL transport (``asyncio.sslproto.SSLProtocol``, Python 3.11+)
  allocates a 256 KiB read buffer per connection (class attribute
  ``max_size``), resident because glibc serves it from the heap and zeroes it:
  ~260 KiB of a stream's ~350 KiB.  XMPP stanzas arrive in TLS records of at
  most 16 KiB; a 32 KiB buffer reads them in the same number of calls for
  everything but bulk transfers (a full-size screenshot reply is split over a
  few more reads).  Measured: 351 -> 129 KiB per connected stream.
"""
from __future__ import annotations

import asyncio.sslproto
import functools
import ssl

TLS_READ_BUFFER = 32 * 1024


def limit_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make every asyncio TLS stream opened from now on read into ``size`` bytes.

    Process-wide (a class attribute of the standard library's transport): the
    agent calls it once at start, before any stream is opened.  Never raises
    the size above the standard library's own default.
    """
    current = getattr(asyncio.sslproto.SSLProtocol, "max_size", None)
    if isinstance(current, int) and size < current:
        asyncio.sslproto.SSLProtocol.max_size = size


@functools.lru_cache(maxsize=None)
def client_ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One TLS context for all entities of the agent (see the module docstring)."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
