#!/usr/bin/env python3
"""A class of N (30) from one golden image: provisioned, started and online, vs raw libvirt.

Agent: an LDAP group of N new people is made in the rig's directory, then the admin sends
``archipel:hypervisor:classes provision`` (N VMs ``<class>-<uid>``, each a qcow2 overlay of
the golden image, its definition checked, its student's role granted) and ``start``; the
clock stops when all N VM entities show ``Running``.  Floor, in the same run on the same
storage and libvirtd: N × (``qemu-img create -b golden`` + ``virsh define`` + ``virsh start``)
one after another.  The ratio is printed; there are no thresholds.

    ARCHIPEL_RIG_PROFILE=dev6 .venv/bin/python bench/bench_class.py [-n 30]
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET

import ldap3

from common import running_agent

NS = "archipel:hypervisor:classes"
PERMS = "archipel:permissions"


def make_group(stack, cn: str, count: int) -> list[str]:
    base = stack.ldap_base_dn
    conn = ldap3.Connection(ldap3.Server(stack.ldap_uri), stack.ldap_bind_dn, stack.ldap_bind_password, auto_bind=True)
    uids = [f"{cn}-s{i:02d}" for i in range(count)]
    for uid in uids:
        conn.add(f"uid={uid},ou=people,{base}", ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": uid})
    conn.add(f"cn={cn},ou=groups,{base}", ["groupOfNames"],
             {"cn": cn, "member": [f"uid={u},ou=people,{base}" for u in uids]})
    assert conn.result["result"] == 0, conn.result
    conn.unbind()
    return uids


def drop_group(stack, cn: str, uids: list[str]) -> None:
    base = stack.ldap_base_dn
    conn = ldap3.Connection(ldap3.Server(stack.ldap_uri), stack.ldap_bind_dn, stack.ldap_bind_password, auto_bind=True)
    conn.delete(f"cn={cn},ou=groups,{base}")
    for uid in uids:
        conn.delete(f"uid={uid},ou=people,{base}")
    conn.unbind()


class Running:
    """When each VM last showed ``Running``."""

    def __init__(self, client):
        self.seen: dict[str, float] = {}
        client.xmpp.add_event_handler("presence", self._on)

    def _on(self, presence):
        if presence["type"] != "unavailable" and presence["status"] == "Running":
            self.seen[presence["from"].bare] = time.monotonic()

    async def wait(self, jids: set[str], since: float, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.seen.get(j, 0) >= since for j in jids):
                return max(self.seen[j] for j in jids) - since
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{sum(self.seen.get(j, 0) >= since for j in jids)}/{len(jids)} running")


def virsh(uri: str, *args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", uri, *args], check=True, capture_output=True)


def raw_domain(template: str, name: str, disk: str) -> str:
    root = ET.fromstring(template)
    root.find("name").text = name
    root.find("uuid").text = str(uuid.uuid4())
    for iface in list(root.find("devices").findall("interface")):
        root.find("devices").remove(iface)
    for source in root.find("devices").iter("source"):
        if source.get("file"):
            source.set("file", disk)
    for desc in root.findall("description"):
        root.remove(desc)
    return ET.tostring(root, encoding="unicode")


async def make_golden(stack, hv: str, admin):
    """A golden image made by the agent (a disk, then setgolden: its format is recorded)."""
    jid = (await admin.acp(hv, "archipel:hypervisor:control", "alloc", {"name": f"gold-{uuid.uuid4().hex[:6]}"}))[0].get("jid")
    full = f"{jid}/{hv.split('@')[0]}"
    for _ in range(300):
        try:
            await admin.acp(full, "archipel:vm:control", "info", timeout=3)
            break
        except Exception:  # noqa: BLE001 - not online yet
            await asyncio.sleep(0.1)
    await admin.acp(full, "archipel:vm:disk", "create", {"name": "base", "size": "1", "unit": "G"})
    name = f"bench-{uuid.uuid4().hex[:6]}"
    await admin.acp(full, "archipel:vm:disk", "setgolden", {"name": "base.qcow2", "golden": name})
    path = stack.storage_dir.parent / "golden" / f"{name}.qcow2"
    while not path.is_file():
        await asyncio.sleep(0.1)
    await admin.acp(hv, "archipel:hypervisor:control", "free", {"jid": jid})
    return name, path


async def main(count: int) -> None:
    async with running_agent() as (stack, agent, admin):
        hv = agent.full_jid
        golden_name, golden = await make_golden(stack, hv, admin)
        cn = f"bench{uuid.uuid4().hex[:6]}"
        uids = make_group(stack, cn, count)
        role = f"{cn}-student"
        await admin.acp(hv, PERMS, "setrole", {"name": role},
                        children=[ET.Element("permission", {"name": n}) for n in ("presence", "info", "create")])
        running = Running(admin)
        name = cn
        try:
            t0 = time.monotonic()
            reply = await admin.acp(hv, NS, "provision", {"name": name, "group": cn, "golden": golden_name,
                                                          "role": role}, timeout=600)
            t_prov = time.monotonic() - t0
            made = [v for v in reply if v.get("status") == "created"]
            if len(made) != count:
                raise SystemExit(f"only {len(made)}/{count} made: {[dict(v.attrib) for v in reply][:2]}")
            jids = {v.get("jid") for v in made}
            t1 = time.monotonic()
            await admin.acp(hv, NS, "start", {"name": name}, timeout=600)
            t_start = time.monotonic() - t1
            online = await running.wait(jids, t0)
            print(f"agent: class of {count} from {golden.name}: provisioned {t_prov:.1f} s, started {t_start:.1f} s, "
                  f"all {count} entities Running {online:.1f} s after the first request "
                  f"({online / count * 1000:.0f} ms/VM)")
            # the floor: same overlays, definitions and starts, by hand
            first = next(iter(jids)).split("@")[0]
            template = subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "dumpxml", "--inactive", first],
                                      check=True, capture_output=True, text=True).stdout
            raw_dir = stack.storage_dir.parent / f"bench-raw-{uuid.uuid4().hex[:6]}"
            raw_dir.mkdir()
            names = []
            try:
                t2 = time.monotonic()
                with tempfile.TemporaryDirectory() as tmp:
                    for i in range(count):
                        disk = raw_dir / f"r{i:02d}.qcow2"
                        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(golden), "-F", "qcow2",
                                        str(disk)], check=True)
                        dom_name = f"{cn}-raw{i:02d}"
                        path = f"{tmp}/{dom_name}.xml"
                        with open(path, "w") as fh:
                            fh.write(raw_domain(template, dom_name, str(disk)))
                        virsh(stack.libvirt_uri, "define", path)
                        names.append(dom_name)
                        virsh(stack.libvirt_uri, "start", dom_name)
                t_raw = time.monotonic() - t2
                print(f"raw:   {count} × (qemu-img create + virsh define + virsh start): {t_raw:.1f} s "
                      f"({t_raw / count * 1000:.0f} ms/VM)")
                print(f"ratio agent (provision+start+online) / raw: {online / t_raw:.2f}")
            finally:
                for dom_name in names:
                    subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "destroy", dom_name], capture_output=True)
                    subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "undefine", dom_name], capture_output=True)
                subprocess.run(["rm", "-rf", str(raw_dir)])
        finally:
            await admin.acp(hv, NS, "delete", {"name": name}, timeout=600)
            drop_group(stack, cn, uids)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    asyncio.run(main(parser.parse_args().n))
