"""The generated HA kit against Pacemaker's, crmsh's, DRBD's and Corosync's own offline tools.

No daemon is started and no cluster exists: crm_verify/crm_simulate read CIB
files, crmsh writes into a CIB file (CIB_file), drbdadm parses and dry-runs,
corosync -t runs in a throw-away network namespace.  The tools come from
scripts/bootstrap.sh (pacemaker-cli-utils, crmsh, drbd-utils; corosync comes
with pacemaker): a missing tool FAILS these tests, it never skips them.
"""
from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from archipelagent.ha import check, kit
from archipelagent.ha.kit import EXAMPLE

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("crm_verify", "crm_simulate", "crm_attribute", "crm_standby", "cibadmin", "crm", "drbdadm",
         check.DRBDADM_84, "corosync", "unshare", "ip")
STONITH = replace(EXAMPLE, node1=kit.Node("nas-a", "10.1.0.1"), node2=kit.Node("nas-b", "10.1.0.2"),
                  drbd_version="9", ipmi=(("nas-a", "10.9.0.1"), ("nas-b", "10.9.0.2")))


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = [t for t in TOOLS if not (Path(t).exists() if t.startswith("/") else
                                        shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin"))]
    assert not missing, f"not installed: {', '.join(missing)} (run scripts/bootstrap.sh as root)"


def write(params, directory: Path) -> tuple[kit.HAParams, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in kit.generate(params).items():
        (directory / name).write_text(text)
    return kit.validate(params), directory


@pytest.fixture
def example(tmp_path):
    return write(EXAMPLE, tmp_path / "example")


@pytest.fixture
def stonith(tmp_path):
    return write(STONITH, tmp_path / "stonith")


# ---------------------------------------------------------------- crm_verify
def test_crm_verify_accepts_the_generated_cib(example):
    params, d = example
    proc = check.crm_verify(d / "cib.xml")
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr
    assert check.verify_cib(d / "cib.xml", params, d / "w").ok


def test_crm_verify_accepts_the_stonith_variant(stonith, tmp_path):
    params, d = stonith
    # Gotcha: with STONITH on and no status section crm_verify warns (rc 78) that it would fence
    # the unseen nodes; with both nodes up it must be clean.
    state = tmp_path / "state.xml"
    up = check.run(["crm_simulate", "-x", str(d / "cib.xml"), "-q", "true", "-u", "nas-a", "-u", "nas-b",
                    "-S", "-O", str(state)])
    assert up.returncode == 0, up.stderr
    proc = check.crm_verify(state)
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), proc.stderr
    assert check.verify_cib(d / "cib.xml", params, tmp_path / "w").ok


def test_crm_verify_really_checks(example, tmp_path):
    """Negative controls: a dangling reference fails crm_verify; a mismatched tag (which
    crm_verify lets through with rc 0) fails our well-formedness pre-check."""
    _, d = example
    text = (d / "cib.xml").read_text()
    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace('with-rsc="ms_drbd_vms"', 'with-rsc="ms_drbd_NOPE"'))
    proc = check.crm_verify(bad)
    assert proc.returncode != 0 and "ms_drbd_NOPE" in proc.stderr
    bad.write_text(text.replace("</group>", "</grop>"))
    assert not check.wellformed(bad).ok
    assert check.wellformed(d / "cib.xml").ok


# -------------------------------------------------------------- crm_simulate
def test_failover_promotes_drbd_first_and_moves_the_whole_group(example, tmp_path):
    params, d = example
    sim = check.simulate_failover(d / "cib.xml", params, tmp_path / "sim")
    assert sim.primary == "storage1" and sim.failed == "storage1"
    # before: everything on storage1, DRBD Promoted there and Unpromoted on storage2
    assert sorted(sim.placed("p_drbd_vms", "before")) == [("Promoted", "storage1"), ("Unpromoted", "storage2")]
    for rsc in ("p_fs_vms", "p_nfsserver", "p_exportfs_vms", "p_ip_nfs"):
        assert sim.placed(rsc, "before") == [("Started", "storage1")]
        assert sim.placed(rsc) == [("Started", "storage2")], rsc
    assert ("Promoted", "storage2") in sim.placed("p_drbd_vms")
    # the printed summary, as an operator sees it (clone instance numbers are not stable)
    assert re.search(r"Promote\s+p_drbd_vms:\d+\s+\(\s*Unpromoted -> Promoted storage2\s*\)", sim.text), sim.text
    for rsc in ("p_fs_vms", "p_nfsserver", "p_exportfs_vms", "p_ip_nfs"):
        assert re.search(rf"Start\s+{rsc}\s+\(\s*storage2\s*\)", sim.text), sim.text
    # the order: promote, then fs, nfs server, export, IP
    t = sim.transition
    promote = t.index("p_drbd_vms promote storage2")
    starts = [t.index(f"{r} start storage2") for r in ("p_fs_vms", "p_nfsserver", "p_exportfs_vms", "p_ip_nfs")]
    assert promote < starts[0] < starts[1] < starts[2] < starts[3], t
    # and the real dependency in the transition graph, not only the printed order
    assert check.dot_reachable(sim.dot, "p_drbd_vms_promote_0 storage2", "p_fs_vms_start_0 storage2")
    assert check.dot_reachable(sim.dot, "p_fs_vms_start_0 storage2", "p_ip_nfs_start_0 storage2")
    assert check.failover_problems(sim, params) == []


def test_failover_simulation_catches_a_missing_order(example, tmp_path):
    """Negative control: without the order constraint the filesystem may start before the promotion."""
    params, d = example
    root = ET.parse(d / "cib.xml")
    constraints = root.find("configuration/constraints")
    constraints.remove(constraints.find("rsc_order"))
    bad = tmp_path / "noorder.xml"
    root.write(bad)
    sim = check.simulate_failover(bad, params, tmp_path / "sim")
    problems = check.failover_problems(sim, params)
    assert any("DRBD promotion" in p or "before 'p_drbd_vms promote" in p for p in problems), problems


def test_no_failback_when_the_failed_node_returns(example, tmp_path):
    params, d = example
    sim = check.simulate_failover(d / "cib.xml", params, tmp_path / "sim")
    # Gotcha: crm_simulate keeps the --node-fail'ed node's old resource history, so bringing it
    # back "up" would claim the group still runs there.  A failed node comes back rebooted, with
    # no history and no transient attributes: say so first.
    rebooted, back = tmp_path / "rebooted.xml", tmp_path / "back.xml"
    shutil.copy(sim.states["failed"], rebooted)
    for part in ("lrm", "transient_attributes"):
        assert check.run(["cibadmin", "--force", "--delete-all", "--xpath",
                          f"//node_state[@uname='storage1']/{part}"], env={"CIB_file": str(rebooted)}).returncode == 0
    up = check.run(["crm_simulate", "-x", str(rebooted), "-u", "storage1", "-S", "-O", str(back)])
    assert up.returncode == 0, up.stderr
    # its DRBD comes back Unpromoted and resyncs (UpToDate): the agent sets the same score as the peer's
    assert check.run(["crm_attribute", "-N", "storage1", "-n", "master-p_drbd_vms", "-v", "10000", "-l", "reboot"],
                     env={"CIB_file": str(back)}).returncode == 0
    assert check.run(["crm_attribute", "-N", "storage2", "-n", "master-p_drbd_vms", "-v", "10000", "-l", "reboot"],
                     env={"CIB_file": str(back)}).returncode == 0
    proc = check.run(["crm_simulate", "-x", str(back), "-S", "--output-as=xml"])
    status = check._placement(ET.fromstring(proc.stdout).find("revised_cluster_status"))
    assert status["p_fs_vms"] == [("Started", "storage2")], status
    assert sorted(status["p_drbd_vms"]) == [("Promoted", "storage2"), ("Unpromoted", "storage1")], status


def test_standby_drill_moves_in_order(example, tmp_path):
    """The runbook's failover drill: `crm node standby storage1`, simulated."""
    params, d = example
    sim = check.simulate_failover(d / "cib.xml", params, tmp_path / "sim")
    state = tmp_path / "standby.xml"
    shutil.copy(sim.states["promoted"], state)
    assert check.run(["crm_standby", "-N", "storage1", "-v", "on"], env={"CIB_file": str(state)}).returncode == 0
    proc = check.run(["crm_simulate", "-x", str(state), "-S", "--output-as=xml"])
    root = ET.fromstring(proc.stdout)
    t = check._transition(root)
    order = [t.index(x) for x in ("p_ip_nfs stop storage1", "p_exportfs_vms stop storage1",
                                  "p_nfsserver stop storage1", "p_fs_vms stop storage1",
                                  "p_drbd_vms demote storage1", "p_drbd_vms promote storage2",
                                  "p_fs_vms start storage2", "p_nfsserver start storage2",
                                  "p_exportfs_vms start storage2", "p_ip_nfs start storage2")]
    assert order == sorted(order), t
    status = check._placement(root.find("revised_cluster_status"))
    assert status["p_ip_nfs"] == [("Started", "storage2")]


def test_stonith_failover_fences_before_promoting(stonith, tmp_path):
    params, d = stonith
    sim = check.simulate_failover(d / "cib.xml", params, tmp_path / "sim")
    assert sim.failed == "nas-a"
    t = sim.transition
    assert t.index("fence reboot nas-a") < t.index("p_drbd_vms promote nas-b") < t.index("p_fs_vms start nas-b"), t
    assert check.dot_reachable(sim.dot, "stonith 'reboot' nas-a", "p_drbd_vms_promote_0 nas-b")
    assert check.failover_problems(sim, params) == []
    # the device that fences nas-a never runs on nas-a
    assert sim.placed("st_ipmi_nas-a", "before") == [("Started", "nas-b")]


# -------------------------------------------------------------------- crmsh
def _config(cib: Path) -> dict:
    """What matters in a CIB, without the ids crmsh makes up for nvpairs and ops."""
    conf = ET.parse(cib).getroot().find("configuration")
    prims = {}
    for p in conf.iter("primitive"):
        params = {nv.get("name"): nv.get("value") for ia in p.findall("instance_attributes") for nv in ia}
        ops = sorted((op.get("name"), op.get("interval"), op.get("timeout"), op.get("role") or "")
                     for op in p.iter("op"))
        prims[p.get("id")] = (p.get("class"), p.get("provider"), p.get("type"), params, ops)
    groups = {g.get("id"): [p.get("id") for p in g.findall("primitive")] for g in conf.iter("group")}
    clones = {c.get("id"): ({nv.get("name"): nv.get("value") for nv in c.find("meta_attributes")},
                            c.find("primitive").get("id")) for c in conf.iter("clone")}
    constraints = sorted((c.tag, tuple(sorted(c.attrib.items()))) for c in conf.find("constraints"))
    props = {nv.get("name"): nv.get("value") for nv in conf.find("crm_config").iter("nvpair")}
    defaults = {nv.get("name"): nv.get("value") for nv in conf.find("rsc_defaults").iter("nvpair")}
    return {"primitives": prims, "groups": groups, "clones": clones, "constraints": constraints,
            "properties": props, "rsc_defaults": defaults}


def test_crmsh_script_loads_and_equals_the_cib(example, tmp_path):
    params, d = example
    proc, cib = check.crmsh_load(d / "cluster.crm", tmp_path / "crm")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check.check_crmsh(d / "cluster.crm", params, tmp_path / "crm2").ok
    got, want = _config(cib), _config(d / "cib.xml")
    got["properties"] = {k: v for k, v in got["properties"].items() if k in want["properties"]}
    assert got == want


def test_crmsh_checks_parameters_against_the_agents(example, tmp_path):
    """Negative control: crmsh reads each agent's metadata, crm_verify does not."""
    params, d = example
    bad = tmp_path / "bad.crm"
    bad.write_text((d / "cluster.crm").read_text().replace("nfs_shared_infodir=", "nfs_shared_infodirr="))
    proc, _ = check.crmsh_load(bad, tmp_path / "crm")
    assert proc.returncode != 0 and "nfs_shared_infodirr" in proc.stdout + proc.stderr
    assert not check.check_crmsh(bad, params, tmp_path / "crm2").ok


# --------------------------------------------------------------------- DRBD
def test_drbdadm_parses_the_resource(example, stonith, tmp_path):
    for params, d in (example, stonith):
        result = check.check_drbd(d / "vms.res", params, tmp_path / params.drbd_version)
        assert result.ok, result.detail
    # 8.4 file, as each node, through the parser an 8.4 kernel module gets
    params, d = example
    conf = check.drbd_conf(d / "vms.res", tmp_path / "c84")
    up = check.run([check.DRBDADM_84, "-c", str(conf), "-d", "up", "vms"], env={"__DRBD_NODE__": "storage2"})
    assert up.returncode == 0, up.stderr
    assert "ipv4:10.0.0.2:7790 ipv4:10.0.0.1:7790" in up.stdout and "/dev/vg_archipel/lv_vms" in up.stdout
    dev = check.run([check.DRBDADM_84, "-c", str(conf), "sh-dev", "vms"], env={"__DRBD_NODE__": "storage1"})
    assert dev.stdout.strip() == "/dev/drbd1"


def test_drbdadm_really_checks(example, stonith, tmp_path):
    """Negative controls: each version's file fails the other parser; a broken file fails."""
    p84, d84 = example
    p9, d9 = stonith
    assert not check.check_drbd(d9 / "vms.res", p84, tmp_path / "a").ok    # node-id: not 8.4
    assert not check.check_drbd(d84 / "vms.res", p9, tmp_path / "b").ok    # disk { fencing }: not 9
    broken = tmp_path / "vms.res"
    broken.write_text((d84 / "vms.res").read_text().replace("address ipv4 10.0.0.2:7790", "address ipv4 10.0.0.1:7790"))
    result = check.check_drbd(broken, p84, tmp_path / "c")
    assert not result.ok and "10.0.0.1:7790" in result.detail and "conflicting use" in result.detail


# ----------------------------------------------------------------- corosync
def test_corosync_accepts_the_config_as_each_node(example, stonith, tmp_path):
    for params, d in (example, stonith):
        result = check.check_corosync(d / "corosync.conf", params, tmp_path / params.cluster_name / params.node1.name)
        assert result.ok, result.detail


def test_corosync_check_really_checks(example, tmp_path):
    params, d = example
    # an address that is not in the nodelist: "No valid name found for local host"
    proc = check.corosync_test(d / "corosync.conf", "10.0.0.9", tmp_path / "a")
    assert proc.returncode != 0 and "No valid name found" in proc.stderr + proc.stdout
    bad = tmp_path / "corosync.conf"
    bad.write_text((d / "corosync.conf").read_text().replace("two_node: 1", "two_node: maybe"))
    proc = check.corosync_test(bad, "10.0.0.1", tmp_path / "b")
    assert proc.returncode != 0 and "quorum.two_node" in proc.stderr + proc.stdout


# ---------------------------------------------------------------- the CLI
def test_ha_check_on_conf_ha(capsys):
    from archipelagent.admin import cli
    code = cli.main(["ha", "check", str(REPO / "conf" / "ha"), "--strict"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("[ok     ]") == 6 and out.rstrip().endswith("OK"), out


def test_ha_check_reports_a_broken_kit(example, capsys):
    from archipelagent.admin import cli
    _, d = example
    (d / "cib.xml").write_text((d / "cib.xml").read_text().replace('with-rsc="ms_drbd_vms"', 'with-rsc="nope"'))
    code = cli.main(["ha", "check", str(d), "--strict"])
    out = capsys.readouterr().out
    assert code == 1 and "[FAIL   ] crm_verify" in out and "FAILED" in out, out
