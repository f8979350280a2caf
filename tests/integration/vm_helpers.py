"""Helpers for VM tests: allocate through the wire, read libvirt's own view."""
from __future__ import annotations

import asyncio
import uuid as uuidlib

import libvirt

HV_NS = "archipel:hypervisor:control"
CONTROL = "archipel:vm:control"
DEFINITION = "archipel:vm:definition"


def unique_name(prefix: str = "vm") -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


def libvirt_state(stack, uuid: str) -> int | None:
    """libvirt's own state of the domain, or None when it does not exist."""
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return conn.lookupByUUIDString(uuid).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def wait_libvirt_state(stack, uuid: str, state: int | None, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await asyncio.to_thread(libvirt_state, stack, uuid)
        if current == state:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"libvirt state of {uuid} is {current}, expected {state}")
        await asyncio.sleep(0.2)


def from_vm(jid: str, status: str):
    def predicate(presence):
        return presence["from"].bare == jid and presence["type"] != "unavailable" and presence["status"] == status
    return predicate


async def alloc(client, hv_full_jid: str, name: str | None = None, **attrs) -> str:
    if name:
        attrs["name"] = name
    query = await client.acp(hv_full_jid, HV_NS, "alloc", attrs)
    return query[0].get("jid")


def vm_full(jid: str, hv_jid: str) -> str:
    return f"{jid}/{hv_jid.split('@')[0]}"


async def wait_vm_ready(client, vm_full_jid: str, timeout: float = 30) -> None:
    """Until the VM entity answers an ACP."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await client.acp(vm_full_jid, CONTROL, "info", timeout=3)
            return
        except Exception:  # noqa: BLE001
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
