"""The classes module's pure parts: names, durations, expiries, the root disk in a definition."""
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archipelagent.classes import leases
from archipelagent_modules import classes


@pytest.mark.parametrize("raw, expected", [("Lab1", "lab1"), ("cs-101_a", "cs-101_a")])
def test_class_names(raw, expected):
    assert classes._class_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "-x", "a b", "x" * 33, "../etc", "é"])
def test_bad_class_names(raw):
    with pytest.raises(ValueError):
        classes._class_name(raw)


def test_durations_and_expiries():
    assert leases.duration("90s") == 90 and leases.duration("2h") == 7200 and leases.duration("7d") == 604800
    assert leases.durations(" 24h, 1h ") == "24h,1h"
    for bad in ("", "1w", "-1h", "1.5h", "h"):
        with pytest.raises(ValueError):
            leases.duration(bad)
    with pytest.raises(ValueError):
        leases.durations("1h,2h,3h,4h,5h,6h")
    assert abs(leases.parse_expiry("+1h") - (time.time() + 3600)) < 5
    assert leases.parse_expiry("2030-01-02T03:04:05") == leases.datetime.datetime(2030, 1, 2, 3, 4, 5).timestamp()
    with pytest.raises(ValueError):
        leases.parse_expiry("tomorrow")


def test_the_overlay_replaces_the_disk_on_vda_and_comes_first():
    xml = """<domain type='kvm'><name>x</name><devices>
      <interface type='network'><source network='default'/></interface>
      <disk type='file' device='disk'><source file='/old.qcow2'/><target dev='vda'/></disk>
      <disk type='file' device='cdrom'><source file='/iso'/><target dev='hdc'/></disk></devices></domain>"""
    root = classes._with_root_disk(xml, Path("/vm/u/root.qcow2"))
    disks = root.find("devices").findall("disk")
    assert [d.find("source").get("file") for d in disks] == ["/vm/u/root.qcow2", "/iso"]
    assert disks[0].find("driver").get("type") == "qcow2" and disks[0].find("target").get("bus") == "virtio"
    assert root.find("devices")[0] is disks[0]
    assert ET.tostring(root).count(b"interface") == 2  # open and close tags: the NIC is kept


def test_the_class_network_is_the_one_nic():
    root = ET.fromstring("<domain><devices><disk device='disk'/><interface type='network'><source network='default'/>"
                         "</interface><interface type='bridge'><source bridge='br0'/></interface></devices></domain>")
    ifaces = classes._with_network(root, "lab1net").findall("devices/interface")
    assert len(ifaces) == 1 and ifaces[0].get("type") == "network"
    assert ifaces[0].find("source").get("network") == "lab1net" and ifaces[0].find("model").get("type") == "virtio"
    assert root.find("devices/disk") is not None


async def test_a_classes_database_of_before_the_network_and_peers_gains_the_columns(tmp_path):
    import sqlite3

    from archipelagent.classes.store import Classes
    path = tmp_path / "classes.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE classes (name TEXT PRIMARY KEY, grp TEXT NOT NULL, golden TEXT NOT NULL, "
                "role TEXT NOT NULL, teacher TEXT NOT NULL, created TEXT NOT NULL, expiry REAL, warn TEXT, grace REAL)")
    old.execute("INSERT INTO classes (name, grp, golden, role, teacher, created) VALUES ('lab1', 'g', 'gold', 'r', 't@x', 'now')")
    old.execute("CREATE TABLE members (class TEXT NOT NULL, uid TEXT NOT NULL, uuid TEXT NOT NULL, "
                "definition TEXT NOT NULL, changed TEXT NOT NULL, PRIMARY KEY (class, uid))")
    old.execute("INSERT INTO members VALUES ('lab1', 's1', 'u-1', '<domain/>', 'now')")
    old.commit()
    old.close()
    store = Classes(path)
    await store.open()
    try:
        assert (await store.get("lab1"))["network"] is None
        assert [m["hypervisor"] for m in await store.members("lab1")] == [None]
        assert (await store.member_of_vm("u-1"))[1]["uid"] == "s1"
        await store.add_member("lab1", "s2", "u-2", "", hypervisor="hv-2@x")  # made on a peer: its VM is not ours
        assert {m["uid"]: m["hypervisor"] for m in await store.members("lab1")} == {"s1": None, "s2": "hv-2@x"}
        assert await store.member_of_vm("u-2") is None
        await store.add("lab2", "g", "gold", "r", "t@x", "lab2net")
        assert (await store.get("lab2"))["network"] == "lab2net"
    finally:
        await store.close()


async def test_placement_of_a_class_spreads_over_the_peers(monkeypatch):
    """classes/remote.plan: without peers all here; with peers, placement.place decides (uid -> None here)."""
    from types import SimpleNamespace

    from archipelagent.classes import remote
    from archipelagent.hypervisor.placement import Host

    agent = SimpleNamespace(hypervisor=SimpleNamespace(full_jid="hv-1@x/hv-1"))
    monkeypatch.setattr(remote, "online_peers", lambda agent: [])
    assert await remote.plan(agent, ["s1", "s2"]) == ({"s1": None, "s2": None}, {})

    async def hosts(agent):
        return [Host("hv-1@x/hv-1", 4 * 2 ** 20, 0, max_vms=1), Host("hv-2@x/hv-2", 4 * 2 ** 20, 0, max_vms=1),
                Host("hv-3@x/hv-3", 8 * 2 ** 20, 0, maintenance=True)]
    monkeypatch.setattr(remote, "online_peers", lambda agent: ["a peer"])
    monkeypatch.setattr(remote, "hosts", hosts)
    where, nowhere = await remote.plan(agent, ["s1", "s2", "s3"])
    assert where == {"s1": None, "s2": "hv-2@x/hv-2"}  # equal free memory: the lowest JID first
    assert list(nowhere) == ["s3"] and "at its limit of 1 VMs" in nowhere["s3"] and "in maintenance" in nowhere["s3"]
    assert await remote.plan(agent, []) == ({}, {})
