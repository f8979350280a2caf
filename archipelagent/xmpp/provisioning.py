"""Creating and removing the XMPP accounts of the agent's entities.

Two ways, chosen by ``[XMPP] account_provisioning``:

* ``ibr`` (default): XEP-0077 in-band registration on the entity's own
  stream.  It needs nothing but c2s, which is why Archipel used it, but the
  server must allow it only from the hypervisors' addresses (ejabberd:
  ``mod_register: ip_access: trusted_network``) — never open registration.
* ``http_api``: ejabberd's mod_http_api ``register``/``unregister``, which
  must only be reachable from the hypervisors.

The IBR path lives in :class:`~archipelagent.xmpp.entity.Entity` because it
runs on the entity's stream; this module holds the HTTP one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


class ProvisioningError(Exception):
    pass


def _post(url: str, payload: dict, timeout: float) -> object:
    data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read().decode() or "null"
    except urllib.error.HTTPError as exc:
        raise ProvisioningError(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvisioningError(f"{url}: {exc}") from None
    return json.loads(body)


class HttpApiProvisioner:
    """Accounts through ejabberd's HTTP admin API (blocking urllib off the loop)."""

    def __init__(self, api_url: str, timeout: float = 10.0):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout

    async def call(self, command: str, payload: dict) -> object:
        return await asyncio.get_running_loop().run_in_executor(
            None, _post, f"{self.api_url}/{command}", payload, self.timeout
        )

    async def register(self, user: str, host: str, password: str) -> None:
        try:
            await self.call("register", {"user": user, "host": host, "password": password})
        except ProvisioningError as exc:
            if "conflict" in str(exc).lower() or "already registered" in str(exc).lower():
                raise ProvisioningError(f"account {user}@{host} exists but the password is wrong") from None
            raise
        log.info("registered %s@%s through the HTTP API", user, host)

    async def unregister(self, user: str, host: str) -> None:
        await self.call("unregister", {"user": user, "host": host})
