"""Logging set-up, with a filter that keeps secrets out of every log line."""
from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

SECRET_PATTERNS = [
    # XEP-0077 registration and password change: <password>secret</password>
    re.compile(r"(<(?:\w+:)?password\b[^>]*>)[^<]*(</(?:\w+:)?password>)"),
    # SASL (slixmpp logs every stanza at debug): the base64 of PLAIN is the password,
    # and SCRAM's client messages carry the proof; challenges/success carry none.
    re.compile(r"(<(?:\w+:)?(?:auth|response)\b[^>]*>)[^<]*(</(?:\w+:)?(?:auth|response)>)"),
    # …=value / …: value; token: console tokens in URLs (websockets logs request lines at debug)
    re.compile(r"((?:password|passwd|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+", re.IGNORECASE),
]


def redact(text: str) -> str:
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(r"\1***\2" if pattern.groups == 2 else r"\1***", text)
    return text


class SlixmppNoiseFilter(logging.Filter):
    """slixmpp logs a refused SASL login as an ERROR; the entity logs what it means
    (missing account → created, or a wrong password), so the raw line only confuses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("slixmpp.features.feature_mechanisms")
                    and record.getMessage() == "No appropriate login method.")


class RedactingFilter(logging.Filter):
    """Rewrites records so that no password reaches a handler: the message (slixmpp
    logs raw stanzas at debug), and the traceback and stack of an exception, which
    can quote a stanza, a command line or a definition."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            # what Formatter.format would cache and print: format it here, redacted
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            record.exc_info = None  # a handler formats exc_text; nothing re-formats the raw exception
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def setup_logging(level: str, file_path: Path | None, max_bytes: int, backup_count: int) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if file_path:
        file_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(file_path, maxBytes=max_bytes, backupCount=backup_count))
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        handler.addFilter(SlixmppNoiseFilter())
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # aiosqlite logs every statement with its parameters at debug: VM passwords
    # (state.py) are parameters, which no pattern can recognise.  Never below INFO.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    if level.lower() != "debug":
        logging.getLogger("slixmpp").setLevel(logging.WARNING)
