"""The log filter keeps SASL payloads, registration passwords and secrets in tracebacks out of logs."""
from __future__ import annotations

import io
import logging

import pytest

from archipelagent.logs import RedactingFilter, redact

PLAIN = "AGh5cGVydmlzb3IAaHYtc2VjcmV0"  # base64("\0hypervisor\0hv-secret")


def logger_to(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"test-redaction-{id(stream)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    return logger


@pytest.mark.parametrize("stanza", [
    f'<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">{PLAIN}</auth>',
    f'<response xmlns="urn:ietf:params:xml:ns:xmpp-sasl">{PLAIN}</response>',
    f'<sasl:auth xmlns:sasl="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">{PLAIN}</sasl:auth>',
    '<iq type="set"><query xmlns="jabber:iq:register"><username>hypervisor</username>'
    '<password xml:lang="en">hv-secret</password></query></iq>',
])
def test_sasl_and_registration_stanzas_at_debug(stanza):
    out = io.StringIO()
    logger_to(out).debug("SEND: %s", stanza)
    text = out.getvalue()
    assert "hv-secret" not in text and PLAIN not in text and "***" in text


def test_secrets_in_a_traceback_are_redacted():
    out = io.StringIO()
    logger = logger_to(out)
    try:
        raise RuntimeError("defineXML failed on <graphics type='vnc' passwd='vnc-secret'/> "
                           "<password>hv-secret</password>")
    except RuntimeError:
        logger.exception("command failed")
    text = out.getvalue()
    assert "Traceback" in text and "RuntimeError" in text
    assert "vnc-secret" not in text and "hv-secret" not in text


def test_harmless_text_is_kept():
    assert redact('<challenge xmlns="urn:ietf:params:xml:ns:xmpp-sasl">cj1h</challenge>') \
        == '<challenge xmlns="urn:ietf:params:xml:ns:xmpp-sasl">cj1h</challenge>'
    assert redact("nothing secret here") == "nothing secret here"
