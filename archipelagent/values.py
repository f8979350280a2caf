"""Parsing and validating the plain values users send, written once for every command.

Names of VMs, disks, snapshots and golden images, sizes with K/M/G/T units,
yes/no switches and the rule that says which argument names hold secrets.
Each raises :class:`~archipelagent.errors.InvalidArgument` (``-46``) naming
the argument, so every command reports a bad value the same way.
"""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import InvalidArgument

__all__ = ["NAME_RE", "NameRefused", "validate_name", "UNITS", "SECTOR", "parse_bytes", "human_size",
           "bounded_int", "parse_yes", "SECRET_WORDS", "is_secret_name"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
SECTOR = 512
SECRET_WORDS = ("password", "passwd", "secret", "token")


class NameRefused(InvalidArgument):
    """A name that is not a plain file name (a path, a NUL, a leading dot...)."""


def validate_name(name: Any, argument: str = "name") -> str:
    """A name that is also a safe file name: 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(argument, "must not be empty")
    if "\x00" in name:
        raise NameRefused(argument, "contains a NUL character")
    if "/" in name or "\\" in name:
        raise NameRefused(argument, f"'{name[:80]}' must be a plain file name, without '/'")
    if not NAME_RE.match(name):
        raise NameRefused(argument, f"'{name[:80]}' is not a valid name: 1-64 letters, digits, '.', '_' or '-', "
                                    "starting with a letter or digit")
    return name


def parse_bytes(size: Any, unit: str | None = None, *, maximum: int | None = None, argument: str = "size") -> int:
    """``size`` (``"10"``, ``"1.5"`` or ``"10G"``) in ``unit`` (K, M, G or T; binary) → bytes,
    rounded up to a 512-byte sector."""
    text = str(size if size is not None else "").strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KkMmGgTt])?(?:i?[Bb])?", text)
    if not match:
        raise InvalidArgument(argument, f"expected a positive number, optionally followed by K, M, G or T, got {text[:40]!r}")
    number, suffix = match.groups()
    if suffix and unit and suffix.upper() != unit.strip().upper()[:1]:
        raise InvalidArgument("unit", f"the size says {suffix.upper()} but unit is {unit!r}")
    letter = (suffix or unit or "").strip().upper()
    if letter.endswith("IB"):
        letter = letter[:-2]
    elif letter.endswith("B") and len(letter) > 1:
        letter = letter[:-1]
    if letter not in UNITS:
        raise InvalidArgument("unit", f"expected K, M, G or T, got {unit!r}" if unit else "missing (K, M, G or T)")
    value = float(number) * UNITS[letter]
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(argument, "must be greater than 0")
    result = int(math.ceil(value / SECTOR)) * SECTOR
    if maximum is not None and result > maximum:
        raise InvalidArgument(argument, f"{human_size(result)} is above the maximum disk size of {human_size(maximum)}")
    return result


def human_size(n: int) -> str:
    for letter in ("T", "G", "M", "K"):
        if n >= UNITS[letter] and n % (UNITS[letter] // 1024 or 1) == 0:
            value = n / UNITS[letter]
            return f"{value:.3g}{letter}" if value != int(value) else f"{int(value)}{letter}"
    return f"{n}B"


def bounded_int(minimum: int, maximum: int):
    """A parser of whole numbers from ``minimum`` to ``maximum`` (limits of listings, counts)."""
    def parse(value: str) -> int:
        number = int(value)
        if not minimum <= number <= maximum:
            raise ValueError(f"expected {minimum} to {maximum}, got {number}")
        return number
    return parse


def parse_yes(value: str) -> bool:
    """yes/no, true/false, 1/0, on/off (empty: no)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected yes or no, got {value!r}")


def is_secret_name(name: str) -> bool:
    """An argument, attribute or element whose value must never be shown (audit, logs, replies)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)
