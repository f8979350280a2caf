#!/usr/bin/env python3
"""A class network and 30 NICs on it: through the agent against the raw libvirt calls.

On one namespaced hypervisor of the rig (rig/hypervisors.py: its bridges, dnsmasq and
VXLAN port stay in its network namespace), in the same run:

(a) agent: ``archipel:hypervisor:network define scope=class`` (policy, catalogue on the
    shared storage, libvirt define + start + autostart, VXLAN port), then the non-admin
    owner of N VMs (allocated beforehand, untimed) granted ``use`` defines each with a NIC
    on it, one after the other (catalogue sync, rights, domain policy, quota, libvirt define);
(b) floor: ``networkDefineXML`` + ``create`` + ``setAutostart`` of the same kind of network and
    ``defineXML`` of N domains with the same NIC, straight to that libvirtd, one after the other.

    ARCHIPEL_RIG_PROFILE=dev5 .venv/bin/python bench/bench_networks.py [-n 30]
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid
import xml.etree.ElementTree as ET

import libvirt

from common import REPO  # noqa: F401 - sets sys.path for rig/ and the test helpers
from rig.stack import Stack
from agent_fixtures import admin_client, client_for
from hypervisor_fixtures import hypervisor_agent
from vm_helpers import DEFINITION, wait_vm_ready

import os

NET_NS = "archipel:hypervisor:network"
HV_NS = "archipel:hypervisor:control"
PERMS = "archipel:permissions"


def network(name: str, third: int) -> str:
    return (f"<network><name>{name}</name><ip address='10.200.{third}.1' prefix='24'>"
            f"<dhcp><range start='10.200.{third}.100' end='10.200.{third}.200'/></dhcp></ip></network>")


def nic(net: str) -> str:
    return (f"<interface type='network'><source network='{net}'/><model type='virtio'/>"
            "<filterref filter='clean-traffic'/></interface>")


def domain(net: str | None, name: str | None = None) -> str:
    named = f"<name>{name}</name><uuid>{uuid.uuid4()}</uuid>" if name else ""
    return (f"<domain type='qemu'>{named}<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"{nic(net) if net else ''}</devices></domain>")


def raw_floor(uri: str, n: int) -> tuple[float, float]:
    """Network define+create+autostart, then N domains (defined first, untimed) redefined with the NIC."""
    conn = libvirt.open(uri)
    name = f"raw{uuid.uuid4().hex[:6]}"
    doms = []
    try:
        bare = [domain(None, f"{name}-{i:03d}") for i in range(n)]
        doms = [conn.defineXML(xml) for xml in bare]
        t0 = time.perf_counter()
        net = conn.networkDefineXML(network(name, 251).replace("<name>", "<bridge name='rawbr0'/><name>"))
        net.create()
        net.setAutostart(1)
        t1 = time.perf_counter()
        for xml in bare:
            conn.defineXML(xml.replace("<devices>", f"<devices>{nic(name)}"))
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1
    finally:
        for dom in doms:
            dom.undefine()
        try:
            net = conn.networkLookupByName(name)
            net.destroy()
            net.undefine()
        except libvirt.libvirtError:
            pass
        conn.close()


async def agent_path(stack, hv_handle, admin, n: int) -> tuple[float, float]:
    """define scope=class, then the owner of N VMs (allocated first, untimed) defines each with the NIC."""
    user_jid = stack.register_user(f"netbench-{uuid.uuid4().hex[:6]}", "benchpw")
    user = await client_for(stack, user_jid, "benchpw", "bench").connect()
    hv = hv_handle.full_jid
    jids = []
    try:
        await admin.acp(hv, PERMS, "set", children=[ET.Element("permission", {
            "permission_type": "user", "permission_target": user_jid, "permission_name": "alloc",
            "permission_value": "true"})])
        name = f"cls{uuid.uuid4().hex[:6]}"
        sem = asyncio.Semaphore(8)

        async def alloc(i: int) -> str:
            async with sem:
                reply = await user.acp(hv, HV_NS, "alloc", {"name": f"{name}-{i:03d}"}, timeout=120)
                return reply[0].get("jid")

        jids = list(await asyncio.gather(*(alloc(i) for i in range(n))))
        fulls = [f"{jid}/{hv_handle.jid.split('@')[0]}" for jid in jids]
        for full in fulls:
            await wait_vm_ready(user, full)
        t0 = time.perf_counter()
        await admin.acp(hv, NET_NS, "define", {"scope": "class"}, children=[ET.fromstring(network(name, 250))])
        t1 = time.perf_counter()
        await admin.acp(hv, NET_NS, "grant", {"network": name, "target": user_jid, "right": "use"})
        t2 = time.perf_counter()
        for full in fulls:
            await user.acp(full, DEFINITION, "define", children=[ET.fromstring(domain(name))], timeout=120)
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2
    finally:
        for jid in jids:
            await admin.acp(hv, HV_NS, "free", {"jid": jid}, timeout=120)
        try:
            await admin.acp(hv, NET_NS, "undefine", {"uuid": name})
        except Exception:  # noqa: BLE001 - best effort
            pass
        await user.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="NICs (VMs) to attach")
    args = parser.parse_args()
    stack = Stack(profile=os.environ.get("ARCHIPEL_RIG_PROFILE", "test"))
    stack.start()
    try:
        (hv,) = stack.start_hypervisors(1)
        handle = hypervisor_agent(stack, hv, {"VIRTUALMACHINE": {"vm_allowed_networks": ""},
                                              "NETWORKS": {"vxlan_device": "mig0", "network_namespace": hv.netns}})
        handle.process.start()
        admin = await admin_client(stack, "netbench")
        try:
            await handle.wait_ready(admin)
            await asyncio.to_thread(raw_floor, hv.libvirt_uri, 1)  # warm-up: first network start (firewall, dnsmasq)
            agent_net, agent_nics = await agent_path(stack, handle, admin, args.n)
            raw_net, raw_nics = await asyncio.to_thread(raw_floor, hv.libvirt_uri, args.n)
        finally:
            await admin.close()
            handle.process.stop()
            stack.hypervisors.stop()
    finally:
        stack.stop()
    print(f"class network: agent {agent_net * 1000:.1f} ms vs raw libvirt define+create+autostart "
          f"{raw_net * 1000:.1f} ms  (x{agent_net / raw_net:.1f})")
    print(f"{args.n} NICs:     agent {agent_nics * 1000:.1f} ms (define with a NIC over XMPP) vs raw "
          f"defineXML {raw_nics * 1000:.1f} ms  (x{agent_nics / raw_nics:.1f}; "
          f"{agent_nics / args.n * 1000:.1f} ms vs {raw_nics / args.n * 1000:.1f} ms per NIC)")


if __name__ == "__main__":
    asyncio.run(main())
