"""Logging set-up, with a filter that keeps secrets out of every log line."""
from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

SECRET_PATTERNS = [
    re.compile(r"(<password>)[^<]*(</password>)"),
    re.compile(r"((?:password|passwd|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+", re.IGNORECASE),
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
    """Rewrites records so that no password reaches a handler (slixmpp logs raw stanzas at debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
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
    if level.lower() != "debug":
        logging.getLogger("slixmpp").setLevel(logging.WARNING)
