"""Typed errors a command may raise.

Every error a user can cause maps to one class here, and each class knows how
it appears on the wire: Archipel's error namespace (the client recognises
permission errors by it), Archipel's numeric code, and the XMPP defined
condition we add so that non-Archipel clients understand the reply too.
"""
from __future__ import annotations


class ArchipelError(Exception):
    """Base of every error that is reported to the requester."""

    namespace = "archipel:error:generic"
    code = -1
    condition = "undefined-condition"

    def __init__(self, message: str, *, code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class MalformedRequest(ArchipelError):
    """The ACP envelope is broken: no <archipel> element or no action (Archipel's -42)."""

    code = -42
    condition = "bad-request"


class Migrating(ArchipelError):
    """The entity is being migrated (Archipel's -43)."""

    code = -43
    condition = "resource-constraint"


class UnknownAction(ArchipelError):
    """The namespace is served here but the action is not."""

    code = -44
    condition = "feature-not-implemented"


class MissingArgument(ArchipelError):
    code = -45
    condition = "bad-request"

    def __init__(self, name: str):
        super().__init__(f"missing argument '{name}'")
        self.argument = name


class InvalidArgument(ArchipelError):
    code = -46
    condition = "bad-request"

    def __init__(self, name: str, reason: str):
        super().__init__(f"invalid argument '{name}': {reason}")
        self.argument = name


class NotFound(ArchipelError):
    code = -47
    condition = "item-not-found"


class Unavailable(ArchipelError):
    """A backend the command needs (libvirt, LDAP, storage) is not reachable."""

    code = -48
    condition = "service-unavailable"


class Conflict(ArchipelError):
    code = -49
    condition = "conflict"


class PermissionDenied(ArchipelError):
    """Archipel's permission error: namespace archipel:error:permission, code -1."""

    namespace = "archipel:error:permission"
    code = -1
    condition = "forbidden"

    def __init__(self, action: str, detail: str | None = None):
        message = f"Cannot use '{action}': permission denied"
        if detail:
            message += f" ({detail})"
        super().__init__(message)
        self.action = action


class LibvirtFailure(ArchipelError):
    """libvirt refused the operation; the code is libvirt's own error code."""

    namespace = "libvirt:error:generic"
    condition = "internal-server-error"
