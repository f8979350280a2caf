"""archipelagent/xmpp/tls.py: the shared context and the TLS read buffer limit."""
import asyncio.sslproto
import ssl

import pytest

from archipelagent.xmpp.tls import client_ssl_context, limit_tls_read_buffers


@pytest.fixture
def restore_max_size():
    saved = asyncio.sslproto.SSLProtocol.max_size
    yield
    asyncio.sslproto.SSLProtocol.max_size = saved


def protocol():
    loop = asyncio.new_event_loop()
    try:
        context = ssl.create_default_context()
        return asyncio.sslproto.SSLProtocol(loop, asyncio.Protocol(), context, None, server_side=False,
                                            server_hostname="archipel.test")
    finally:
        loop.close()


def test_new_tls_streams_get_the_small_read_buffer(restore_max_size):
    assert len(protocol()._ssl_buffer) == 256 * 1024          # the standard library's default
    limit_tls_read_buffers(32 * 1024)
    assert len(protocol()._ssl_buffer) == 32 * 1024


def test_the_limit_never_raises_the_default(restore_max_size):
    limit_tls_read_buffers(1 << 30)
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * 1024


def test_one_context_for_every_entity():
    assert client_ssl_context(True, None) is client_ssl_context(True, None)
    relaxed = client_ssl_context(False, None)
    assert relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
