"""The audit log: every command and refusal (:mod:`.log`), and ``archipel:audit`` (:mod:`.commands`).

:mod:`.log` is a service the command dispatch records into; :mod:`.commands`
sits above the command layer and is imported by the agent's wiring only.
"""
from .log import *  # noqa: F401,F403
from .log import AuditLog, record_request, record_subscription  # noqa: F401
