"""Session fixtures: one real agent against the real stack, and real clients.

Tests are isolated by user: each one asks ``new_user`` for fresh accounts,
so the agent and the stack start once per session.
"""
from __future__ import annotations

import asyncio
import itertools
import shutil
import uuid
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio

from agent_process import AgentProcess
from xmpp_client import Client

HV_NAME = "hv-test"
PERMS_NS = "archipel:permissions"
_counter = itertools.count(1)


class AgentHandle:
    """The running agent and what tests need to reach it."""

    def __init__(self, stack, process: AgentProcess, jid: str, lib_dir):
        self.stack = stack
        self.process = process
        self.jid = jid
        self.full_jid = f"{jid}/{HV_NAME}"
        self.lib_dir = lib_dir

    async def wait_ready(self, client: Client, timeout: float = 60) -> None:
        """Until the hypervisor answers an ACP (it is online and serving)."""
        deadline = asyncio.get_running_loop().time() + timeout
        last = None
        while asyncio.get_running_loop().time() < deadline:
            if not self.process.alive:
                raise RuntimeError(f"agent died:\n{self.process.log_tail()}")
            try:
                await client.acp(self.full_jid, PERMS_NS, "list", timeout=3)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                await asyncio.sleep(0.3)
        raise TimeoutError(f"hypervisor not ready: {last}\n{self.process.log_tail()}")


def write_config(stack, lib_dir, overrides=None, password="hv-secret-" + uuid.uuid4().hex):
    base = {"HYPERVISOR": {"hypervisor_name": HV_NAME}, "LOGGING": {"logging_level": "info"},
            "XMPP": {"reconnect_min_delay": "0.5", "reconnect_max_delay": "5"},
            "HEALTH": {"health_collection_interval": "1"},  # history fills within seconds
            # The shipped default allows no network; tests attach NICs to "default".
            "VIRTUALMACHINE": {"vm_allowed_networks": "default"},
            # Short cache: the LDAP-down test waits it out (test_ldap_groups.py).
            "LDAP": {"ldap_uri": stack.ldap_uri, "ldap_bind_dn": stack.ldap_bind_dn,
                     "ldap_bind_password": stack.ldap_bind_password,
                     "ldap_base_dn": stack.ldap_base_dn, "ldap_cache_ttl": "1", "ldap_timeout": "3"}}
    for section, values in (overrides or {}).items():
        base.setdefault(section, {}).update(values)
    return stack.write_agent_config(
        lib_dir / "archipel.conf", hypervisor_password=password, lib_dir=lib_dir,
        log_file=lib_dir / "agent.log", overrides=base,  # a log file too: `health logs` reads it
    )


def second_agent(stack, name: str, overrides=None, *, lib_dir=None, process_factory=AgentProcess) -> AgentHandle:
    """A second agent of its own (hypervisor ``<name>@<domain>/<name>``), configured, not started.

    For tests that kill, stop or starve an agent: the session agent is not disturbed.
    ``lib_dir`` defaults to a fresh ``<state>/agent-<name>``; ``process_factory(conf, out)``
    builds the process (e.g. an agent in a namespace of its own).
    """
    if lib_dir is None:
        lib_dir = stack.state_dir / f"agent-{name}"
        shutil.rmtree(lib_dir, ignore_errors=True)
        lib_dir.mkdir(parents=True)
    hv_jid = f"{name}@{stack.domain}"
    settings = {"HYPERVISOR": {"hypervisor_xmpp_jid": hv_jid, "hypervisor_name": name}}
    for section, values in (overrides or {}).items():
        settings.setdefault(section, {}).update(values)
    conf = write_config(stack, lib_dir, settings)
    handle = AgentHandle(stack, process_factory(conf, lib_dir / "agent.out"), hv_jid, lib_dir)
    handle.full_jid = f"{hv_jid}/{name}"
    return handle


async def admin_client(stack, resource: str) -> Client:
    """A connected client of the rig's admin (config admin of every test agent)."""
    user = stack.admin_user
    return await client_for(stack, user["jid"], user["password"], resource).connect()


@pytest.fixture(scope="session")
def agent_process(stack):
    lib_dir = stack.state_dir / "agent-under-test"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(parents=True)
    conf = write_config(stack, lib_dir)
    process = AgentProcess(conf, lib_dir / "agent.out")
    process.start()
    yield AgentHandle(stack, process, "hypervisor@" + stack.domain, lib_dir)
    process.stop()


def client_for(stack, jid: str, password: str, resource: str = "tests") -> Client:
    return Client(jid, password, ca_file=stack.ca_file, host=stack.xmpp_host, port=stack.c2s_port, resource=resource)


@pytest_asyncio.fixture(scope="session")
async def admin(stack, agent_process):
    user = stack.admin_user
    client = await client_for(stack, user["jid"], user["password"], "admin-tests").connect()
    await agent_process.wait_ready(client)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def agent(agent_process, admin):
    """The agent, once its hypervisor serves requests."""
    return agent_process


@pytest_asyncio.fixture(scope="session")
async def new_user(stack):
    """Factory: a fresh internal account, connected; closed at session end."""
    clients = []

    async def make(prefix: str = "user") -> Client:
        name = f"{prefix}{next(_counter)}-{uuid.uuid4().hex[:6]}"
        password = uuid.uuid4().hex
        jid = stack.register_user(name, password)
        client = await client_for(stack, jid, password).connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def permission_item(target: str, name: str, value: bool = True) -> ET.Element:
    return ET.Element("permission", {
        "permission_type": "user", "permission_target": target,
        "permission_name": name, "permission_value": "true" if value else "false",
    })


async def grant(admin_client: Client, entity_full_jid: str, target: str, *names: str, value: bool = True) -> None:
    await admin_client.acp(entity_full_jid, PERMS_NS, "set", children=[permission_item(target, n, value) for n in names])


@pytest_asyncio.fixture(autouse=True)
async def agent_is_serving(request):
    """Some tests restart ejabberd/libvirtd: each agent test starts once the hypervisor serves again."""
    if "agent" in request.fixturenames:
        handle = request.getfixturevalue("agent")
        client = request.getfixturevalue("admin")
        await handle.wait_ready(client)
    yield
