"""Network rights and the error replies of archipel:hypervisor:network, on the session agent.

Networks here are defined but never started (the session libvirtd shares the host's network
namespace: class networks with DHCP are exercised in test_networks.py, in the rig's namespaces).
"""
from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import PERMS_NS, grant
from vm_helpers import CONTROL, DEFINITION, HV_NS, vm_full, wait_vm_ready
from xmpp_client import AcpError

NET_NS = "archipel:hypervisor:network"


def net(name: str, extra: str = "") -> ET.Element:
    return ET.fromstring(f"<network><name>{name}</name>{extra}</network>")


def nic_domain(network: str) -> ET.Element:
    return ET.fromstring("<domain type='qemu'><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
                         "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
                         f"<interface type='network'><source network='{network}'/></interface></devices></domain>")


async def error_of(coro) -> AcpError:
    with pytest.raises(AcpError) as err:
        await coro
    return err.value


def unique() -> str:
    return f"rn{uuidlib.uuid4().hex[:8]}"


async def test_rights_decide_who_attaches_and_manages(agent, admin, new_user, stack):
    teacher, student, other = await new_user("nteacher"), await new_user("nstudent"), await new_user("nother")
    hv = agent.full_jid
    await grant(admin, hv, teacher.jid, "network_define", "network_grant", "network_revoke", "network_undefine",
                "network_grants")
    await grant(admin, hv, other.jid, "network_grant", "network_undefine")
    await grant(admin, hv, student.jid, "alloc", "network_getnames")
    name = unique()
    made = []
    try:
        # bad inputs of define, each with its reply
        assert (await error_of(teacher.acp(hv, NET_NS, "define"))).code == -45
        assert (await error_of(teacher.acp(hv, NET_NS, "define", {"scope": "galaxy"}, children=[net(name)]))).code == -46
        err = await error_of(teacher.acp(hv, NET_NS, "define", children=[net(name, "<bridge name='virbr0'/>")]))
        assert err.code == -50 and "the agent names the bridge" in err.text, err
        reply = await teacher.acp(hv, NET_NS, "define", children=[net(name)])
        assert reply[0].get("scope") == "local"
        err = await error_of(teacher.acp(hv, NET_NS, "define", children=[net(name)]))
        assert err.code == -50 and "already exists" in err.text, err
        bridge = ET.fromstring(_xml(stack, name)).find("bridge").get("name")
        assert bridge.startswith("anl"), bridge  # named by the agent

        # the student: not granted → refused; granted (user) → accepted; revoked → refused again
        err = await error_of(student.acp(hv, HV_NS, "alloc", children=[nic_domain(name)]))
        assert err.code == -50 and f"network '{name}' is not granted" in err.text, err
        assert name not in {n.get("name") for n in await student.acp(hv, NET_NS, "getnames")}
        await teacher.acp(hv, NET_NS, "grant", {"network": name, "target": student.jid, "right": "use"})
        assert name in {n.get("name") for n in await student.acp(hv, NET_NS, "getnames")}
        jid = (await student.acp(hv, HV_NS, "alloc", children=[nic_domain(name)]))[0].get("jid")
        made.append(jid)
        full = vm_full(jid, agent.jid)
        await wait_vm_ready(student, full)
        filters = await student.acp(full, NET_NS, "getnwfilters")
        assert [f.get("name") for f in filters] == ["clean-traffic"]
        assert list(await student.acp(full, NET_NS, "getnics")) == []  # host NICs: admins only
        nics = {n.get("name") for n in await admin.acp(full, NET_NS, "getnics")}
        assert nics == host_nics(), nics  # Ethernet devices, not bridges, veths, taps, loopback
        await teacher.acp(hv, NET_NS, "revoke", {"network": name, "target": student.jid, "right": "use"})
        err = await error_of(student.acp(full, DEFINITION, "define", children=[nic_domain(name)]))
        assert err.code == -50 and "is not granted" in err.text, err

        # a role holding 'use', given to the student on the network
        role = f"netuser{uuidlib.uuid4().hex[:6]}"
        await admin.acp(hv, PERMS_NS, "setrole", {"name": role}, children=[ET.Element("permission", {"name": "use"})])
        await teacher.acp(hv, NET_NS, "grant", {"network": name, "target_type": "role_user", "target": student.jid,
                                                "right": role})
        await student.acp(full, DEFINITION, "define", children=[nic_domain(name)])

        # rights on the network itself: the hypervisor's permission is not enough
        err = await error_of(other.acp(hv, NET_NS, "grant", {"network": name, "target": other.jid, "right": "manage"}))
        assert err.is_permission_error and f"'manage' on network '{name}'" in err.text, err
        err = await error_of(other.acp(hv, NET_NS, "undefine", {"uuid": name}))
        assert err.is_permission_error, err
        err = await error_of(teacher.acp(hv, NET_NS, "grant", {"network": name, "target": other.jid, "right": "own"}))
        assert err.code == -46, err
        err = await error_of(teacher.acp(hv, NET_NS, "grants", {"network": "nosuchnet"}))
        assert err.code == -47, err
        err = await error_of(teacher.acp(hv, NET_NS, "undefine", {"uuid": "nosuchnet"}))
        assert err.code == -47, err
        # a host bridge, through alloc: refused with a clear error for a non-admin
        err = await error_of(student.acp(hv, HV_NS, "alloc", children=[ET.fromstring(
            "<domain type='qemu'><memory unit='MiB'>64</memory><os><type>hvm</type></os><devices>"
            "<interface type='bridge'><source bridge='virbr0'/></interface></devices></domain>")]))
        assert err.code == -50 and "is a host bridge: only an admin's VM may use one" in err.text, err
    finally:
        for jid in made:
            await admin.acp(hv, HV_NS, "free", {"jid": jid})
        await teacher.acp(hv, NET_NS, "undefine", {"uuid": name})
    assert name not in libvirt.open(stack.libvirt_uri).listDefinedNetworks()


def _xml(stack, name: str) -> str:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return conn.networkLookupByName(name).XMLDesc(0)
    finally:
        conn.close()


def host_nics() -> set[str]:
    import json
    import subprocess
    links = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    return {link["ifname"] for link in links
            if link.get("link_type") == "ether" and not link.get("linkinfo", {}).get("info_kind")}
