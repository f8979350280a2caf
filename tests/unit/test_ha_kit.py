"""The HA storage kit generator: parameters -> files, bad parameters, the CLI, conf/ha/ in sync.

No cluster tool is run here; tests/integration/test_ha_kit_tools.py validates the
output with crm_verify, crm_simulate, crmsh, drbdadm and corosync -t.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from archipelagent.ha import kit
from archipelagent.ha.kit import EXAMPLE, HAKitError, Node

REPO = Path(__file__).resolve().parents[2]
CONF_HA = REPO / "conf" / "ha"


def files(**changes):
    return kit.generate(replace(EXAMPLE, **changes))


def test_example_generates_every_file():
    out = files()
    assert set(out) == set(kit.FILES) | {"vms.res"}
    assert all(text.endswith("\n") and text.strip() for text in out.values())


def test_conf_ha_is_the_generated_example():
    """conf/ha/ is exactly `archipel-admin ha generate --example` (regenerate it when the kit changes)."""
    for name, text in files().items():
        assert (CONF_HA / name).read_text(encoding="utf-8") == text, f"conf/ha/{name} is stale"


def test_cib_structure():
    cib = ET.fromstring(files()["cib.xml"])
    res = cib.find("configuration/resources")
    clone = res.find("clone[@id='ms_drbd_vms']")
    meta = {nv.get("name"): nv.get("value") for nv in clone.iter("nvpair")
            if nv.get("id").startswith("ms_drbd_vms-meta")}
    assert meta["promotable"] == "true" and meta["promoted-max"] == "1" and meta["notify"] == "true"
    drbd = clone.find("primitive")
    assert (drbd.get("class"), drbd.get("provider"), drbd.get("type")) == ("ocf", "linbit", "drbd")
    group = res.find("group[@id='g_nfs']")
    assert [(p.get("id"), p.get("type")) for p in group] == [
        ("p_fs_vms", "Filesystem"), ("p_nfsserver", "nfsserver"), ("p_exportfs_vms", "exportfs"),
        ("p_ip_nfs", "IPaddr2")]
    params = {nv.get("name"): nv.get("value") for nv in group.find("primitive[@id='p_nfsserver']").iter("nvpair")}
    assert params["nfs_shared_infodir"] == "/srv/archipel/nfsinfo"
    assert params["nfs_server_scope"] == "192.168.10.100"
    ip = {nv.get("name"): nv.get("value") for nv in group.find("primitive[@id='p_ip_nfs']").iter("nvpair")}
    assert ip == {"ip": "192.168.10.100", "cidr_netmask": "24", "nic": "eth0"}
    order = cib.find("configuration/constraints/rsc_order")
    assert (order.get("first"), order.get("first-action"), order.get("then"), order.get("then-action")) == (
        "ms_drbd_vms", "promote", "g_nfs", "start")
    coloc = cib.find("configuration/constraints/rsc_colocation")
    assert (coloc.get("rsc"), coloc.get("with-rsc"), coloc.get("with-rsc-role"), coloc.get("score")) == (
        "g_nfs", "ms_drbd_vms", "Promoted", "INFINITY")
    props = {nv.get("name"): nv.get("value") for nv in cib.find("configuration/crm_config").iter("nvpair")}
    assert props == {"stonith-enabled": "false", "no-quorum-policy": "stop", "cluster-name": "archipel"}
    assert [n.get("uname") for n in cib.find("configuration/nodes")] == ["storage1", "storage2"]


def test_nfs_lease_grace_and_export():
    out = files(lease_time=15, grace_time=20)
    assert "lease-time=15\n" in out["nfs.conf"] and "grace-time=20\n" in out["nfs.conf"]
    assert "/srv/archipel/drives 192.168.10.0/24(rw,sync,no_root_squash" in out["exports"]
    assert out["hypervisor.fstab"].splitlines()[-1].startswith("192.168.10.100:/srv/archipel/drives /vm/drives nfs4 ")
    assert "hard" in out["hypervisor.fstab"]


def test_drbd_versions_differ_where_the_parsers_do():
    v84, v9 = files()["vms.res"], files(drbd_version="9")["vms.res"]
    assert "node-id" not in v84 and "crm-fence-peer.sh" in v84
    assert "node-id 0;" in v9 and "connection-mesh" in v9 and "crm-fence-peer.9.sh" in v9


def test_stonith_variant():
    out = files(ipmi=(("storage2", "10.9.0.2"), ("storage1", "10.9.0.1")))
    cib = ET.fromstring(out["cib.xml"])
    devices = cib.findall("configuration/resources/primitive[@class='stonith']")
    assert [d.get("id") for d in devices] == ["st_ipmi_storage1", "st_ipmi_storage2"]
    locations = {(l.get("rsc"), l.get("node"), l.get("score")) for l in cib.iter("rsc_location")}
    assert locations == {("st_ipmi_storage1", "storage1", "-INFINITY"), ("st_ipmi_storage2", "storage2", "-INFINITY")}
    assert "stonith-enabled=true" in out["cluster.crm"]
    assert "resource-and-stonith" in out["vms.res"]


def test_params_json_round_trips():
    p = kit.validate(replace(EXAMPLE, ipmi=(("storage1", "bmc1"), ("storage2", "bmc2"))))
    data = json.loads(kit.generate(p)["params.json"])
    assert kit.HAParams.from_json(data) == p


@pytest.mark.parametrize("changes, option, words", [
    ({"node1": Node("storage1", "10.0.0.300")}, None, None),   # parse_node refuses earlier: see below
    ({"node2": Node("storage1", "10.0.0.2")}, "--node2", "same node name"),
    ({"node2": Node("storage2", "10.0.0.1")}, "--node2", "share an address"),
    ({"node2": Node("storage2", "10.0.0.2")}, "--node1/--node2", "second link"),
    ({"device": ""}, "--device", "required"),
    ({"device": "/dev/sdb"}, "--device", "LVM logical volume"),
    ({"device": "/dev/drbd1/x"}, "--device", "DRBD device"),
    ({"device": "/dev/vg/../lv"}, "--device", "normalised"),
    ({"service_ip": "192.168.10.100"}, "--service-ip", "IP/PREFIX"),
    ({"service_ip": "192.168.10.300/24"}, "--service-ip", "not IP/PREFIX"),
    ({"service_ip": "10.0.0.1/24"}, "--service-ip", "node address"),
    ({"service_ip": "192.168.10.255/24"}, "--service-ip", "broadcast"),
    ({"service_ip": "fd00::1/64"}, "--service-ip", "IPv4"),
    ({"nic": "eth 0"}, "--nic", "interface"),
    ({"clients": "192.168.10.1/24"}, "--clients", "CIDR"),
    ({"clients": "0.0.0.0/0"}, "--clients", "whole world"),
    ({"clients": ""}, "--clients", "required"),
    ({"export": "/srv/other"}, "--export", "not under --mount"),
    ({"export": "/srv/archipel/nfsinfo"}, "--export", "overlaps"),
    ({"mount": "relative/path"}, "--mount", "absolute"),
    ({"fstype": "btrfs"}, "--fstype", "ext4"),
    ({"lease_time": 5}, "--lease-time", "10..3600"),
    ({"grace_time": 5, "lease_time": 10}, "--grace-time", "10..3600"),
    ({"grace_time": 10, "lease_time": 30}, "--grace-time", "shorter than the lease"),
    ({"drbd_port": 80}, "--drbd-port", "1024..65535"),
    ({"drbd_minor": -1}, "--drbd-minor", "0..1048575"),
    ({"drbd_version": "8.3"}, "--drbd-version", "8.4, 9"),
    ({"drbd_resource": "1vms"}, "--drbd-resource", "letter"),
    ({"cluster_name": "a b"}, "--cluster-name", "letter"),
    ({"ipmi": (("storage1", "10.9.0.1"),)}, "--ipmi", "one BMC per node"),
])
def test_bad_parameters_are_named(changes, option, words):
    if option is None:
        with pytest.raises(HAKitError, match=r"^--node1: '10.0.0.300' is not an IP address"):
            kit.parse_node("storage1=10.0.0.300", "node1")
        return
    with pytest.raises(HAKitError) as exc:
        kit.generate(replace(EXAMPLE, **changes))
    message = str(exc.value)
    assert message.startswith(option + ":"), message
    assert words in message, message


@pytest.mark.parametrize("spec, words", [
    ("storage1", "expected NAME=IP"), ("=10.0.0.1", "expected NAME=IP"), ("storage1=", "expected NAME=IP"),
    ("bad_name!=10.0.0.1", "not a valid host name"), ("storage1=10.0.0.1,10.0.0.2,10.0.0.3", "at most two"),
    ("storage1=127.0.0.1", "loopback"), ("storage1=fe80::1", "IPv4"), ("storage1=nas.example", "not an IP"),
])
def test_parse_node_errors(spec, words):
    with pytest.raises(HAKitError, match=r"^--node2: ") as exc:
        kit.parse_node(spec, "node2")
    assert words in str(exc.value)


# ------------------------------------------------------------------- CLI
def _cli(argv, capsys):
    from archipelagent.admin import cli
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


ARGS = ["ha", "generate", "--node1", "nas-a=10.1.0.1", "--node2", "nas-b=10.1.0.2", "--service-ip",
        "172.16.5.10/16", "--nic", "bond0", "--device", "/dev/vg0/vms", "--clients", "172.16.0.0/16"]


def test_cli_generate_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "kit"
    code, stdout, _ = _cli([*ARGS, "--out", str(out)], capsys)
    assert code == 0 and "wrote 9 files" in stdout
    assert "nas-a" in (out / "cib.xml").read_text() and (out / "vms.res").exists()
    (out / "cib.xml").write_text("edited\n")
    code, _, stderr = _cli([*ARGS, "--out", str(out)], capsys)
    assert code == 2 and "--force" in stderr and "cib.xml" in stderr
    assert (out / "cib.xml").read_text() == "edited\n"
    code, _, _ = _cli([*ARGS, "--out", str(out), "--force"], capsys)
    assert code == 0 and "nas-a" in (out / "cib.xml").read_text()


def test_cli_generate_errors(tmp_path, capsys):
    code, _, stderr = _cli([*ARGS[:-2], "--out", str(tmp_path / "k")], capsys)   # no --clients
    assert code == 2 and "missing --clients" in stderr
    bad = [a if a != "nas-b=10.1.0.2" else "nas-a=10.1.0.2" for a in ARGS]
    code, _, stderr = _cli([*bad, "--out", str(tmp_path / "k")], capsys)
    assert code == 2 and "--node2: same node name" in stderr
    bad = [a if a != "/dev/vg0/vms" else "" for a in ARGS]
    code, _, stderr = _cli([*bad, "--out", str(tmp_path / "k")], capsys)
    assert code == 2 and "--device" in stderr
    assert not (tmp_path / "k").exists()


def test_cli_example_matches_conf_ha(tmp_path, capsys):
    code, _, _ = _cli(["ha", "generate", "--example", "--out", str(tmp_path)], capsys)
    assert code == 0
    for name in kit.generate(EXAMPLE):
        assert (tmp_path / name).read_text() == (CONF_HA / name).read_text()


def test_cli_check_needs_a_generated_directory(tmp_path, capsys):
    code, _, stderr = _cli(["ha", "check", str(tmp_path)], capsys)
    assert code == 2 and "params.json" in stderr
